/**
 * What the worker runtime needs from a model: a flat float32 parameter vector, summed gradients
 * over a list of samples, and an optimizer that can own all of the parameters or only a range of
 * them (ZeRO stage 1). The real Parti model and the linear-regression test model both implement it;
 * the runtime never looks inside.
 */

/** Gradients of a list of samples: SUMS (not means), so that ranks and microbatches add up. */
export interface GradientResult {
  /** Sum over the samples of the per-sample loss. */
  lossSum: number;
  /** Sum over the samples of the gradient, flat, length `paramCount`. */
  grads: Float32Array;
  /** Samples that contributed (bad samples skipped by the reader are not counted). */
  samples: number;
  /** Tokens that contributed (for throughput), 0 when not meaningful. */
  tokens: number;
  /** Samples the data reader skipped (bad samples, not in the sums), by reason; absent: none. */
  skipped?: Record<string, number>;
}

/** Samples to compute: refs of the epoch plan and their indices in the data set. */
export interface SampleBatch {
  refs: readonly { epoch: number; shard: number; ordinal: number }[];
  /** ids[i] is the index of refs[i] in the data set (per-sample randomness keys on it). */
  ids: readonly number[];
}

/** Optimizer state of a range, flat: what a checkpoint or a joining peer takes. */
export interface OptimizerSnapshot {
  /** Updates applied so far (bias correction). */
  updates: number;
  /** `slots * (end - start)` floats, slot-major (all m, then all v). */
  state: Float32Array;
}

/** Where a step is, for schedules and per-step randomness (dropout). */
export interface StepContext {
  /** The optimizer step being computed (parameters go from version `step` to `step + 1`). */
  step: number;
  /** The training seed, the same on every rank (models mix in the step and sample ids). */
  seed: number;
}

/** The optimizer state of a contiguous range [start, end) of the flat parameters. */
export interface OptimizerShard {
  readonly start: number;
  readonly end: number;
  /** Float32 state values per parameter (AdamW: 2, m and v); exportState is slot-major. */
  readonly slots: number;
  /**
   * Updates `params[start, end)` in place with the MEAN gradient of that range (`grad.length ===
   * end - start`) for optimizer step `step`; returns the learning rate used.
   */
  apply(params: Float32Array, grad: Float32Array, step: number): number;
  /** Optional: the learning rate apply() uses at optimizer step `step` (step reports carry it). */
  learningRate?(step: number): number;
  /** Bytes of optimizer state held (for the ZeRO report). */
  stateBytes(): number;
  /**
   * The state as one flat vector of `slots * (end - start)` floats, slot-major (all m, then all v),
   * so that any range of it can be cut out (checkpoints, handing it to a joining peer).
   */
  exportState(): OptimizerSnapshot;
  /**
   * Optional: writes what exportState would return into `target` (`slots * (end - start)` floats)
   * without allocating, and returns the update count. A checkpoint snapshot uses it to copy the
   * state into a host buffer it reuses; without it the runtime copies exportState()'s result.
   */
  exportStateInto?(target: Float32Array): number;
  /**
   * Optional: the live state without a copy: the slot arrays in slot-major order (each
   * `end - start` floats) and the update count. Valid until the next apply() or importState().
   * When the arrays (and the model's parameters) are in shared memory (SharedArrayBuffer), a
   * checkpoint's upload thread copies them while the next step computes. Undefined: not available.
   */
  liveState?(): { updates: number; slots: readonly Float32Array[] } | undefined;
  /** Restores what exportState returned for the same range. */
  importState(snapshot: OptimizerSnapshot): void;
}

/** A model the worker can train data-parallel. */
export interface Trainable {
  /** Number of float32 parameters. */
  readonly paramCount: number;
  /** Clip the mean gradient to this global L2 norm; 0 = off. */
  readonly clipNorm: number;
  /** The flat parameters (the live vector; the runtime updates it in place and then calls `paramsChanged`). */
  params(): Float32Array;
  /** Tells the model that `params()` was written (e.g. to rebuild tensors). */
  paramsChanged(): void;
  /** Summed gradients of these samples (bad samples are skipped and not counted). */
  computeGradients(batch: SampleBatch, ctx: StepContext): Promise<GradientResult>;
  /** Creates the optimizer state of range [start, end), freshly initialized. */
  createOptimizer(start: number, end: number): OptimizerShard;
  /** Boundaries of `parts` contiguous ranges covering all parameters (ZeRO-1: rank r owns ranges[r]). */
  shardRanges(parts: number): [number, number][];
  /** Releases tensors and handles. */
  dispose(): void;
}

/** Splits [0, size) into `parts` contiguous ranges of about equal size. */
export function evenRanges(size: number, parts: number): [number, number][] {
  const out: [number, number][] = [];
  for (let p = 0; p < parts; p++) out.push([Math.floor((p * size) / parts), Math.floor(((p + 1) * size) / parts)]);
  return out;
}
