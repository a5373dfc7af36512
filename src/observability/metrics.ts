import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * The Prometheus metrics of a training job, defined once here so the coordinator and the workers
 * name them the same way. The coordinator's dashboard server exposes its registry at /metrics; its
 * RunStateStore (src/dashboard/run-state.ts) updates them from step reports, so a coordinator that
 * pushes into the store needs to touch no metric itself. A worker's own /metrics (per rank,
 * `parti worker --metrics-port`) has a set of its own, `parti_worker_*`, in
 * src/worker/worker-metrics.ts; it shares the histogram buckets below.
 *
 * Label sets are small and closed on purpose (only `reason` on skipped samples): the job and pod
 * come from Prometheus' own target labels.
 */
export interface TrainingMetrics {
  /** The registry these metrics live in (serve `registry.metrics()` with `registry.contentType`). */
  readonly registry: Registry;
  /** The current optimizer step. */
  readonly step: Gauge;
  /** Optimizer steps completed. */
  readonly stepsTotal: Counter;
  /** Optimizer steps skipped on every rank because a gradient was not finite. */
  readonly skippedStepsTotal: Counter;
  /** Wall time of one optimizer step (slowest rank), seconds. */
  readonly stepSeconds: Histogram;
  /** Training throughput of the whole job, tokens per second. */
  readonly tokensPerSecond: Gauge;
  /** Samples the data pipeline delivered per second, whole job. */
  readonly dataSamplesPerSecond: Gauge;
  /** Loss of the last step. */
  readonly loss: Gauge;
  /** Global gradient L2 norm of the last step (before clipping). */
  readonly gradNorm: Gauge;
  /** Learning rate of the last step. */
  readonly learningRate: Gauge;
  /** All-reduce bus bandwidth of the last step: bytes * 2(N-1)/N / time, bytes per second. */
  readonly allReduceBusBandwidth: Gauge;
  /** Time spent in the all-reduce per step, seconds. */
  readonly allReduceSeconds: Histogram;
  /** Samples skipped (corrupt, undecodable, too long...), by reason. */
  readonly skippedSamplesTotal: Counter<'reason'>;
  /** Time to write a checkpoint (snapshot to manifest commit), seconds. */
  readonly checkpointSaveSeconds: Histogram;
  /** Time to load a checkpoint, seconds. */
  readonly checkpointLoadSeconds: Histogram;
  /** Workers currently alive and part of the job. */
  readonly workersUp: Gauge;
  /** Workers declared dead (missed heartbeats, closed stream, killed). */
  readonly workerFailuresTotal: Counter;
  /** Times the job re-formed its ring and went on after a failure. */
  readonly recoveriesTotal: Counter;
  /** Gallery generations (samples of the fixed prompts from a checkpoint), by result: done, failed, skipped. */
  readonly galleryGenerationsTotal: Counter<'result'>;
  /** Time to generate the gallery samples of one checkpoint (load, sample, render), seconds. */
  readonly galleryGenerationSeconds: Histogram;
  /** Gallery samples the job's store could not take (`write`) or gave back corrupt or incomplete (`read`, per item skipped at start-up). */
  readonly galleryStoreErrorsTotal: Counter<'op'>;
  /** Dashboard live-update streams (Server-Sent Events, one per open page) open now. */
  readonly dashboardStreams: Gauge;
  /** Live-update streams refused because `dashboard.maxStreams` were open. */
  readonly dashboardStreamsRefusedTotal: Counter;
}

/** Options of {@link createTrainingMetrics}. */
export interface TrainingMetricsOptions {
  /** Register into this registry; a new one by default (so two servers in one process never clash). */
  registry?: Registry;
  /** Also collect Node's process metrics (CPU, memory, event loop lag, GC) into the registry. */
  processMetrics?: boolean;
}

/** Histogram buckets of per-step times (seconds). */
export const secondsBuckets = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128];
/** Histogram buckets of checkpoint times (seconds). */
export const checkpointBuckets = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800];

/** Creates the training metrics in a registry of their own (or the one given). */
export function createTrainingMetrics(options: TrainingMetricsOptions = {}): TrainingMetrics {
  const registry = options.registry ?? new Registry();
  if (options.processMetrics) collectDefaultMetrics({ register: registry, prefix: 'parti_' });
  const registers = [registry];
  return {
    registry,
    step: new Gauge({ name: 'parti_step', help: 'The current optimizer step.', registers }),
    stepsTotal: new Counter({ name: 'parti_steps_total', help: 'Optimizer steps completed.', registers }),
    skippedStepsTotal: new Counter({
      name: 'parti_skipped_steps_total',
      help: 'Optimizer steps skipped on every rank because a gradient was not finite.',
      registers,
    }),
    stepSeconds: new Histogram({
      name: 'parti_step_seconds',
      help: 'Wall time of one optimizer step, seconds.',
      buckets: secondsBuckets,
      registers,
    }),
    tokensPerSecond: new Gauge({
      name: 'parti_tokens_per_second',
      help: 'Training throughput of the whole job, tokens per second.',
      registers,
    }),
    dataSamplesPerSecond: new Gauge({
      name: 'parti_data_samples_per_second',
      help: 'Samples the data pipeline delivered per second, whole job.',
      registers,
    }),
    loss: new Gauge({ name: 'parti_loss', help: 'Loss of the last optimizer step.', registers }),
    gradNorm: new Gauge({ name: 'parti_grad_norm', help: 'Global gradient L2 norm of the last step, before clipping.', registers }),
    learningRate: new Gauge({ name: 'parti_learning_rate', help: 'Learning rate of the last step.', registers }),
    allReduceBusBandwidth: new Gauge({
      name: 'parti_allreduce_busbw_bytes_per_second',
      help: 'All-reduce bus bandwidth of the last step (bytes x 2(N-1)/N / time).',
      registers,
    }),
    allReduceSeconds: new Histogram({
      name: 'parti_allreduce_seconds',
      help: 'Time spent in the gradient all-reduce per step, seconds.',
      buckets: secondsBuckets,
      registers,
    }),
    skippedSamplesTotal: new Counter({
      name: 'parti_skipped_samples_total',
      help: 'Samples skipped by the data pipeline, by reason.',
      labelNames: ['reason'] as const,
      registers,
    }),
    checkpointSaveSeconds: new Histogram({
      name: 'parti_checkpoint_save_seconds',
      help: 'Time to write a checkpoint, from snapshot to manifest commit, seconds.',
      buckets: checkpointBuckets,
      registers,
    }),
    checkpointLoadSeconds: new Histogram({
      name: 'parti_checkpoint_load_seconds',
      help: 'Time to load a checkpoint, seconds.',
      buckets: checkpointBuckets,
      registers,
    }),
    workersUp: new Gauge({ name: 'parti_workers_up', help: 'Workers alive and part of the job.', registers }),
    workerFailuresTotal: new Counter({
      name: 'parti_worker_failures_total',
      help: 'Workers declared dead (missed heartbeats, closed stream).',
      registers,
    }),
    recoveriesTotal: new Counter({
      name: 'parti_recoveries_total',
      help: 'Times the job re-formed its ring and went on after a failure.',
      registers,
    }),
    galleryGenerationsTotal: new Counter({
      name: 'parti_gallery_generations_total',
      help: 'Gallery generations from committed checkpoints, by result (done, failed, skipped: replaced by a newer checkpoint while busy).',
      labelNames: ['result'] as const,
      registers,
    }),
    galleryGenerationSeconds: new Histogram({
      name: 'parti_gallery_generation_seconds',
      help: 'Time to generate the gallery samples of one checkpoint, seconds.',
      buckets: checkpointBuckets,
      registers,
    }),
    galleryStoreErrorsTotal: new Counter({
      name: 'parti_gallery_store_errors_total',
      help: 'Gallery samples not written to the job store (op=write), skipped as corrupt or incomplete when read back (op=read), or pruning passes after a save that left objects behind (op=prune: a failed delete or listing, or the deadline).',
      labelNames: ['op'] as const,
      registers,
    }),
    dashboardStreams: new Gauge({ name: 'parti_dashboard_streams', help: 'Dashboard live-update streams (SSE clients) open now.', registers }),
    dashboardStreamsRefusedTotal: new Counter({
      name: 'parti_dashboard_streams_refused_total',
      help: 'Dashboard live-update streams refused because dashboard.maxStreams were open.',
      registers,
    }),
  };
}
