/**
 * One worker process: opens its collective endpoint (gRPC), builds the model the config names,
 * joins the coordinator and trains until told to stop. SIGTERM or SIGINT (Kubernetes preemption,
 * Ctrl-C) makes it leave at the next step boundary, losing no work. How it ended becomes the
 * process's exit code (worker-exit-code.ts): 0 only when the job is done.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { hostname } from 'node:os';
import type { Config } from '../config/schema.ts';
import { configHash } from '../config/load.ts';
import { createGrpcCollectiveNode } from '../collective/grpc-transport.ts';
import { openStore } from '../storage/open-store.ts';
import { checkpointUrl, JoinRefusedError } from '../coordinator/protocol.ts';
import { log } from '../observability/log.ts';
import { PartiError } from '../errors.ts';
import { resolveJobSecurity } from '../security/job-security.ts';
import { CheckpointShards } from './checkpoint-shards.ts';
import { LinearModel } from './linear-model.ts';
import type { Trainable } from './trainable.ts';
import { WorkerRuntime, type WorkerExit } from './worker-runtime.ts';
import { coordinatorLost, jobFinished, workerExitCode } from './worker-exit-code.ts';
import { createWorkerMetrics, startWorkerMetricsServer } from './worker-metrics.ts';

/** Options of runWorker (from the command line). */
export interface WorkerProcessOptions {
  /** host:port of the coordinator. */
  coordinator: string;
  runDir: string;
  jobId?: string;
  /** host:port the collective endpoint listens on (default runtime.workerHost:workerPort). */
  listen?: string;
  /** host:port peers reach it at (default: the listen host and bound port). */
  advertise?: string;
  /** Write the final parameters here (float32, little-endian) when the job ends. */
  paramsOut?: string;
  /** Leave when the parent process goes away (a local launcher that was killed). */
  stopWithParent?: boolean;
  /** Serve this worker's Prometheus /metrics and /healthz on this port (0 = any free); absent: no server. */
  metricsPort?: number;
  /** Bind address of the metrics server; default 127.0.0.1 (a pod that Prometheus scrapes: 0.0.0.0). */
  metricsHost?: string;
  /** Called with the metrics URL once the server listens (the CLI prints it). */
  onMetricsListening?: (url: string) => void;
}

/** The model a config trains on a worker. */
export function workerModelFactory(config: Config, runDir: string): () => Promise<Trainable> {
  const t = config.runtime.testModel;
  if (t) {
    return async () =>
      new LinearModel({ dim: t.dim, seed: config.training.seed, lr: t.lr, nonFiniteSamples: t.nonFiniteSamples, stepDelayMs: t.stepDelayMs });
  }
  // tfjs and the model load only when the real model is trained
  return async () => (await import('./parti-model.ts')).PartiWorkerModel.create(config, runDir);
}

/** How a worker process ended. */
export interface WorkerProcessExit extends WorkerExit {
  /** The coordinator said the job ran all its steps. */
  finished: boolean;
  /** The process was asked to leave (SIGTERM, SIGINT, its launcher gone). */
  signalled: boolean;
  /** The process's exit code (worker-exit-code.ts). */
  exitCode: number;
}

export async function runWorker(config: Config, o: WorkerProcessOptions): Promise<WorkerProcessExit> {
  const rt = config.runtime;
  const jobId = o.jobId ?? config.name;
  const hash = configHash(config);
  const security = resolveJobSecurity(config.security);
  const collective = await createGrpcCollectiveNode({
    jobId,
    configHash: hash,
    security,
    listen: o.listen ?? `${rt.workerHost}:${rt.workerPort}`,
    advertise: o.advertise,
    deadlineMs: rt.stepDeadlineMs,
  });
  const metrics = o.metricsPort === undefined ? null : createWorkerMetrics({ collectiveStats: () => collective.stats() });
  // (a metrics port that cannot be bound stops the worker before it joins, its endpoint closed)
  const metricsServer = metrics
    ? await startWorkerMetricsServer(metrics.registry, { host: o.metricsHost, port: o.metricsPort! }).catch(async (err: unknown) => {
        await collective.close();
        throw err;
      })
    : null;
  if (metricsServer) {
    log.child({ role: 'worker' }).info({ url: metricsServer.url }, 'serving /metrics');
    o.onMetricsListening?.(metricsServer.url);
  }
  const runtime = new WorkerRuntime({
    coordinator: o.coordinator,
    jobId,
    configHash: hash,
    name: `${hostname()}:${process.pid}`,
    createModel: workerModelFactory(config, o.runDir),
    collective,
    seed: config.training.seed,
    zeroStage: rt.zeroStage,
    heartbeatMs: rt.heartbeatMs,
    rpcDeadlineMs: rt.rpcDeadlineMs,
    stepDeadlineMs: rt.stepDeadlineMs,
    maxMessageBytes: rt.maxMessageBytes,
    reconnectMs: rt.reconnectMs,
    store: new CheckpointShards(openStore(checkpointUrl(config, o.runDir)), hash),
    security: { resolved: security, config: config.security },
    observer: metrics?.observer,
  });
  let signalled = false;
  // A worker asked to leave while it has no coordinator (joining: no membership, no step in flight)
  // has nothing to finish at a step boundary, but the runtime's join goes on trying for
  // runtime.reconnectMs (as long as a pod's grace period by default, so the kubelet's SIGKILL, 137,
  // would count as a failure): it stops waiting for it and leaves now.
  let leftWhileJoining: (() => void) | null = null;
  const noCoordinator = new Promise<void>((resolve) => (leftWhileJoining = resolve));
  let joiningWatch: NodeJS.Timeout | null = null;
  const leave = (why: string) => {
    signalled = true;
    void runtime.requestLeave(why);
    joiningWatch ??= setInterval(() => runtime.state === 'joining' && leftWhileJoining?.(), 200);
  };
  const onSignal = (sig: NodeJS.Signals) => leave(sig);
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  const parent = process.ppid;
  const parentWatch = o.stopWithParent ? setInterval(() => process.ppid !== parent && leave('the launcher is gone'), 1000) : null;
  parentWatch?.unref();
  // (says what a worker that waits for an unreachable coordinator is waiting for; signals are handled from here on)
  log.child({ role: 'worker' }).info({ coordinator: o.coordinator, reconnectMs: rt.reconnectMs }, 'worker started; joining the coordinator');
  try {
    let exit: WorkerExit;
    let trained = true;
    try {
      const run = runtime.run();
      const ended = await Promise.race([run.then((x) => ({ x })), noCoordinator.then(() => null)]);
      if (ended) exit = ended.x;
      else {
        // (the abandoned run ends with the process: the CLI exits at once)
        run.catch(() => {});
        exit = { reason: 'left while joining the coordinator (no membership, nothing in flight)', finished: false, applied: 0 };
        trained = false;
      }
    } catch (err) {
      // A worker (re)started after the end: the finished coordinator refuses its join, saying so
      // in JoinRefusal.finished (an older coordinator only in its words). Its index is done too,
      // or a Job would start it again forever. A coordinator unreachable for reconnectMs (its pod
      // is being replaced) is not this worker's failure either.
      const e = PartiError.from(err);
      const finishedJob = e.code === 'refused' && jobFinished({ reason: e.message, finished: e instanceof JoinRefusedError ? e.refusal.finished : undefined });
      if (!finishedJob && !(e.code === 'deadline' && coordinatorLost(e.message))) throw err;
      exit = { reason: e.message, finished: finishedJob, applied: 0 };
      trained = false;
    }
    // Stop.finished decides (the coordinator's text only when it predates the field).
    const finished = jobFinished(exit);
    const exitCode = workerExitCode({ reason: exit.reason, finished: exit.finished, signalled });
    log.child({ role: 'worker' }).info({ reason: exit.reason, applied: exit.applied, finished, signalled, exitCode }, 'worker stopped');
    // (a worker refused after the end holds no trained parameters: keep the file its slot wrote)
    if (o.paramsOut && trained) {
      mkdirSync(dirname(o.paramsOut), { recursive: true });
      const p = runtime.params();
      writeFileSync(o.paramsOut, Buffer.from(p.buffer, p.byteOffset, p.byteLength));
    }
    return { ...exit, finished, signalled, exitCode };
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    if (parentWatch) clearInterval(parentWatch);
    if (joiningWatch) clearInterval(joiningWatch);
    await metricsServer?.close();
  }
}
