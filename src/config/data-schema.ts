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
});
export type DataConfig = z.infer<typeof dataSchema>;
