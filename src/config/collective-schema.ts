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
  /** Chunks of one all-reduce in flight at once, so that sending overlaps reducing. */
  inflight: z.number().int().min(1).max(64).default(4),
  /** Parallel gRPC streams (each its own TCP connection) between two workers. */
  streams: z.number().int().min(1).max(16).default(2),
  /** Deadline of one collective in ms; past it the step is aborted on every rank. */
  deadlineMs: z.number().int().min(100).default(60_000),
  /** Largest message a worker accepts, MiB. */
  maxMessageMiB: z.number().int().min(1).max(2047).default(64),
  /** HTTP/2 flow-control window of a worker's incoming streams, MiB. */
  flowControlWindowMiB: z.number().int().min(1).max(1024).default(64),
});
export type CollectiveConfig = z.infer<typeof collectiveSchema>;
