import * as tf from '@tensorflow/tfjs';
import type { PartiModel } from '../model/parti.ts';
import type { ParamTensors } from '../model/param-layout.ts';
import type { TextTokenizer } from '../model/text-tokenizer.ts';
import { EVAL_CONTEXT, type KeysValues } from '../model/transformer.ts';
import { tracer } from '../observability/log.ts';
import { chooseBatchTokens, type DrawSettings } from './token-choice.ts';

const trace = tracer('generate');

/** Everything the sampler and the scorers run: the model, its text tokenizer and uploaded parameters. */
export interface PartiRunner {
  model: PartiModel;
  tokenizer: TextTokenizer;
  /** Parameter tensors (from `model.layout.toTensors`); the owner disposes them. */
  params: ParamTensors;
}

/** Sampler settings (guidance scale, seed, temperature, top-k, top-p). */
export type SamplerSettings = DrawSettings;

/** Defaults of `parti generate` (and of the ONNX export's sampling defaults). */
export const SAMPLER_DEFAULTS: Readonly<SamplerSettings> = { cfg: 3, temperature: 1, topK: 0, topP: 1, seed: 0 };

/** One row group of a sampling batch: a prompt and which of its samples to draw. */
export interface SampleRequest {
  prompt: string;
  /** The prompt's index in the request or prompt file: part of every random draw's key. */
  promptIndex: number;
  /** Sample indices to draw (0..n-1, or the candidates when reranking). */
  samples: readonly number[];
}

/** Options of `sampleImageTokens`. */
export interface SampleOptions {
  /**
   * Use the key/value caches (default true). Without them every step recomputes the decoder over
   * the whole prefix: same tokens, far slower; kept for tests and the benchmark.
   */
  cache?: boolean;
  /** Called after each image-token position (progress). */
  onToken?: (t: number, total: number) => void;
}

/** tf.tidy for plain objects of tensors. */
function tidy<T>(fn: () => T): T {
  return tf.tidy(() => fn() as unknown as tf.TensorContainer) as unknown as T;
}

/** Token ids and masks of texts, [n * L]. */
export function encodeTexts(tokenizer: TextTokenizer, texts: readonly string[]): { ids: Int32Array; mask: Uint8Array } {
  const L = tokenizer.maxLength;
  const ids = new Int32Array(texts.length * L);
  const mask = new Uint8Array(texts.length * L);
  texts.forEach((t, i) => {
    const e = tokenizer.encode(t);
    ids.set(e.ids, i * L);
    mask.set(e.mask, i * L);
  });
  return { ids, mask };
}

/**
 * Runs the text encoder once per distinct text and returns each row's cross-attention keys/values
 * (one per decoder layer) and padding bias, gathered from the per-text results: `rowText[b]` is
 * the index into `texts` that row b reads.
 */
export function encodeForRows(runner: PartiRunner, texts: readonly string[], rowText: readonly number[]): { cross: KeysValues[]; bias: tf.Tensor } {
  const { model, params: p } = runner;
  const H = model.image.heads;
  const { ids, mask } = encodeTexts(runner.tokenizer, texts);
  return tidy(() => {
    const enc = model.encode(p, tf.tensor1d(ids, 'int32'), mask, texts.length, EVAL_CONTEXT);
    const perText = model.crossKeysValues(p, enc.memory, texts.length);
    const headRows = tf.tensor1d(
      rowText.flatMap((i) => Array.from({ length: H }, (_, h) => i * H + h)),
      'int32',
    );
    const cross = perText.map((kv) => ({ kT: tf.gather(kv.kT, headRows) as tf.Tensor3D, v: tf.gather(kv.v, headRows) as tf.Tensor3D }));
    const bias = tf.gather(enc.bias, tf.tensor1d(Int32Array.from(rowText), 'int32'));
    return { cross, bias };
  });
}

/**
 * Draws image tokens autoregressively for every (prompt, sample) of `requests` in one batch:
 * the encoder runs once per prompt (and once for the empty caption under guidance), the
 * cross-attention keys/values are computed once, and the decoder extends a self-attention
 * key/value cache by one position per step. Under guidance (cfg != 1) the batch holds a
 * conditional and an unconditional (empty caption) row per sample; both get the drawn token.
 * Tokens are chosen on the host by `chooseBatchTokens` (token-choice.ts: the contract `parti serve` shares).
 *
 * Returns one Int32Array of `model.imageTokens` tokens per (request, sample), in request order.
 */
export function sampleImageTokens(
  runner: PartiRunner,
  requests: readonly SampleRequest[],
  settings: SamplerSettings,
  opts: SampleOptions = {},
): Int32Array[][] {
  const { model, params: p } = runner;
  const useCache = opts.cache ?? true;
  const guided = settings.cfg !== 1;
  const rows: { request: number; prompt: number; sample: number }[] = [];
  requests.forEach((r, i) => r.samples.forEach((s) => rows.push({ request: i, prompt: r.promptIndex, sample: s })));
  const n = rows.length;
  const out = requests.map((r) => r.samples.map(() => new Int32Array(model.imageTokens)));
  if (n === 0) return out;
  const B = guided ? 2 * n : n;
  const texts = requests.map((r) => r.prompt);
  if (guided) texts.push('');
  const rowText = rows.map((r) => r.request);
  if (guided) rowText.push(...rows.map(() => requests.length));
  const T = model.imageTokens;
  const V = model.codes;
  const tokens = new Int32Array(B * T);
  const outIndex = rows.map((r) => out[r.request]![requests[r.request]!.samples.indexOf(r.sample)]!);
  const held: tf.Tensor[] = [];
  let past: KeysValues[] | undefined;
  const started = performance.now();
  try {
    const { cross, bias } = encodeForRows(runner, texts, rowText);
    held.push(bias, ...cross.flatMap((c) => [c.kT, c.v]));
    for (let t = 0; t < T; t++) {
      let logits: Float32Array;
      if (useCache) {
        const prev = new Int32Array(B);
        for (let b = 0; b < B; b++) prev[b] = t === 0 ? model.bosId : tokens[b * T + t - 1]!;
        const step = tidy(() => {
          const r = model.decode(p, tf.tensor1d(prev, 'int32'), B, 1, cross, bias, EVAL_CONTEXT, { start: t, past });
          return { logits: r.logits, selfKV: r.selfKV };
        });
        if (past) for (const kv of past) tf.dispose([kv.kT, kv.v]);
        past = step.selfKV;
        logits = step.logits.dataSync() as Float32Array;
        step.logits.dispose();
      } else {
        // No cache: the decoder reads BOS and all t tokens drawn so far, and the last row is used.
        const len = t + 1;
        const inputs = new Int32Array(B * len);
        const last = new Int32Array(B);
        for (let b = 0; b < B; b++) {
          inputs[b * len] = model.bosId;
          inputs.set(tokens.subarray(b * T, b * T + t), b * len + 1);
          last[b] = b * len + t;
        }
        const l = tf.tidy(() => {
          const r = model.decode(p, tf.tensor1d(inputs, 'int32'), B, len, cross, bias, EVAL_CONTEXT);
          return tf.gather(r.logits, tf.tensor1d(last, 'int32'));
        });
        logits = l.dataSync() as Float32Array;
        l.dispose();
      }
      const chosen = chooseBatchTokens(logits, V, rows, settings, t);
      for (let i = 0; i < n; i++) {
        const tok = chosen[i]!;
        tokens[i * T + t] = tok;
        if (guided) tokens[(n + i) * T + t] = tok;
        outIndex[i]![t] = tok;
      }
      opts.onToken?.(t + 1, T);
    }
  } finally {
    if (past) for (const kv of past) tf.dispose([kv.kT, kv.v]);
    tf.dispose(held);
  }
  const ms = performance.now() - started;
  trace('sampled', { rows: B, tokens: T, cache: useCache, cfg: settings.cfg, ms: Math.round(ms) });
  return out;
}
