import { z } from 'zod';

/**
 * How a job runs: processes, ports, timeouts. Nothing here changes what is computed, so the
 * whole section is left out of the config hash (peers with another world size still agree).
 */
export const runtimeSchema = z.strictObject({
  /** `auto` picks tfjs-node-gpu, then tfjs-node, when installed, else wasm. */
  backend: z.enum(['auto', 'tensorflow', 'wasm', 'cpu']).default('auto'),
  /** Worker processes of a local run (`parti train`) or pods of a cluster run; the job starts when this many have joined. */
  workers: z.number().int().min(1).default(1),
  /**
   * The job keeps training while at least this many workers are alive (elastic down to it); below
   * it, it waits for workers to join. Defaults to `workers` (no shrinking: the job waits for a
   * replacement, and parameters stay bitwise those of an uninterrupted run).
   */
  minWorkers: z.number().int().min(1).optional(),
  /** Host the coordinator listens on (gRPC). `0.0.0.0` in a cluster. */
  coordinatorHost: z.string().min(1).default('127.0.0.1'),
  /** Port of the coordinator's gRPC service; 0 picks a free port (local runs). */
  coordinatorPort: z.number().int().min(0).max(65535).default(0),
  /** Host a worker's collective (ring) endpoint listens on and advertises. */
  workerHost: z.string().min(1).default('127.0.0.1'),
  /** Port of a worker's collective endpoint; 0 picks a free port. */
  workerPort: z.number().int().min(0).max(65535).default(0),
  /** Workers send a heartbeat this often (milliseconds). */
  heartbeatMs: z.number().int().min(10).max(60_000).default(500),
  /** A worker silent for this long (no heartbeat, or its command stream closed) is declared dead (milliseconds). */
  failureTimeoutMs: z.number().int().min(50).max(600_000).default(3_000),
  /**
   * A step (compute, all-reduce, report), a re-form (with its state hand-over) or a checkpoint that
   * takes longer than this is aborted and redone (milliseconds). Also the deadline of each
   * collective call a worker makes.
   */
  stepDeadlineMs: z.number().int().min(100).default(600_000),
  /** A worker that cannot reach its coordinator keeps trying this long before it gives up (a restarted coordinator comes back within it) (milliseconds). */
  reconnectMs: z.number().int().min(100).default(120_000),
  /** Deadline of one unary RPC between worker and coordinator (milliseconds). */
  rpcDeadlineMs: z.number().int().min(50).max(600_000).default(10_000),
  /** Largest coordinator message in bytes (commands, reports); larger ones are refused. */
  maxMessageBytes: z.number().int().min(1024).max(256 * 1024 * 1024).default(16 * 1024 * 1024),
  /**
   * ZeRO stage: 0 = every worker keeps all optimizer state; 1 = optimizer state is sharded: the
   * gradients are reduce-scattered, each rank updates its 1/N of the parameters and optimizer
   * state, then the parameters are all-gathered.
   */
  zeroStage: z.union([z.literal(0), z.literal(1)]).default(0),
  /**
   * Test mode: the coordinator appends to this file, for every committed optimizer step, the
   * samples it consumed (JSON lines). Relative paths are inside the run directory.
   */
  ledger: z.string().min(1).nullable().default(null),
  /**
   * Test mode: train a small deterministic linear-regression model instead of the model section
   * (the orchestration is the same). `dim` inputs; `nonFiniteSamples` are samples whose gradient
   * is NaN (to test skipped steps); `stepDelayMs` slows each microbatch down (chaos tests).
   */
  testModel: z
    .strictObject({
      kind: z.literal('linear'),
      dim: z.number().int().min(1).max(1 << 24).default(64),
      steps: z.number().int().min(1).default(50),
      batchSize: z.number().int().min(1).default(16),
      microBatchSize: z.number().int().min(1).optional(),
      lr: z.number().positive().default(0.01),
      nonFiniteSamples: z.array(z.number().int().min(0)).default([]),
      stepDelayMs: z.number().int().min(0).default(0),
    })
    .nullable()
    .default(null),
});
export type RuntimeConfig = z.infer<typeof runtimeSchema>;
