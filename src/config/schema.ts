import { z } from 'zod';
import { modelSchema } from './model-schema.ts';
import { trainingSchema } from './training-schema.ts';
import { dataSchema } from './data-schema.ts';
import { runtimeSchema } from './runtime-schema.ts';
import { collectiveSchema } from './collective-schema.ts';
import { dashboardSchema } from './dashboard-schema.ts';
import { checkpointSchema } from './checkpoint-schema.ts';
import { securitySchema } from './security-schema.ts';

/** A whole job: what to train (model, data, training) and how to run it (runtime). */
export const configSchema = z.strictObject({
  /** A short name for the job, used in logs and object names. */
  name: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'lowercase letters, digits and dashes, at most 63')
    .default('parti'),
  model: modelSchema,
  data: dataSchema.prefault({}),
  training: trainingSchema,
  runtime: runtimeSchema.prefault({}),
  collective: collectiveSchema.prefault({}),
  dashboard: dashboardSchema.prefault({}),
  checkpoint: checkpointSchema.prefault({}),
  security: securitySchema.prefault({}),
});

/** A validated config with every default filled in. */
export type Config = z.infer<typeof configSchema>;
/** What a YAML file may say: defaults may be left out. */
export type ConfigInput = z.input<typeof configSchema>;
