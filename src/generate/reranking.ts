import * as tf from '@tensorflow/tfjs';
import { EVAL_CONTEXT } from '../model/transformer.ts';
import { oneHot } from '../model/ops.ts';
import { encodeForRows, type PartiRunner } from './sampler.ts';

/** One candidate image of a prompt, as a scorer sees it. */
export interface RerankCandidate {
  /** Image tokens [imageTokens]. */
  tokens: Int32Array;
  /** The decoded image (RGB(A) bytes, [size * size * channels]); decoded on first call. */
  pixels(): Uint8Array;
}

/**
 * Scores candidate images of a prompt; higher is better. The default needs nothing but the model
 * (`CaptionLikelihoodScorer`); a contrastive image-text model from the evaluation area plugs in
 * through the same interface.
 */
export interface Scorer {
  /** Shown in logs and written to the run's metadata. */
  readonly name: string;
  score(prompt: string, candidates: readonly RerankCandidate[]): Promise<number[]>;
}

/**
 * Sum over positions of log p(token_t | tokens_<t, text) (nats) for each (text, tokens) row,
 * teacher-forced in one decoder pass per chunk of rows.
 */
export function tokenLogLikelihoods(runner: PartiRunner, texts: readonly string[], tokens: readonly Int32Array[], chunk = 16): Float64Array {
  return Float64Array.from(teacherForced(runner, texts, tokens, chunk, 'sum'));
}

/** log p(token_t | tokens_<t, text) (nats) of every row and position, [rows * imageTokens]. */
export function tokenLogLikelihoodsPerPosition(runner: PartiRunner, texts: readonly string[], tokens: readonly Int32Array[], chunk = 16): Float32Array {
  return teacherForced(runner, texts, tokens, chunk, 'per-position');
}

function teacherForced(runner: PartiRunner, texts: readonly string[], tokens: readonly Int32Array[], chunk: number, reduce: 'sum' | 'per-position'): Float32Array {
  const { model, params: p } = runner;
  const T = model.imageTokens;
  const width = reduce === 'sum' ? 1 : T;
  const out = new Float32Array(tokens.length * width);
  for (let s = 0; s < tokens.length; s += chunk) {
    const e = Math.min(tokens.length, s + chunk);
    const B = e - s;
    const uniq = [...new Set(texts.slice(s, e))];
    const rowText = texts.slice(s, e).map((t) => uniq.indexOf(t));
    const inputs = new Int32Array(B * T);
    const targets = new Int32Array(B * T);
    for (let b = 0; b < B; b++) {
      const tok = tokens[s + b]!;
      inputs[b * T] = model.bosId;
      inputs.set(tok.subarray(0, T - 1), b * T + 1);
      targets.set(tok, b * T);
    }
    const { cross, bias } = encodeForRows(runner, uniq, rowText);
    try {
      const ll = tf.tidy(() => {
        const { logits } = model.decode(p, tf.tensor1d(inputs, 'int32'), B, T, cross, bias, EVAL_CONTEXT);
        const picked = tf.sum(tf.mul(tf.logSoftmax(logits), oneHot(tf.tensor1d(targets, 'int32'), model.codes)), 1);
        return reduce === 'sum' ? tf.sum(tf.reshape(picked, [B, T]), 1) : picked;
      });
      out.set(ll.dataSync(), s * width);
      ll.dispose();
    } finally {
      tf.dispose([bias, ...cross.flatMap((c) => [c.kT, c.v])]);
    }
  }
  return out;
}

/**
 * The default scorer: how much the caption raises the model's likelihood of the image tokens,
 * log p(tokens | caption) - log p(tokens | empty caption), in nats. It prefers candidates that
 * the caption explains over ones any caption would produce.
 */
export class CaptionLikelihoodScorer implements Scorer {
  readonly name = 'caption-likelihood';
  constructor(private readonly runner: PartiRunner) {}

  async score(prompt: string, candidates: readonly RerankCandidate[]): Promise<number[]> {
    const toks = candidates.map((c) => c.tokens);
    const cond = tokenLogLikelihoods(this.runner, toks.map(() => prompt), toks);
    const uncond = tokenLogLikelihoods(this.runner, toks.map(() => ''), toks);
    return toks.map((_, i) => cond[i]! - uncond[i]!);
  }
}

/**
 * Indices of the `keep` best scores, best first; ties keep the earlier candidate. NaN scores
 * rank last.
 */
export function bestIndices(scores: readonly number[], keep: number): number[] {
  const key = (i: number) => (Number.isNaN(scores[i]!) ? -Infinity : scores[i]!);
  return scores
    .map((_, i) => i)
    .sort((a, b) => key(b) - key(a) || a - b)
    .slice(0, keep);
}
