import { z } from 'zod';

/**
 * How workers all-reduce gradients (ring all-reduce over gRPC, src/collective). Defaults suit
 * workers on one fast network; every field may be left out.
 */
export const collectiveSchema = z.strictObject({
  /** Wire format of gradients: `none` (float32), `bf16` or `fp16` (half the bytes; sums stay float32). */
  compress: z.enum(['none', 'bf16', 'fp16']).default('none'),
  /** Gradients are packed into flat buckets of about this many MiB, one all-reduce each (PyTorch DDP: 25). */
  bucketMiB: z.number().positive().max(1024).default(25),
  /** Size of one message (a chunk of a bucket) in KiB; must fit maxMessageMiB. */
  chunkKiB: z.number().int().min(4).max(65536).default(4096),
  /**
   * Chunks of one all-reduce in flight at once (each chunk's send/receive already overlaps in both
   * directions). Measured with ranks sharing 2 cores (64 MiB, 2 ranks, cpu/rank): 1 -> 88-91 ms,
   * 2 -> 103-107, 4 -> 121-125, and the wall time followed: more in flight costs memory, copies and
   * GC for no gain while the CPU is the limit. Raise it for ranks on separate machines.
   */
  inflight: z.number().int().min(1).max(64).default(1),
  /** Parallel gRPC streams (each its own TCP connection) between two workers. */
  streams: z.number().int().min(1).max(16).default(2),
  /** Deadline of one collective in ms; past it the step is aborted on every rank. */
  deadlineMs: z.number().int().min(100).default(60_000),
  /** Largest message a worker accepts, MiB. */
  maxMessageMiB: z.number().int().min(1).max(2047).default(64),
  /** HTTP/2 flow-control window of a worker's incoming streams, MiB. */
  flowControlWindowMiB: z.number().int().min(1).max(1024).default(64),
  /**
   * V8's `--initial-old-space-size` (MiB) for worker processes; 0 leaves V8's default. A process
   * flag (not allowed in NODE_OPTIONS): whoever starts a worker puts `collectiveNodeFlags()`
   * (src/collective/worker-node-flags.ts) on its command line. Why: grpc-js allocates a fresh
   * buffer per message and V8 counts that memory against the old generation's limit, so with V8's
   * small initial limit every all-reduce ran several full mark-compacts (cost growing with the
   * worker's heap). Measured, 64 MiB on 2 ranks: cpu/rank 170-190 -> 105-124 ms with 256.
   */
  v8InitialOldSpaceMiB: z.number().int().min(0).max(65536).default(256),
});
export type CollectiveConfig = z.infer<typeof collectiveSchema>;
