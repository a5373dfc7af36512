import { z } from 'zod';

export const dataSchema = z.strictObject({
  /**
   * Where training pairs come from: `synthetic` (the generated shapes set, made in memory) or a
   * shard set URL such as `file:///data/train-{000000..000009}.tar` or `s3://bucket/ds/train-{0..9}.tar`.
   */
  source: z.string().min(1).default('synthetic'),
  /** Held-out shards for evaluation, same URL forms; optional. */
  heldOut: z.string().min(1).optional(),
  /** The generated shapes set, used when source is `synthetic`. */
  synthetic: z
    .strictObject({
      samples: z.number().int().min(1).default(2048),
      seed: z.number().int().min(0).default(0),
    })
    .prefault({}),
  /** What a corrupt sample or shard does: skipped and counted, or stops training. */
  badSamplePolicy: z.enum(['skip', 'fail']).default('skip'),
  /** Captions longer than this many UTF-8 bytes are bad samples. */
  maxCaptionBytes: z.number().int().min(1).default(4096),
  /**
   * The epoch plan shuffles the samples of this many consecutive shards (of a per-epoch shuffled
   * shard order) together. Larger mixes better; a reader holds about this many shards in memory.
   * Part of the sample order, so part of the config hash.
   */
  windowShards: z.number().int().min(1).default(8),
  /** How a worker reads: deadlines and read-ahead. They do not change what is computed. */
  reader: z
    .strictObject({
      /** Deadline of one shard fetch (retries included) in ms; past it the shard's samples are skipped as shard-timeout. */
      readTimeoutMs: z.number().int().min(1).default(120_000),
      /** Steps of samples a worker fetches and decodes ahead of the one it trains on. */
      prefetchSteps: z.number().int().min(0).default(4),
      /** Parsed shards kept in memory per worker (keep it above windowShards). */
      cacheShards: z.number().int().min(1).default(12),
      /** Images decoded at once per worker. */
      decodeConcurrency: z.number().int().min(1).default(4),
    })
    .prefault({}),
});
export type DataConfig = z.infer<typeof dataSchema>;
