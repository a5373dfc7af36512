import { z } from 'zod';

export const runtimeSchema = z.strictObject({
  /** `auto` picks tfjs-node-gpu, then tfjs-node, when installed, else wasm. */
  backend: z.enum(['auto', 'tensorflow', 'wasm', 'cpu']).default('auto'),
  /** Worker processes of a local run (`parti train`) or pods of a cluster run. */
  workers: z.number().int().min(1).default(1),
});
export type RuntimeConfig = z.infer<typeof runtimeSchema>;
