import * as tf from '@tensorflow/tfjs';
import type { PartiModel } from './parti.ts';
import type { TextTokenizer } from './text-tokenizer.ts';
import { SequentialRandom, hashInts } from './rng.ts';
import { EVAL_CONTEXT, type KeysValues } from './transformer.ts';

/** Options of `sampleImageTokens`. */
export interface SamplingOptions {
  seed: number;
  /** Softmax temperature (default 1). */
  temperature?: number;
  /** Keep the k most likely codes (0 = all; default 0). */
  topK?: number;
  /**
   * Classifier-free guidance scale: logits = uncond + scale * (cond - uncond); 1 = off (default).
   * Uses the empty caption the model learned through condition dropout.
   */
  guidance?: number;
}

/**
 * A simple autoregressive sampler: encodes the captions once, caches the cross-attention and
 * self-attention keys/values, and draws one image token per step for every caption.
 * Deterministic for a seed. Returns image tokens [captions.length * imageTokens].
 */
export function sampleImageTokens(
  model: PartiModel,
  tokenizer: TextTokenizer,
  params: Float32Array,
  captions: readonly string[],
  opts: SamplingOptions,
): Int32Array {
  const guidance = opts.guidance ?? 1;
  const temperature = opts.temperature ?? 1;
  const topK = opts.topK ?? 0;
  const n = captions.length;
  const withUncond = guidance !== 1;
  const texts = withUncond ? [...captions, ...captions.map(() => '')] : [...captions];
  const B = texts.length;
  const L = tokenizer.maxLength;
  const ids = new Int32Array(B * L);
  const mask = new Uint8Array(B * L);
  texts.forEach((t, i) => {
    const e = tokenizer.encode(t);
    ids.set(e.ids, i * L);
    mask.set(e.mask, i * L);
  });
  const p = model.layout.toTensors(params);
  const T = model.imageTokens;
  const out = new Int32Array(n * T);
  const rng = new SequentialRandom(hashInts(opts.seed, 0x5a3713));
  let past: KeysValues[] | undefined;
  const held: tf.Tensor[] = [];
  try {
    const { cross, bias } = tidy(() => {
      const enc = model.encode(p, tf.tensor1d(ids, 'int32'), mask, B, EVAL_CONTEXT);
      return { cross: model.crossKeysValues(p, enc.memory, B), bias: enc.bias };
    });
    held.push(bias, ...cross.flatMap((c) => [c.kT, c.v]));
    let prev = new Int32Array(B).fill(model.bosId);
    for (let t = 0; t < T; t++) {
      const step = tidy(() => {
        const r = model.decode(p, tf.tensor1d(prev, 'int32'), B, 1, cross, bias, EVAL_CONTEXT, { start: t, past });
        return { logits: r.logits, selfKV: r.selfKV };
      });
      if (past) for (const kv of past) tf.dispose([kv.kT, kv.v]);
      past = step.selfKV;
      const logits = step.logits.dataSync() as Float32Array;
      step.logits.dispose();
      const V = model.codes;
      const next = new Int32Array(B);
      for (let i = 0; i < n; i++) {
        const row = new Float64Array(V);
        for (let v = 0; v < V; v++) {
          const c = logits[i * V + v]!;
          row[v] = (withUncond ? logits[(n + i) * V + v]! + guidance * (c - logits[(n + i) * V + v]!) : c) / temperature;
        }
        const tok = drawFrom(row, topK, rng.next());
        next[i] = tok;
        if (withUncond) next[n + i] = tok;
        out[i * T + t] = tok;
      }
      prev = next;
    }
  } finally {
    if (past) for (const kv of past) tf.dispose([kv.kT, kv.v]);
    tf.dispose(held);
    for (const t of p.values()) t.dispose();
  }
  return out;
}

/** Draws an index from logits (top-k filtered) with a uniform number u in [0, 1). */
function drawFrom(logits: Float64Array, topK: number, u: number): number {
  let threshold = -Infinity;
  if (topK > 0 && topK < logits.length) threshold = [...logits].sort((a, b) => b - a)[topK - 1]!;
  let max = -Infinity;
  for (const l of logits) if (l >= threshold && l > max) max = l;
  let total = 0;
  const w = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) if (logits[i]! >= threshold) total += w[i] = Math.exp(logits[i]! - max);
  let acc = 0;
  for (let i = 0; i < logits.length; i++) {
    acc += w[i]!;
    if (u * total < acc) return i;
  }
  return logits.length - 1;
}

/** tf.tidy for results that are plain objects of tensors (tidy keeps every tensor inside). */
function tidy<T>(fn: () => T): T {
  return tf.tidy(() => fn() as unknown as tf.TensorContainer) as unknown as T;
}
