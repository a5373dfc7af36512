import { PartiError } from '../errors.ts';
import { hashInts, hashName } from '../model/rng.ts';

/**
 * How one image token is chosen from the model's logits, in plain JavaScript with float64
 * arithmetic and no tfjs: the contract that `parti generate` (tfjs) and `parti serve` (ONNX
 * Runtime) share so that the same prompt, settings and seed give the same image.
 *
 * For prompt p, sample s and image-token position t (all 0-based):
 *
 *   u = samplerUniform(seed, p, s, t)            // = hashInts(seed, p, s, t, SAMPLER_SITE) / 2^32
 *   z[v] = guided logit of code v, in float64:    cond[v] when cfg = 1, else
 *          uncond[v] + cfg * (cond[v] - uncond[v])
 *   token = chooseToken(z, settings, u)
 *
 * chooseToken, step by step (sums of kept weights run in ascending code order, except the
 * running sum of step 4):
 *   1. z[v] /= temperature. A NaN or +Infinity logit is an error (PartiError 'checkpoint').
 *   2. top-k (k > 0 and k < V): keep the k codes with the largest z (ties: smaller code first).
 *   3. w[v] = exp(z[v] - max kept z).
 *   4. top-p (p < 1): order the kept codes by w descending (ties: smaller code first); keep the
 *      shortest prefix whose running sum of w reaches p * (sum of kept w).
 *   5. Draw: target = u * (sum of kept w); walk the kept codes in ascending order adding w;
 *      the first code whose running sum exceeds target is the token (the last kept one if
 *      rounding leaves none).
 *
 * Prompt index p is the prompt's position in the request (or prompt file) and s the sample's
 * (candidate's, when reranking) index, so a prompt's images do not depend on how prompts are
 * batched.
 */

/** Sampler settings that decide which token is drawn. */
export interface TokenChoiceSettings {
  /** Softmax temperature, > 0. */
  temperature: number;
  /** Keep the k most likely codes; 0 keeps all. */
  topK: number;
  /** Nucleus: keep the most likely codes whose probability adds up to p, in (0, 1]; 1 keeps all. */
  topP: number;
}

/** Names the sampler's random stream (so it never coincides with dropout's). */
export const SAMPLER_SITE = hashName('sampler');

/** The uniform number in [0, 1) that draws token t of sample s of prompt p. */
export function samplerUniform(seed: number, prompt: number, sample: number, token: number): number {
  return hashInts(seed, prompt, sample, token, SAMPLER_SITE) / 4294967296;
}

/**
 * Classifier-free guidance into `out` (float64): out[v] = uncond[v] + scale * (cond[v] - uncond[v]),
 * or cond[v] when `uncond` is null.
 */
export function guidedLogits(cond: ArrayLike<number>, uncond: ArrayLike<number> | null, scale: number, out: Float64Array): Float64Array {
  const V = out.length;
  if (!uncond) for (let v = 0; v < V; v++) out[v] = cond[v]!;
  else
    for (let v = 0; v < V; v++) {
      const u = uncond[v]!;
      out[v] = u + scale * (cond[v]! - u);
    }
  return out;
}

/**
 * The first n of `codes` (ascending; null: every code of `values`) in the order value descending,
 * ties by code ascending, returned in ascending code order. `sorted` holds the same codes' values
 * ascending (a native numeric sort, no comparator), so the n-th largest value t and how many of
 * the n equal t can be read from it; the result is every code above t and the smallest codes
 * equal to t, which is exactly that prefix.
 */
function firstByValue(values: Float64Array, codes: Int32Array | null, n: number, sorted: Float64Array): Int32Array {
  const first = sorted.length - n;
  const t = sorted[first]!;
  let end = first;
  while (end < sorted.length && sorted[end] === t) end++;
  let ties = end - first;
  const out = new Int32Array(n);
  let i = 0;
  const count = codes ? codes.length : values.length;
  for (let j = 0; j < count; j++) {
    const v = codes ? codes[j]! : j;
    const x = values[v]!;
    if (x > t || (x === t && ties-- > 0)) out[i++] = v;
  }
  return out;
}

/** The values of `codes` (null: all of them), sorted ascending. */
function sortedValues(values: Float64Array, codes: Int32Array | null): Float64Array {
  if (!codes) return values.slice().sort();
  const out = new Float64Array(codes.length);
  codes.forEach((v, i) => (out[i] = values[v]!));
  return out.sort();
}

/**
 * Chooses a code from float64 logits `z` (modified in place: divided by the temperature) with the
 * uniform number `u` in [0, 1), as the module comment specifies.
 */
export function chooseToken(z: Float64Array, settings: TokenChoiceSettings, u: number): number {
  const V = z.length;
  const invT = 1 / settings.temperature;
  for (let v = 0; v < V; v++) {
    const x = (z[v] = z[v]! * invT);
    // NaN or +Infinity (a diverged model) would otherwise be drawn silently as some fixed code;
    // -Infinity is a code of probability 0.
    if (x !== x || x === Infinity) throw new PartiError('checkpoint', `sampler: the model's logit for code ${v} is ${x}: its weights may have diverged`);
  }
  let kept: Int32Array | null = null;
  if (settings.topK > 0 && settings.topK < V) kept = firstByValue(z, null, settings.topK, sortedValues(z, null));
  let max = -Infinity;
  if (kept) for (const v of kept) max = Math.max(max, z[v]!);
  else for (let v = 0; v < V; v++) max = Math.max(max, z[v]!);
  const w = new Float64Array(V);
  let total = 0;
  if (kept) for (const v of kept) total += w[v] = Math.exp(z[v]! - max);
  else for (let v = 0; v < V; v++) total += w[v] = Math.exp(z[v]! - max);
  if (settings.topP < 1) {
    // Running sum of w from the largest down (step 4): sorted ascending, so walk from the end.
    const sorted = sortedValues(w, kept);
    const goal = settings.topP * total;
    let acc = 0;
    let n = 0;
    while (n < sorted.length) {
      acc += sorted[sorted.length - 1 - n]!;
      n++;
      if (acc >= goal) break;
    }
    kept = firstByValue(w, kept, n, sorted);
    total = 0;
    for (const v of kept) total += w[v]!;
  }
  const target = u * total;
  let acc = 0;
  if (kept) {
    for (const v of kept) {
      acc += w[v]!;
      if (target < acc) return v;
    }
    return kept[kept.length - 1]!;
  }
  for (let v = 0; v < V; v++) {
    acc += w[v]!;
    if (target < acc) return v;
  }
  // Rounding left no code: the last one with weight.
  for (let v = V - 1; v >= 0; v--) if (w[v]! > 0) return v;
  return V - 1;
}

/** Settings of one sampling run (`parti generate` and `parti serve` share them). */
export interface DrawSettings extends TokenChoiceSettings {
  /** Classifier-free guidance scale; 1 = off. */
  cfg: number;
  seed: number;
}

/** Which random stream a batch row draws from. */
export interface RowKey {
  prompt: number;
  sample: number;
}

/**
 * Chooses image token t for every row of a sampling batch from the decoder's logits
 * `[rows.length * (guided ? 2 : 1), V]` (float32, row-major): conditional rows first, then,
 * under guidance (cfg != 1), the unconditional row of each in the same order. Returns one token
 * per conditional row; the unconditional row of each gets the same token.
 */
export function chooseBatchTokens(logits: Float32Array, V: number, rows: readonly RowKey[], settings: DrawSettings, t: number): Int32Array {
  const n = rows.length;
  const guided = settings.cfg !== 1;
  const z = new Float64Array(V);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    guidedLogits(logits.subarray(i * V, (i + 1) * V), guided ? logits.subarray((n + i) * V, (n + i + 1) * V) : null, settings.cfg, z);
    out[i] = chooseToken(z, settings, samplerUniform(settings.seed, rows[i]!.prompt, rows[i]!.sample, t));
  }
  return out;
}
