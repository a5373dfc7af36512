import { z } from 'zod';

export const optimizerSchema = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('adamw'),
    lr: z.number().positive(),
    beta1: z.number().min(0).max(1).default(0.9),
    beta2: z.number().min(0).max(1).default(0.98),
    eps: z.number().positive().default(1e-8),
    weightDecay: z.number().min(0).default(0.01),
  }),
  z.strictObject({
    type: z.literal('adafactor'),
    lr: z.number().positive(),
    beta1: z.number().min(0).max(1).default(0),
    /** Decay rate exponent of the second-moment estimate (Adafactor: 0.8). */
    decayRate: z.number().min(0).max(1).default(0.8),
    eps1: z.number().positive().default(1e-30),
    /** Floor of the parameter RMS that scales the step when scaleParameter is on. */
    eps2: z.number().positive().default(1e-3),
    /** Scale each step by the parameter's RMS (Adafactor's relative step size); off: lr is absolute. */
    scaleParameter: z.boolean().default(false),
    clipThreshold: z.number().positive().default(1),
    weightDecay: z.number().min(0).default(0),
  }),
]);
export type OptimizerConfig = z.infer<typeof optimizerSchema>;

export const scheduleSchema = z.strictObject({
  warmupSteps: z.number().int().min(0).default(0),
  decay: z.enum(['constant', 'linear', 'cosine', 'rsqrt']).default('cosine'),
  /** Final learning rate as a fraction of the peak (linear and cosine). */
  minLrRatio: z.number().min(0).max(1).default(0.1),
});
export type ScheduleConfig = z.infer<typeof scheduleSchema>;

/** One training stage: the tokenizer, Parti itself, or the upsampler. */
export const stageSchema = z.strictObject({
  steps: z.number().int().min(0),
  /** Global batch size: the samples one optimizer step consumes, across all workers. */
  batchSize: z.number().int().min(1),
  /** Largest batch one forward/backward runs at once; larger shares are accumulated. */
  microBatchSize: z.number().int().min(1).optional(),
  optimizer: optimizerSchema,
  schedule: scheduleSchema.prefault({}),
  /** Clip gradients to this global L2 norm; 0 turns clipping off. */
  clipNorm: z.number().min(0).default(1),
});
export type StageConfig = z.infer<typeof stageSchema>;

export const trainingSchema = z.strictObject({
  /** Seeds parameters, data order, dropout and sampling. */
  seed: z.number().int().min(0).max(2 ** 31 - 1).default(0),
  tokenizer: stageSchema,
  parti: stageSchema,
  upsampler: stageSchema.optional(),
  /**
   * An already trained image tokenizer; when set, `parti train` skips the tokenizer stage and uses
   * it. A run directory (or its `tokenizer/` checkpoint directory), or an object-store URL,
   * `s3://bucket/prefix` or `file:///dir`, where `parti train --stage tokenizer --publish-tokenizer
   * URL` published it (what pods in a cluster use): fetched and verified (sizes, sha256) at start.
   */
  tokenizerFrom: z
    .string()
    .min(1)
    .refine((v) => !/^[a-z][a-z0-9+.-]*:\/\//i.test(v) || /^(s3|file):\/\//i.test(v), 'a path, s3://bucket/prefix or file:///dir')
    .optional(),
  /** Print a progress line every this many steps. */
  logEvery: z.number().int().min(1).default(10),
});
export type TrainingConfig = z.infer<typeof trainingSchema>;
