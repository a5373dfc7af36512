/**
 * One worker process: opens its collective endpoint (gRPC), builds the model the config names,
 * joins the coordinator and trains until told to stop. SIGTERM or SIGINT (Kubernetes preemption,
 * Ctrl-C) makes it leave at the next step boundary, losing no work.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { hostname } from 'node:os';
import type { Config } from '../config/schema.ts';
import { configHash } from '../config/load.ts';
import { createGrpcCollectiveNode } from '../collective/grpc-transport.ts';
import { openStore } from '../storage/open-store.ts';
import { checkpointUrl } from '../coordinator/protocol.ts';
import { log } from '../observability/log.ts';
import { resolveJobSecurity } from '../security/job-security.ts';
import { CheckpointShards } from './checkpoint-shards.ts';
import { LinearModel } from './linear-model.ts';
import type { Trainable } from './trainable.ts';
import { WorkerRuntime, type WorkerExit } from './worker-runtime.ts';

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

export async function runWorker(config: Config, o: WorkerProcessOptions): Promise<WorkerExit> {
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
  });
  const onSignal = (sig: NodeJS.Signals) => void runtime.requestLeave(sig);
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  const parent = process.ppid;
  const parentWatch = o.stopWithParent ? setInterval(() => process.ppid !== parent && void runtime.requestLeave('the launcher is gone'), 1000) : null;
  parentWatch?.unref();
  try {
    const exit = await runtime.run();
    log.child({ role: 'worker' }).info({ reason: exit.reason, applied: exit.applied }, 'worker stopped');
    if (o.paramsOut) {
      mkdirSync(dirname(o.paramsOut), { recursive: true });
      const p = runtime.params();
      writeFileSync(o.paramsOut, Buffer.from(p.buffer, p.byteOffset, p.byteLength));
    }
    return exit;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    if (parentWatch) clearInterval(parentWatch);
  }
}
