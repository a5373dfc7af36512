import * as tf from '@tensorflow/tfjs';
import * as ort from 'onnxruntime-node';
import { join } from 'node:path';
import { PartiModel } from '../model/parti.ts';
import { SequentialRandom } from '../model/rng.ts';
import { EVAL_CONTEXT, type KeysValues } from '../model/transformer.ts';
import { l2Normalize, VitVqgan } from '../model/vit-vqgan.ts';
import { matmul, oneHot } from '../model/ops.ts';
import { param } from '../model/param-layout.ts';
import type { ExportSource } from './onnx-export.ts';
import type { OnnxManifest } from './onnx-manifest.ts';

/**
 * `--verify`: runs every exported graph in onnxruntime-node on random inputs and the same
 * computation in tfjs (the model code of src/model), and reports the largest absolute difference
 * of each output. Caches are compared after converting tfjs's layout (keys transposed,
 * [B*H, dh, S]; values [B*H, S, dh]) to the graphs' [B, H, S, dh].
 */

/** Largest absolute difference of one output. */
export interface OutputDiff {
  graph: string;
  output: string;
  maxAbsDiff: number;
  /** Number of values compared. */
  size: number;
}

/** Tolerance of `--verify` (the bound). */
export const VERIFY_TOLERANCE = 1e-4;

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/** [B*H, dh, S] (tfjs kT) or [B*H, S, dh] (tfjs v) -> [B, H, S, dh] as a flat array. */
function toBHSD(data: Float32Array, BH: number, S: number, dh: number, transposed: boolean): Float32Array {
  if (!transposed) return data;
  const out = new Float32Array(BH * S * dh);
  for (let n = 0; n < BH; n++) for (let d = 0; d < dh; d++) for (let s = 0; s < S; s++) out[(n * S + s) * dh + d] = data[(n * dh + d) * S + s]!;
  return out;
}

/** [B, H, S, dh] -> tfjs KeysValues. */
function toKeysValues(k: Float32Array, v: Float32Array, BH: number, S: number, dh: number): KeysValues {
  const kt = tf.transpose(tf.tensor3d(k, [BH, S, dh]), [0, 2, 1]) as tf.Tensor3D;
  return { kT: kt, v: tf.tensor3d(v, [BH, S, dh]) };
}

function int64(values: ArrayLike<number>, dims: number[]): ort.Tensor {
  return new ort.Tensor('int64', BigInt64Array.from(Array.from(values, (v) => BigInt(v))), dims);
}

function f32(values: Float32Array, dims: number[]): ort.Tensor {
  return new ort.Tensor('float32', values, dims);
}

/**
 * Compares the exported graphs in `dir` (described by `manifest`) with tfjs on random inputs drawn
 * from `seed`. Needs the tfjs backend initialized. Returns one entry per compared output.
 */
export async function verifyOnnxExport(src: ExportSource, dir: string, manifest: OnnxManifest, opts: { seed?: number; batch?: number } = {}): Promise<OutputDiff[]> {
  const rng = new SequentialRandom(opts.seed ?? 1234);
  const B = opts.batch ?? 2;
  const m = src.config.model;
  const model = new PartiModel(m);
  const L = m.text.maxLength;
  const Dt = m.text.dModel;
  const H = m.image.heads;
  const dh = m.image.dModel / H;
  const V = model.codes;
  const diffs: OutputDiff[] = [];
  const note = (graph: string, output: string, a: ArrayLike<number>, b: ArrayLike<number>) =>
    diffs.push({ graph, output, maxAbsDiff: maxAbsDiff(a, b), size: a.length });
  // No spinning pool threads: verification runs each graph once, on a machine doing other work.
  const session = (file: string) =>
    ort.InferenceSession.create(join(dir, file), { executionProviders: ['cpu'], extra: { session: { intra_op: { allow_spinning: '0' } } } });
  const randInts = (n: number, max: number) => Int32Array.from({ length: n }, () => Math.floor(rng.next() * max));
  const randNormal = (n: number, std = 1) => Float32Array.from({ length: n }, () => rng.normal() * std);
  // Text masks: row b has a random number (>= 2) of real tokens, then padding.
  const mask = new Float32Array(B * L);
  for (let b = 0; b < B; b++) mask.fill(1, b * L, b * L + 2 + Math.floor(rng.next() * (L - 1)));

  const p = model.layout.toTensors(src.parti);
  const sessions: ort.InferenceSession[] = [];
  try {
    // Text encoder.
    {
      const ids = randInts(B * L, m.text.vocabSize);
      const s = await session(manifest.graphs.textEncoder.file);
      sessions.push(s);
      const r = await s.run({ text_ids: int64(ids, [B, L]), text_mask: f32(mask, [B, L]) });
      const ref = tf.tidy(() => model.encode(p, tf.tensor1d(ids, 'int32'), mask, B, EVAL_CONTEXT).memory);
      note('textEncoder', 'memory', r.memory!.data as Float32Array, ref.dataSync());
      ref.dispose();
    }
    // Decoder prefill: a random prefix (BOS then tokens) over a random memory.
    const memory = randNormal(B * L * Dt);
    {
      const T = 3;
      const ids = randInts(B * T, V);
      for (let b = 0; b < B; b++) ids[b * T] = model.bosId;
      const s = await session(manifest.graphs.decoderPrefill.file);
      sessions.push(s);
      const r = await s.run({ input_ids: int64(ids, [B, T]), memory: f32(memory, [B, L, Dt]), text_mask: f32(mask, [B, L]) });
      const ref = tf.tidy(() => {
        const mem = tf.tensor2d(memory, [B * L, Dt]);
        const bias = tf.tensor4d(Float32Array.from(mask, (x) => (x ? 0 : -1e9)), [B, 1, 1, L]);
        const cross = model.crossKeysValues(p, mem, B);
        const d = model.decode(p, tf.tensor1d(ids, 'int32'), B, T, cross, bias, EVAL_CONTEXT);
        return { logits: d.logits, selfKV: d.selfKV, cross } as unknown as tf.TensorContainer;
      }) as unknown as { logits: tf.Tensor; selfKV: KeysValues[]; cross: KeysValues[] };
      note('decoderPrefill', 'logits', r.logits!.data as Float32Array, ref.logits.dataSync());
      for (let i = 0; i < m.image.layers; i++) {
        note('decoderPrefill', `present_key_${i}`, r[`present_key_${i}`]!.data as Float32Array, toBHSD(ref.selfKV[i]!.kT.dataSync() as Float32Array, B * H, T, dh, true));
        note('decoderPrefill', `present_value_${i}`, r[`present_value_${i}`]!.data as Float32Array, ref.selfKV[i]!.v.dataSync());
        note('decoderPrefill', `cross_key_${i}`, r[`cross_key_${i}`]!.data as Float32Array, toBHSD(ref.cross[i]!.kT.dataSync() as Float32Array, B * H, L, dh, true));
        note('decoderPrefill', `cross_value_${i}`, r[`cross_value_${i}`]!.data as Float32Array, ref.cross[i]!.v.dataSync());
      }
      tf.dispose([ref.logits, ...ref.selfKV.flatMap((kv) => [kv.kT, kv.v]), ...ref.cross.flatMap((kv) => [kv.kT, kv.v])]);
    }
    // Decoder step: random caches of a random length, one token.
    {
      const P = 1 + Math.floor(rng.next() * Math.max(1, model.imageTokens - 1));
      const ids = randInts(B, V);
      const feeds: Record<string, ort.Tensor> = { input_ids: int64(ids, [B, 1]), text_mask: f32(mask, [B, L]) };
      const past: { k: Float32Array; v: Float32Array }[] = [];
      const cross: { k: Float32Array; v: Float32Array }[] = [];
      for (let i = 0; i < m.image.layers; i++) {
        past.push({ k: randNormal(B * H * P * dh), v: randNormal(B * H * P * dh) });
        cross.push({ k: randNormal(B * H * L * dh), v: randNormal(B * H * L * dh) });
        feeds[`past_key_${i}`] = f32(past[i]!.k, [B, H, P, dh]);
        feeds[`past_value_${i}`] = f32(past[i]!.v, [B, H, P, dh]);
        feeds[`cross_key_${i}`] = f32(cross[i]!.k, [B, H, L, dh]);
        feeds[`cross_value_${i}`] = f32(cross[i]!.v, [B, H, L, dh]);
      }
      const s = await session(manifest.graphs.decoderStep.file);
      sessions.push(s);
      const r = await s.run(feeds);
      const ref = tf.tidy(() => {
        const bias = tf.tensor4d(Float32Array.from(mask, (x) => (x ? 0 : -1e9)), [B, 1, 1, L]);
        const pastKV = past.map((kv) => toKeysValues(kv.k, kv.v, B * H, P, dh));
        const crossKV = cross.map((kv) => toKeysValues(kv.k, kv.v, B * H, L, dh));
        const d = model.decode(p, tf.tensor1d(ids, 'int32'), B, 1, crossKV, bias, EVAL_CONTEXT, { start: P, past: pastKV });
        return { logits: d.logits, selfKV: d.selfKV } as unknown as tf.TensorContainer;
      }) as unknown as { logits: tf.Tensor; selfKV: KeysValues[] };
      note('decoderStep', 'logits', r.logits!.data as Float32Array, ref.logits.dataSync());
      for (let i = 0; i < m.image.layers; i++) {
        note('decoderStep', `present_key_${i}`, r[`present_key_${i}`]!.data as Float32Array, toBHSD(ref.selfKV[i]!.kT.dataSync() as Float32Array, B * H, P + 1, dh, true));
        note('decoderStep', `present_value_${i}`, r[`present_value_${i}`]!.data as Float32Array, ref.selfKV[i]!.v.dataSync());
      }
      tf.dispose([ref.logits, ...ref.selfKV.flatMap((kv) => [kv.kT, kv.v])]);
    }
  } finally {
    for (const t of p.values()) t.dispose();
  }
  // ViT-VQGAN decoder: random codes.
  {
    const vq = new VitVqgan(m.tokenizer);
    const codes = randInts(B * vq.tokens, m.tokenizer.codebookSize);
    const s = await session(manifest.graphs.vqganDecoder.file);
    sessions.push(s);
    const r = await s.run({ codes: int64(codes, [B, vq.tokens]) });
    const vp = vq.layout.toTensors(src.tokenizer);
    try {
      const px = tf.tidy(() => {
        const codebook = l2Normalize(param(vp, 'vq.codebook'));
        const q = matmul(oneHot(tf.tensor1d(codes, 'int32'), m.tokenizer.codebookSize), codebook);
        return vq.pixels(vq.decodeLatents(vp, q, B, EVAL_CONTEXT));
      });
      note('vqganDecoder', 'pixels', r.pixels!.data as Float32Array, patchesToImages(px.dataSync() as Float32Array, B, m.tokenizer.imageSize, m.tokenizer.patchSize, m.tokenizer.channels));
      px.dispose();
    } finally {
      for (const t of vp.values()) t.dispose();
    }
  }
  for (const s of sessions) await s.release();
  return diffs;
}

/** Patches [B*N, P*P*C] (VitVqgan's order) -> images [B, S, S, C], without rounding. */
export function patchesToImages(patches: Float32Array, B: number, S: number, P: number, C: number): Float32Array {
  const g = S / P;
  const out = new Float32Array(B * S * S * C);
  let o = 0;
  for (let b = 0; b < B; b++)
    for (let gy = 0; gy < g; gy++)
      for (let gx = 0; gx < g; gx++)
        for (let y = 0; y < P; y++) {
          const row = ((b * S + gy * P + y) * S + gx * P) * C;
          for (let i = 0; i < P * C; i++) out[row + i] = patches[o++]!;
        }
  return out;
}
