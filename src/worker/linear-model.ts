/**
 * A small deterministic model behind the Trainable interface, for testing the orchestration fast:
 * linear regression y = w·x + b on inputs generated from (seed, sample index), trained with Adam.
 * Every operation is float32 and in a fixed order, so results are bitwise reproducible, and the
 * optimizer is elementwise, so a range of it (ZeRO-1) computes exactly what the whole would.
 */
import { mixSeed } from '../data/seeded-random.ts';
import { evenRanges, type GradientResult, type OptimizerShard, type OptimizerSnapshot, type SampleBatch, type StepContext, type Trainable } from './trainable.ts';

/** Options of the linear test model (runtime.testModel in the config). */
export interface LinearModelOptions {
  /** Number of inputs. */
  dim: number;
  /** Data and initialization seed. */
  seed: number;
  /** Adam learning rate. */
  lr: number;
  /** Samples whose gradient is NaN (to test that non-finite steps are skipped everywhere). */
  nonFiniteSamples?: readonly number[];
  /** Busy time per sample, to make steps long enough to kill a worker in the middle of one. */
  stepDelayMs?: number;
}

/** Zeroed float32 array in shared memory. */
function sharedFloats(n: number): Float32Array {
  return new Float32Array(new SharedArrayBuffer(n * 4));
}

function uniform(seed: number, i: number, j: number): number {
  return (mixSeed(seed, i, j) / 0x100000000) * 2 - 1;
}

/** The input vector and target of sample `index`. */
export function linearSample(index: number, dim: number, seed: number): { x: Float32Array; y: number } {
  const x = new Float32Array(dim);
  let y = 0.5;
  for (let j = 0; j < dim; j++) {
    x[j] = uniform(seed, index, j);
    y += Math.sin(j + 1) * x[j]!;
  }
  y += 0.01 * uniform(seed ^ 0x5bd1e995, index, 0);
  return { x, y: Math.fround(y) };
}

class AdamShard implements OptimizerShard {
  readonly slots = 2;
  readonly m: Float32Array;
  readonly v: Float32Array;
  constructor(
    readonly start: number,
    readonly end: number,
    private readonly lr: number,
  ) {
    // shared memory, as a real model's: checkpoints copy it on the upload thread
    this.m = sharedFloats(end - start);
    this.v = sharedFloats(end - start);
  }
  private updates = 0;
  apply(params: Float32Array, grad: Float32Array, _step: number): number {
    const b1 = 0.9;
    const b2 = 0.999;
    const t = ++this.updates;
    const c1 = 1 - b1 ** t;
    const c2 = 1 - b2 ** t;
    for (let i = 0; i < grad.length; i++) {
      const g = grad[i]!;
      this.m[i] = b1 * this.m[i]! + (1 - b1) * g;
      this.v[i] = b2 * this.v[i]! + (1 - b2) * g * g;
      const update = (this.lr * (this.m[i]! / c1)) / (Math.sqrt(this.v[i]! / c2) + 1e-8);
      params[this.start + i] = params[this.start + i]! - update;
    }
    return this.lr;
  }
  learningRate(_step: number): number {
    return this.lr;
  }
  stateBytes(): number {
    return this.m.byteLength + this.v.byteLength;
  }
  exportState(): OptimizerSnapshot {
    const state = new Float32Array(this.m.length * 2);
    return { updates: this.exportStateInto(state), state };
  }
  liveState(): { updates: number; slots: readonly Float32Array[] } {
    return { updates: this.updates, slots: [this.m, this.v] };
  }
  exportStateInto(target: Float32Array): number {
    target.set(this.m, 0);
    target.set(this.v, this.m.length);
    return this.updates;
  }
  importState(snapshot: OptimizerSnapshot): void {
    this.updates = snapshot.updates;
    this.m.set(snapshot.state.subarray(0, this.m.length));
    this.v.set(snapshot.state.subarray(this.m.length, this.m.length * 2));
  }
}

/** Linear regression with `dim` weights and a bias (the last parameter). */
export class LinearModel implements Trainable {
  readonly paramCount: number;
  readonly clipNorm = 0;
  private readonly flat: Float32Array;
  private readonly bad: Set<number>;

  constructor(private readonly options: LinearModelOptions) {
    this.paramCount = options.dim + 1;
    this.flat = sharedFloats(this.paramCount);
    for (let j = 0; j < options.dim; j++) this.flat[j] = 0.1 * uniform(options.seed ^ 0x1234567, 0, j);
    this.bad = new Set(options.nonFiniteSamples ?? []);
  }

  params(): Float32Array {
    return this.flat;
  }

  paramsChanged(): void {}

  async computeGradients(batch: SampleBatch, _ctx: StepContext): Promise<GradientResult> {
    const { dim, seed } = this.options;
    const grads = new Float32Array(this.paramCount);
    let lossSum = 0;
    const samples = batch.ids;
    for (const index of samples) {
      const { x, y } = linearSample(index, dim, seed);
      let pred = this.flat[dim]!;
      for (let j = 0; j < dim; j++) pred += this.flat[j]! * x[j]!;
      const err = this.bad.has(index) ? Number.NaN : Math.fround(pred - y);
      lossSum += 0.5 * err * err;
      for (let j = 0; j < dim; j++) grads[j] = grads[j]! + err * x[j]!;
      grads[dim] = grads[dim]! + err;
      if (this.options.stepDelayMs) await new Promise((r) => setTimeout(r, this.options.stepDelayMs));
    }
    return { lossSum, grads, samples: samples.length, tokens: 0 };
  }

  createOptimizer(start: number, end: number): OptimizerShard {
    return new AdamShard(start, end, this.options.lr);
  }

  shardRanges(parts: number): [number, number][] {
    return evenRanges(this.paramCount, parts);
  }

  dispose(): void {}
}
