import { z } from 'zod';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PartiError } from '../errors.ts';

/**
 * parti-onnx.json: what a server needs besides the graphs (names and shapes of inputs/outputs,
 * the text vocabulary, image geometry, sampling defaults). Written by `parti export onnx`, read
 * back (and validated) by `parti serve`. No tfjs here: servers import this file.
 */

export const MANIFEST_FILE = 'parti-onnx.json';

const valueSpec = z.object({
  name: z.string(),
  type: z.enum(['float32', 'int64', 'bool']),
  shape: z.array(z.union([z.number().int(), z.string()])),
});

const graphSpec = z.object({ file: z.string(), inputs: z.array(valueSpec), outputs: z.array(valueSpec) });

export const onnxManifestSchema = z.object({
  format: z.literal('parti-onnx-v1'),
  /** The run the graphs came from. */
  source: z.string(),
  configHash: z.string(),
  partiStep: z.number().int(),
  irVersion: z.number().int(),
  opset: z.number().int(),
  graphs: z.object({ textEncoder: graphSpec, decoderPrefill: graphSpec, decoderStep: graphSpec, vqganDecoder: graphSpec }),
  /** External data files beside the graphs, with their sizes. */
  externalData: z.array(z.object({ file: z.string(), bytes: z.number().int() })),
  text: z.object({
    /** Byte-level UTF-8: ids 0..255 are bytes; then PAD, BOS, EOS (src/model/text-tokenizer.ts). */
    tokenizer: z.literal('utf8-bytes'),
    vocabSize: z.number().int(),
    maxLength: z.number().int().min(2),
    padId: z.number().int(),
    bosId: z.number().int(),
    eosId: z.number().int(),
    dModel: z.number().int(),
  }),
  image: z.object({
    /** Codebook size; image token ids are 0..codes-1 and the decoder's BOS id is `codes`. */
    codes: z.number().int().min(2),
    bosId: z.number().int(),
    /** Image tokens per image (grid * grid). */
    tokens: z.number().int().min(1),
    grid: z.number().int(),
    imageSize: z.number().int(),
    patchSize: z.number().int(),
    channels: z.number().int().min(1).max(4),
    decoderLayers: z.number().int().min(1),
    heads: z.number().int(),
    headDim: z.number().int(),
    dModel: z.number().int(),
  }),
  sampling: z.object({
    defaults: z.object({ cfg: z.number(), temperature: z.number(), topK: z.number().int(), topP: z.number(), seed: z.number().int() }),
    tokenChoice: z.string(),
  }),
});

export type OnnxManifest = z.infer<typeof onnxManifestSchema>;

/** Reads and validates `dir`/parti-onnx.json; a missing or invalid one is a one-line checkpoint error. */
export async function readOnnxManifest(dir: string): Promise<OnnxManifest> {
  const path = join(dir, MANIFEST_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing (run parti export onnx first)' : `not JSON (${(err as Error).message})`;
    throw new PartiError('checkpoint', `${path}: ${why}`);
  }
  const r = onnxManifestSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new PartiError('checkpoint', `${path}: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return r.data;
}
