import * as tf from '@tensorflow/tfjs';
import type { ParamLayout, ParamTensors } from './param-layout.ts';

/**
 * The contract between a model and whatever trains it (one process here; ring all-reduce and
 * optimizer-state sharding in a cluster).
 *
 * - Parameters live in ONE flat Float32Array (the master copy) in the fixed order of `layout`
 *   (name, shape, offset per tensor). The trainer owns it; the optimizer updates it in place.
 * - `computeGradients(batch, {step, seed})` uploads the current parameters, runs forward and
 *   backward, and returns `grads` in the same flat layout, as the SUM over the batch's samples
 *   (not the mean). Ranks all-reduce sums and divide by the global batch size; gradient
 *   accumulation over micro-batches is adding. `loss` is likewise the sum of per-sample losses.
 * - Randomness (dropout, condition dropout) is a function of (seed, step, sample id), where the
 *   sample id is the sample's index in the data set, so it does not depend on which process or
 *   micro-batch runs it.
 * - `aux` holds further per-batch sums a trainer may all-reduce (named, flat Float32Arrays), e.g.
 *   the tokenizer's codebook usage counts.
 */
export interface Trainable<TBatch extends { ids: readonly number[] }> {
  readonly layout: ParamLayout;
  computeGradients(params: Float32Array, batch: TBatch, opts: GradientOptions): GradientResult;
}

/** Which step and seed a gradient is for (dropout masks depend on both). */
export interface GradientOptions {
  step: number;
  seed: number;
}

/** Gradients and losses of one (micro-)batch, all as sums over its samples. */
export interface GradientResult {
  /** Sum over samples of each sample's loss. Divide by `samples` for the mean. */
  loss: number;
  /** Flat gradient in the layout's order: sum over samples of d(sample loss)/d(param). */
  grads: Float32Array;
  /** Samples in the batch. */
  samples: number;
  /** Tokens the batch trained on (image tokens for Parti, patches for the tokenizer). */
  tokens: number;
  /** Other per-sample sums (named losses, reported as sums too) for logging. */
  metrics: Record<string, number>;
  /** Further sum-reducible arrays (e.g. `codeCounts`). */
  aux: Record<string, Float32Array>;
}

/**
 * Runs `lossFn` (which returns a scalar sum over samples) on parameters uploaded from `params`
 * and returns the loss and the flat gradient. Tensors the loss function wants to hand out besides
 * the loss (metrics) go through `keep` and are read after the backward pass.
 */
export function flatGradients(
  layout: ParamLayout,
  params: Float32Array,
  lossFn: (p: ParamTensors, keep: (name: string, t: tf.Tensor) => void) => tf.Scalar,
): { loss: number; grads: Float32Array; kept: Map<string, Float32Array | Int32Array | Uint8Array> } {
  const tensors = layout.toTensors(params);
  const keptTensors = new Map<string, tf.Tensor>();
  try {
    const names = layout.entries.map((e) => e.name);
    const xs = names.map((n) => tensors.get(n)!);
    const { value: lossT, grads: gradTs } = tf.tidy(() => {
      const f = (...args: tf.Tensor[]) => {
        const m = new Map<string, tf.Tensor>();
        names.forEach((n, i) => m.set(n, args[i]!));
        return lossFn(m, (name, t) => keptTensors.set(name, tf.keep(t)));
      };
      // allowNoGradients: a part that does not feed the loss this step (the discriminator before
      // its start step) gets null: its slice of the flat gradient stays zero.
      return tf.engine().gradients(() => f(...xs) as tf.Tensor, xs, undefined, true);
    });
    // Each gradient is read straight into its slice of the flat array: no concat kernel and no
    // second copy of the whole gradient on the backend.
    const grads = new Float32Array(layout.size);
    let loss: number;
    try {
      layout.entries.forEach((e, i) => {
        const g = gradTs[i];
        if (g) grads.set(g.dataSync() as Float32Array, e.offset);
      });
      loss = lossT.dataSync()[0]!;
    } finally {
      lossT.dispose();
      for (const g of gradTs) g?.dispose();
    }
    const kept = new Map<string, Float32Array | Int32Array | Uint8Array>();
    for (const [k, t] of keptTensors) kept.set(k, t.dataSync() as Float32Array | Int32Array | Uint8Array);
    return { loss, grads, kept };
  } finally {
    for (const t of tensors.values()) t.dispose();
    for (const t of keptTensors.values()) t.dispose();
  }
}
