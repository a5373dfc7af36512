import { z } from 'zod';

/** Fields of one transformer stack: the text encoder, the image decoder, or a ViT in the tokenizer. */
export const transformerShape = {
  /** Number of blocks. */
  layers: z.number().int().min(1),
  /** Width of the residual stream. */
  dModel: z.number().int().min(4),
  /** Attention heads; must divide dModel. */
  heads: z.number().int().min(1),
  /** MLP hidden width as a multiple of dModel (Parti: 4). */
  mlpRatio: z.number().int().min(1).default(4),
  /** Dropout on attention and MLP outputs during training. */
  dropout: z.number().min(0).max(0.9).default(0),
};

/** Adds the check that heads divide dModel to a schema that has both. */
export function headsDivideDModel<T extends z.ZodType<{ dModel: number; heads: number }>>(schema: T) {
  return schema.refine((t) => t.dModel % t.heads === 0, {
    message: 'heads must divide dModel',
    path: ['heads'],
  });
}

export const transformerSchema = headsDivideDModel(z.strictObject(transformerShape));
export type TransformerConfig = z.infer<typeof transformerSchema>;
