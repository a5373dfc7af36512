/**
 * A worker's own Prometheus metrics (`parti worker --metrics-port N`): per-rank numbers the
 * coordinator cannot see (this rank's compute and all-reduce time, bytes it put on the wire,
 * checkpoint snapshot and upload time, its process and memory, the step it is on, membership
 * changes and rejoins). The coordinator's job-wide metrics stay in src/observability/metrics.ts;
 * these are named like them with a `parti_worker_` prefix, so a dashboard can put a rank's series
 * beside the job's without the two ever sharing a name.
 *
 * Nothing here measures anything: the runtime already times every step and checkpoint for its
 * reports to the coordinator, and it hands those reports to {@link WorkerMetrics.observer}; the
 * collective node counts its bytes itself and is read at scrape time.
 *
 * Labels are few and closed (only `reason` and `result`): the pod and job come from Prometheus'
 * target labels, and the rank, which changes with membership, is a gauge's value, not a label.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { CollectiveNodeStats } from '../collective/collective-node.ts';
import { PartiError } from '../errors.ts';
import { checkpointBuckets, secondsBuckets } from '../observability/metrics.ts';
import type { WorkerObserver } from './worker-runtime.ts';

/** The metrics of one worker process, and the observer that feeds them from the runtime. */
export interface WorkerMetrics {
  /** The registry these metrics live in (serve `registry.metrics()` with `registry.contentType`). */
  readonly registry: Registry;
  /** Hand it to the runtime (WorkerOptions.observer): it updates the metrics from its reports. */
  readonly observer: WorkerObserver;
}

/** Options of {@link createWorkerMetrics}. */
export interface WorkerMetricsOptions {
  /**
   * Reads the collective node's own counters (CollectiveNode.stats) at scrape time; absent or
   * returning null (no node yet): the collective byte counters stay 0.
   */
  collectiveStats?: () => CollectiveNodeStats | null;
  /** Also collect Node's process metrics (CPU, RSS, heap, event loop lag, GC) with the `parti_` prefix, as the coordinator does. Default true. */
  processMetrics?: boolean;
}

/** The tfjs engine, when the process loaded tfjs (it registers itself globally; read, never imported). */
interface TfEngineGlobal {
  _tfengine?: { backendName?: string; backendInstance?: { wasm?: { HEAPU8?: Uint8Array } } | null };
}

/**
 * Bytes of the tfjs wasm backend's heap (its WebAssembly memory), or null when tfjs is not loaded
 * or runs another backend. Read from the global engine so that a worker on the test model never
 * loads tfjs for it; reading a buffer's length costs nothing.
 */
function wasmHeapBytes(): number | null {
  const engine = (globalThis as TfEngineGlobal)._tfengine;
  if (!engine || engine.backendName !== 'wasm') return null;
  return engine.backendInstance?.wasm?.HEAPU8?.byteLength ?? null;
}

/** Creates a worker's metrics in a registry of their own. */
export function createWorkerMetrics(options: WorkerMetricsOptions = {}): WorkerMetrics {
  const registry = new Registry();
  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'parti_' });
  const registers = [registry];
  const stats = options.collectiveStats ?? (() => null);
  const step = new Gauge({
    name: 'parti_worker_step',
    help: "The optimizer step this worker's parameters are at (steps applied to them, counted from the job's start).",
    registers,
  });
  const rank = new Gauge({ name: 'parti_worker_rank', help: "This worker's rank in the ring (-1 before it joined one).", registers });
  rank.set(-1);
  const worldSize = new Gauge({ name: 'parti_worker_world_size', help: 'Workers in the ring this worker is part of (0 before it joined one).', registers });
  const stepsTotal = new Counter({ name: 'parti_worker_steps_total', help: 'Optimizer steps this worker applied.', registers });
  const skippedStepsTotal = new Counter({
    name: 'parti_worker_skipped_steps_total',
    help: 'Optimizer steps this worker left out because the reduced gradient was not finite.',
    registers,
  });
  const computeSeconds = new Histogram({
    name: 'parti_worker_compute_seconds',
    help: "Forward and backward time of this rank's share of a step (all its microbatches), seconds.",
    buckets: secondsBuckets,
    registers,
  });
  const allReduceSeconds = new Histogram({
    name: 'parti_worker_allreduce_seconds',
    help: "Time of this rank's gradient all-reduce per step, waiting for its peers included, seconds.",
    buckets: secondsBuckets,
    registers,
  });
  const optimizerSeconds = new Histogram({
    name: 'parti_worker_optimizer_seconds',
    help: 'Time of the optimizer update per step (with ZeRO-1 the parameter all-gather too), seconds.',
    buckets: secondsBuckets,
    registers,
  });
  const allReduceBytesTotal = new Counter({
    name: 'parti_worker_allreduce_bytes_total',
    help: 'Bytes of the gradient buffers this rank all-reduced (the buffer size, not the bytes on the wire).',
    registers,
  });
  const samplesTotal = new Counter({ name: 'parti_worker_samples_total', help: 'Samples this rank computed gradients of.', registers });
  const tokensTotal = new Counter({ name: 'parti_worker_tokens_total', help: 'Tokens this rank computed gradients of.', registers });
  const skippedSamplesTotal = new Counter({
    name: 'parti_worker_skipped_samples_total',
    help: "Samples this rank's reader skipped (bad samples), by reason.",
    labelNames: ['reason'] as const,
    registers,
  });
  new Counter({
    name: 'parti_worker_collective_sent_bytes_total',
    help: 'Payload bytes this worker sent to its ring peers (all collectives).',
    registers,
    collect() {
      this.reset();
      this.inc(stats()?.bytesSent ?? 0);
    },
  });
  new Counter({
    name: 'parti_worker_collective_received_bytes_total',
    help: 'Payload bytes this worker received from its ring peers (all collectives).',
    registers,
    collect() {
      this.reset();
      this.inc(stats()?.bytesReceived ?? 0);
    },
  });
  new Counter({
    name: 'parti_worker_collective_aborts_total',
    help: "Collectives of this worker aborted (a peer died, the membership changed, a deadline passed).",
    registers,
    collect() {
      this.reset();
      this.inc(stats()?.aborts ?? 0);
    },
  });
  const snapshotSeconds = new Histogram({
    name: 'parti_worker_checkpoint_snapshot_seconds',
    help: "Training-thread time of a checkpoint's snapshot to host memory, seconds.",
    buckets: checkpointBuckets,
    registers,
  });
  const uploadSeconds = new Histogram({
    name: 'parti_worker_checkpoint_upload_seconds',
    help: "Time from a checkpoint's snapshot to the last of this rank's objects landing in the store, seconds.",
    buckets: checkpointBuckets,
    registers,
  });
  const checkpointsTotal = new Counter({
    name: 'parti_worker_checkpoints_total',
    help: "Checkpoint saves of this rank, by result (saved, failed).",
    labelNames: ['result'] as const,
    registers,
  });
  const reconfigurationsTotal = new Counter({
    name: 'parti_worker_reconfigurations_total',
    help: 'Memberships this worker entered (the first one, then one per change of the ring).',
    registers,
  });
  const rejoinsTotal = new Counter({
    name: 'parti_worker_rejoins_total',
    help: 'Times this worker lost the coordinator and joined it again.',
    registers,
  });
  new Gauge({
    name: 'parti_worker_wasm_heap_bytes',
    help: 'Size of the tfjs wasm backend heap (it cannot pass about 4 GB); 0 on another backend or before tfjs loads.',
    registers,
    collect() {
      this.set(wasmHeapBytes() ?? 0);
    },
  });

  const observer: WorkerObserver = {
    reported(r, at) {
      switch (r.kind) {
        case 'READY':
          rank.set(at.rank);
          worldSize.set(at.worldSize);
          step.set(r.step);
          reconfigurationsTotal.inc();
          break;
        case 'REDUCED':
          computeSeconds.observe((r.computeMs ?? 0) / 1000);
          allReduceSeconds.observe((r.allReduceMs ?? 0) / 1000);
          allReduceBytesTotal.inc(r.allReduceBytes ?? 0);
          samplesTotal.inc(r.samples ?? 0);
          tokensTotal.inc(r.tokens ?? 0);
          for (const [reason, n] of Object.entries(r.skippedSamples ?? {})) if (n > 0) skippedSamplesTotal.inc({ reason }, n);
          break;
        case 'APPLIED':
          step.set(r.step + 1);
          stepsTotal.inc();
          if (r.nonFinite) skippedStepsTotal.inc();
          optimizerSeconds.observe((r.optimizerMs ?? 0) / 1000);
          break;
        case 'CHECKPOINTED':
        case 'CHECKPOINT_FAILED':
          snapshotSeconds.observe((r.snapshotMs ?? 0) / 1000);
          checkpointsTotal.inc({ result: r.kind === 'CHECKPOINTED' ? 'saved' : 'failed' });
          break;
        case 'FAILED':
          break;
      }
    },
    checkpointEnded(ms) {
      uploadSeconds.observe(ms / 1000);
    },
    rejoining() {
      rejoinsTotal.inc();
    },
  };
  return { registry, observer };
}

/** Where {@link startWorkerMetricsServer} listens. */
export interface WorkerMetricsServerOptions {
  /** Bind address (`--metrics-host`); 127.0.0.1 by default, 0.0.0.0 in a pod that Prometheus scrapes. */
  host?: string;
  /** Port (`--metrics-port`); 0 = any free port. */
  port: number;
}

/** A worker's /metrics endpoint. */
export interface WorkerMetricsServer {
  /** e.g. http://127.0.0.1:9464/metrics */
  readonly url: string;
  readonly host: string;
  /** The bound port (the one the OS chose when asked for 0). */
  readonly port: number;
  /** Stops listening and ends open connections (a scraper's keep-alive never holds the exit). */
  close(): Promise<void>;
}

/**
 * Serves GET /metrics (Prometheus text format) and GET /healthz (200 while the process lives);
 * anything else is 404, a method other than GET or HEAD 405. No token: the endpoint only reads
 * numbers, and it binds loopback unless told otherwise. A port that cannot be bound is
 * PartiError('usage') naming --metrics-port (--metrics-host for an address this machine lacks) and
 * the address (the CLI exits 2).
 */
export async function startWorkerMetricsServer(registry: Registry, options: WorkerMetricsServerOptions): Promise<WorkerMetricsServer> {
  const host = options.host ?? '127.0.0.1';
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const known = path === '/metrics' || path === '/healthz';
    if (known && req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' }).end('method not allowed\n');
    } else if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end('ok\n');
    } else if (path === '/metrics') {
      registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end(`cannot collect metrics: ${err.message}\n`),
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found: this worker serves /metrics and /healthz\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      // (an address this machine does not have is the host's fault, anything else the port's)
      const flag = err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND' ? '--metrics-host' : '--metrics-port';
      const why = err.code === 'EADDRINUSE' ? 'the port is in use' : err.code === 'EACCES' ? 'permission denied' : err.message;
      reject(new PartiError('usage', `${flag}: cannot listen on ${host}:${options.port} (${err.code ?? 'error'}: ${why})`, { cause: err }));
    });
    server.listen(options.port, host, () => resolve());
  });
  // (a scrape must never keep the process alive once the worker has finished)
  server.unref();
  const port = (server.address() as { port: number }).port;
  const urlHost = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  let closed: Promise<void> | null = null;
  return {
    url: `http://${urlHost}:${port}/metrics`,
    host,
    port,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}
