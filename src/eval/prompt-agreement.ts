import { PartiError } from '../errors.ts';
import type { LabelScheme } from './label-scheme.ts';

/** Shares in [0, 1] of images whose predicted labels match the target labels. */
export interface Agreement {
  /** Images scored. */
  images: number;
  /** Per head (color1, shape1, ...). */
  heads: Record<string, number>;
  /** Per attribute (all of its heads right): color, shape, position; or caption. */
  attributes: Record<string, number>;
  /** Every head right: the whole prompt. */
  whole: number;
}

/**
 * How often `predicted[i]` agrees with `target[i]` (one class index per head of `scheme`), per
 * head, per attribute and for the whole prompt. Used for prompt agreement (targets from the
 * prompts of generated images), probe accuracy (targets from real captions) and CAS.
 */
export function agreement(scheme: LabelScheme, predicted: readonly (readonly number[])[], target: readonly (readonly number[])[]): Agreement {
  if (predicted.length !== target.length) throw new PartiError('internal', `agreement: ${predicted.length} predictions for ${target.length} targets`);
  const n = predicted.length;
  const headIndex = new Map(scheme.heads.map((h, i) => [h.name, i]));
  const heads: Record<string, number> = {};
  const attributes: Record<string, number> = {};
  let whole = 0;
  const headRight = scheme.heads.map(() => 0);
  const attrRight = Object.keys(scheme.attributes).map(() => 0);
  for (let i = 0; i < n; i++) {
    const ok = scheme.heads.map((_, k) => predicted[i]![k] === target[i]![k]);
    ok.forEach((r, k) => (headRight[k]! += r ? 1 : 0));
    Object.values(scheme.attributes).forEach((names, a) => {
      if (names.every((name) => ok[headIndex.get(name)!])) attrRight[a]! += 1;
    });
    if (ok.every(Boolean)) whole++;
  }
  const share = (k: number) => (n === 0 ? 0 : k / n);
  scheme.heads.forEach((h, k) => (heads[h.name] = share(headRight[k]!)));
  Object.keys(scheme.attributes).forEach((name, a) => (attributes[name] = share(attrRight[a]!)));
  return { images: n, heads, attributes, whole: share(whole) };
}

/** Readable labels of one prediction: head name -> class name. */
export function describeLabels(scheme: LabelScheme, labels: readonly number[]): Record<string, string> {
  const out: Record<string, string> = {};
  scheme.heads.forEach((h, k) => (out[h.name] = h.classes[labels[k]!] ?? '?'));
  return out;
}
