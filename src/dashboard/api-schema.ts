import { z } from 'zod';

/**
 * The dashboard's JSON API, as zod schemas: the server's answers are typed from them, tests parse
 * every answer with them, and docs/dashboard-api.md describes the same shapes. Times are Unix
 * milliseconds; rates are per second; sizes are bytes. A number that is not known yet is absent
 * (or null in the column arrays of /api/history), never NaN.
 */

/** Where the job is in its lifecycle, as the coordinator sees it. */
export const jobStateSchema = z.enum([
  /** Waiting for the configured number of workers to join. */
  'waiting',
  'running',
  /** A worker failed; the step is being aborted and the ring re-formed. */
  'recovering',
  'checkpointing',
  /** Stopping at a step boundary (Ctrl-C, SIGTERM, `stop` command). */
  'stopping',
  'finished',
  'failed',
]);
export type JobState = z.infer<typeof jobStateSchema>;

/** GET /api/job */
export const jobSummarySchema = z.strictObject({
  jobId: z.string(),
  /** The config's `name`. */
  name: z.string(),
  configHash: z.string(),
  state: jobStateSchema,
  /** The training stage running: `tokenizer`, `parti`, `upsampler`, or a test model's name. */
  stage: z.string(),
  /** Last completed optimizer step (0 before the first). */
  step: z.number().int().min(0),
  /** Steps of the stage in all. */
  totalSteps: z.number().int().min(0),
  /** Workers in the current membership epoch. */
  worldSize: z.number().int().min(0),
  /** Workers the job is configured for, and the least it keeps training with. */
  targetWorkers: z.number().int().min(0),
  minWorkers: z.number().int().min(0),
  /** Membership epoch: goes up every time the ring is re-formed. */
  epoch: z.number().int().min(0),
  /** Global batch size (samples per optimizer step). */
  batchSize: z.number().int().min(0),
  startedAt: z.number(),
  updatedAt: z.number(),
  /** Latest values, for the summary (the same as the last entry of the step history). */
  loss: z.number().optional(),
  tokensPerSec: z.number().optional(),
  samplesPerSec: z.number().optional(),
  lr: z.number().optional(),
  /** Steps skipped on all ranks because a gradient was not finite. */
  skippedSteps: z.number().int().min(0),
  /** Samples skipped by the data pipeline, all reasons. */
  skippedSamples: z.number().int().min(0),
  /** Last committed checkpoint step, if any. */
  lastCheckpointStep: z.number().int().min(0).optional(),
  /** A one-line reason when state is `failed`. */
  error: z.string().optional(),
});
export type JobSummary = z.infer<typeof jobSummarySchema>;

export const workerStateSchema = z.enum(['joining', 'syncing', 'training', 'idle', 'leaving', 'left', 'failed']);
export type WorkerState = z.infer<typeof workerStateSchema>;

/** One row of GET /api/workers. */
export const workerInfoSchema = z.strictObject({
  /** Stable id of the worker process (survives rank changes). */
  id: z.string(),
  /** A name for people: the pod name, or host and pid. */
  name: z.string().optional(),
  /** Rank in the current membership epoch; absent while joining and after leaving. */
  rank: z.number().int().min(0).optional(),
  /** host:port the worker advertised. */
  host: z.string(),
  state: workerStateSchema,
  /** Last heartbeat received, Unix ms. */
  lastHeartbeat: z.number(),
  /** Last step this worker reported. */
  step: z.number().int().min(0).optional(),
  /** Its last step time, milliseconds. */
  stepMs: z.number().min(0).optional(),
  /** Its throughput, tokens per second. */
  tokensPerSec: z.number().min(0).optional(),
  /** Its data pipeline's samples per second. */
  samplesPerSec: z.number().min(0).optional(),
  /** Resident memory, bytes. */
  rssBytes: z.number().min(0).optional(),
});
export type WorkerInfo = z.infer<typeof workerInfoSchema>;
export const workersResponseSchema = z.strictObject({ workers: z.array(workerInfoSchema) });

/** One optimizer step, as the coordinator aggregates it from the ranks' reports. */
export const stepRecordSchema = z.strictObject({
  step: z.number().int().min(0),
  /** When the step completed, Unix ms. */
  time: z.number(),
  /** Mean loss over the global batch. */
  loss: z.number(),
  /** Wall time of the step (slowest rank), milliseconds. */
  stepMs: z.number().min(0),
  /** Whole-job throughput. */
  tokensPerSec: z.number().min(0),
  samplesPerSec: z.number().min(0).optional(),
  lr: z.number().min(0),
  /** Global gradient norm before clipping. */
  gradNorm: z.number().min(0).optional(),
  /** Time in the all-reduce (slowest rank), milliseconds. */
  allReduceMs: z.number().min(0).optional(),
  /** Bytes of the gradient buffer each rank all-reduced (the nccl-tests `size`). */
  allReduceBytes: z.number().int().min(0).optional(),
  /**
   * All-reduce bus bandwidth, bytes per second, as nccl-tests defines it: algbw = allReduceBytes /
   * allReduceMs, busbw = algbw x 2(N-1)/N (x (N-1)/N when ZeRO stage 1 reduce-scatters instead).
   * Absent with one worker (nothing crosses a link) or when the ranks did not report the bytes.
   */
  busBwBytesPerSec: z.number().min(0).optional(),
  worldSize: z.number().int().min(1),
  /** True when the update was skipped on all ranks (a non-finite gradient). */
  skipped: z.boolean().optional(),
});
export type StepRecord = z.infer<typeof stepRecordSchema>;

/** The numeric columns of the step history that /api/history can return. */
export const historySeriesSchema = z.enum([
  'loss',
  'stepMs',
  'tokensPerSec',
  'samplesPerSec',
  'lr',
  'gradNorm',
  'allReduceMs',
  'busBwBytesPerSec',
]);
export type HistorySeries = z.infer<typeof historySeriesSchema>;

/**
 * GET /api/history?series=loss,lr&points=600[&from=STEP][&to=STEP]: each series downsampled on its
 * own (largest-triangle-three-buckets) to at most `points` points, as two column arrays.
 */
export const historyResponseSchema = z.strictObject({
  /** Steps recorded in the requested range, before downsampling. */
  total: z.number().int().min(0),
  /** Last step recorded (0 when none). */
  lastStep: z.number().int().min(0),
  points: z.number().int().min(1),
  series: z.partialRecord(
    historySeriesSchema,
    z.strictObject({ step: z.array(z.number().int()), value: z.array(z.number()) }),
  ),
});
export type HistoryResponse = z.infer<typeof historyResponseSchema>;

/** GET /api/steps?after=STEP&limit=N: full step records, oldest first, for programs. */
export const stepsResponseSchema = z.strictObject({
  steps: z.array(stepRecordSchema),
  /** Pass as `after` to get the next page; absent on the last page. */
  next: z.number().int().optional(),
});

/** One row of GET /api/checkpoints. */
export const checkpointInfoSchema = z.strictObject({
  step: z.number().int().min(0),
  /** Commit time, Unix ms. */
  time: z.number(),
  /** Where the manifest is, e.g. s3://bucket/run/step-000300/manifest.json. */
  uri: z.string(),
  /** Bytes of all objects. */
  bytes: z.number().int().min(0).optional(),
  /** From snapshot to manifest commit, seconds (uploads run while training goes on). */
  saveSeconds: z.number().min(0).optional(),
  /** How long training stood still for it: the slowest rank's snapshot to host memory, seconds. */
  snapshotSeconds: z.number().min(0).optional(),
  worldSize: z.number().int().min(1).optional(),
  /** Deleted after a newer checkpoint committed (kept in the list, greyed out). */
  deleted: z.boolean().optional(),
});
export type CheckpointInfo = z.infer<typeof checkpointInfoSchema>;
export const checkpointsResponseSchema = z.strictObject({ checkpoints: z.array(checkpointInfoSchema) });

export const eventKindSchema = z.enum([
  'job',
  'join',
  'leave',
  'failure',
  'recovery',
  'checkpoint',
  'skipped-sample',
  'skipped-step',
  'stage',
  'warning',
  'error',
]);
export type EventKind = z.infer<typeof eventKindSchema>;

/** One entry of the event log. */
export const runEventSchema = z.strictObject({
  /** Increases by one per event; the event log's cursor. */
  seq: z.number().int().min(1),
  time: z.number(),
  kind: eventKindSchema,
  message: z.string(),
  step: z.number().int().min(0).optional(),
  rank: z.number().int().min(0).optional(),
  worker: z.string().optional(),
  /** Structured detail (shard and key of a skipped sample, checkpoint uri...). Values are scalars. */
  detail: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])).optional(),
});
export type RunEvent = z.infer<typeof runEventSchema>;

/** GET /api/events?after=SEQ&limit=N (newest last). */
export const eventsResponseSchema = z.strictObject({
  events: z.array(runEventSchema),
  /** Highest seq recorded; older events than the oldest returned may have been dropped. */
  lastSeq: z.number().int().min(0),
  /** Events dropped from memory (the log keeps the last `dashboard.eventsKept`). */
  dropped: z.number().int().min(0),
});

/** GET /api/skipped: exact counters, however many events were dropped. */
export const skippedResponseSchema = z.strictObject({
  /** Skipped samples by reason (`decode`, `truncated-shard`, `caption-too-long`...). */
  samples: z.record(z.string(), z.number().int().min(0)),
  /** Optimizer steps skipped for a non-finite gradient. */
  steps: z.number().int().min(0),
});

/** One gallery entry: a sample of a fixed prompt at a step (its PNG is fetched by URL). */
export const galleryItemSchema = z.strictObject({
  id: z.string(),
  step: z.number().int().min(0),
  time: z.number(),
  prompt: z.string(),
  /** URL of the PNG, relative to the server root. */
  image: z.string(),
  width: z.number().int().min(1).optional(),
  height: z.number().int().min(1).optional(),
  /** Cross-attention maps, one per text token, when the model offered them. */
  attention: z.array(z.strictObject({ token: z.string(), image: z.string() })),
});
export type GalleryItem = z.infer<typeof galleryItemSchema>;
export const galleryResponseSchema = z.strictObject({ items: z.array(galleryItemSchema) });

/** GET /api/overview: everything the page needs at load, in one answer. */
export const overviewResponseSchema = z.strictObject({
  job: jobSummarySchema,
  workers: z.array(workerInfoSchema),
  checkpoints: z.array(checkpointInfoSchema),
  events: z.array(runEventSchema),
  skipped: skippedResponseSchema,
  gallery: z.array(galleryItemSchema),
  /** Gallery items the server keeps (`dashboard.gallery.keep`): older ones and their images are gone. */
  galleryKeep: z.number().int().min(1),
  /** The points per chart the server downsamples to. */
  historyPoints: z.number().int().min(1),
  /** The server's clock, Unix ms (the page shows heartbeat ages with it, whatever its own clock). */
  now: z.number(),
});
export type OverviewResponse = z.infer<typeof overviewResponseSchema>;

/**
 * Live updates on GET /api/stream (Server-Sent Events). The SSE `event:` field is the `type`; the
 * `data:` field is this object as JSON. `step` events carry every step; the page appends them to
 * its charts and re-fetches /api/history when they grow past twice the point budget.
 */
export const liveUpdateSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('job'), job: jobSummarySchema }),
  z.strictObject({ type: z.literal('step'), step: stepRecordSchema }),
  z.strictObject({ type: z.literal('worker'), worker: workerInfoSchema }),
  z.strictObject({ type: z.literal('event'), event: runEventSchema }),
  z.strictObject({ type: z.literal('checkpoint'), checkpoint: checkpointInfoSchema }),
  z.strictObject({ type: z.literal('gallery'), item: galleryItemSchema }),
]);
export type LiveUpdate = z.infer<typeof liveUpdateSchema>;

/** The answer to any request that failed: 400, 401, 404, 405. */
export const errorResponseSchema = z.strictObject({ error: z.string() });
