import type { OptimizerConfig, ScheduleConfig } from '../config/training-schema.ts';
import { PartiError } from '../errors.ts';
import type { ParamLayout } from './param-layout.ts';

/**
 * Optimizers over the flat parameter vector, on the host, in a fixed order: the same inputs give
 * bitwise the same parameters on every process. An optimizer owns an element range [start, end)
 * of the vector (the whole vector by default): with optimizer-state sharding (ZeRO-1) rank r
 * creates its optimizer over `layout.shardRanges(N)[r]`, updates only that slice, and the ranks
 * all-gather the parameters afterwards.
 */

/** Learning rate at `step` (0-based) of a stage of `totalSteps`: linear warm-up, then decay. */
export function learningRate(step: number, totalSteps: number, peak: number, s: ScheduleConfig): number {
  const warm = s.warmupSteps;
  if (warm > 0 && step < warm) return (peak * (step + 1)) / warm;
  const progress = Math.min(1, Math.max(0, (step - warm) / Math.max(1, totalSteps - warm)));
  switch (s.decay) {
    case 'constant':
      return peak;
    case 'linear':
      return peak * (1 - (1 - s.minLrRatio) * progress);
    case 'cosine':
      return peak * (s.minLrRatio + (1 - s.minLrRatio) * 0.5 * (1 + Math.cos(Math.PI * progress)));
    case 'rsqrt':
      return peak * Math.sqrt(Math.max(1, warm) / Math.max(step + 1, warm, 1));
  }
}

/**
 * Global L2 norm of a gradient, accumulated in float64 in index order (deterministic), and
 * whether every element is finite.
 */
export function gradientNorm(grads: Float32Array): { norm: number; finite: boolean } {
  let sum = 0;
  for (let i = 0; i < grads.length; i++) {
    const g = grads[i]!;
    sum += g * g;
  }
  const finite = Number.isFinite(sum);
  return { norm: Math.sqrt(sum), finite };
}

/** The factor that clips a gradient of norm `norm` to `maxNorm` (1 when no clipping is needed or maxNorm is 0). */
export function clipScale(norm: number, maxNorm: number): number {
  return maxNorm > 0 && norm > maxNorm ? maxNorm / norm : 1;
}

/** Optimizer state as plain arrays and JSON: for checkpoints and for handing to a joining worker. */
export interface OptimizerState {
  type: OptimizerConfig['type'];
  /** Updates applied so far (bias correction / Adafactor's decay schedule use it). */
  updates: number;
  range: [number, number];
  /** Named state arrays (moments), each covering the range or factored statistics. */
  slots: Record<string, Float32Array>;
}

/** Options of one update. */
export interface UpdateOptions {
  /** Learning rate of this step (from `learningRate`). */
  lr: number;
  /** Multiplies the gradient first (global-norm clipping; also 1/batch when given sums). */
  gradScale?: number;
}

export interface Optimizer {
  readonly range: readonly [number, number];
  /**
   * Updates params[start, end) in place. `grads` is either the whole flat gradient (absolute
   * offsets) or exactly the range's slice.
   */
  update(params: Float32Array, grads: Float32Array, opts: UpdateOptions): void;
  exportState(): OptimizerState;
  importState(state: OptimizerState): void;
  /**
   * Optional: the live state, without copying (a checkpoint snapshot copies it into a buffer it
   * reuses). Only valid until the next update; callers must not keep or change the arrays.
   */
  peekState?(): OptimizerState;
}

/** Creates the optimizer a stage config names, over `range` (default: all parameters). */
export function createOptimizer(cfg: OptimizerConfig, layout: ParamLayout, range: [number, number] = [0, layout.size]): Optimizer {
  if (range[0] < 0 || range[1] > layout.size || range[0] > range[1]) {
    throw new PartiError('internal', `optimizer range [${range}] outside the ${layout.size} parameters`);
  }
  return cfg.type === 'adamw' ? new AdamW(cfg, layout, range) : new Adafactor(cfg, layout, range);
}

function gradView(grads: Float32Array, range: readonly [number, number], total: number): { g: Float32Array; base: number } {
  if (grads.length === total) return { g: grads, base: 0 };
  if (grads.length === range[1] - range[0]) return { g: grads, base: range[0] };
  throw new PartiError('internal', `gradient has ${grads.length} floats; expected ${total} or the range's ${range[1] - range[0]}`);
}

/** Entries overlapping the range, with the overlap. */
function pieces(layout: ParamLayout, range: readonly [number, number]) {
  const out: { start: number; end: number; decay: boolean; entry: ParamLayout['entries'][number] }[] = [];
  for (const e of layout.entries) {
    const start = Math.max(range[0], e.offset);
    const end = Math.min(range[1], e.offset + e.size);
    if (start < end) out.push({ start, end, decay: e.decay, entry: e });
  }
  return out;
}

class AdamW implements Optimizer {
  private m: Float32Array;
  private v: Float32Array;
  private updates = 0;
  constructor(
    private readonly cfg: Extract<OptimizerConfig, { type: 'adamw' }>,
    private readonly layout: ParamLayout,
    readonly range: [number, number],
  ) {
    // Shared memory (no cost otherwise): a worker's checkpoint upload thread can copy the moments
    // while the next step computes (peekState).
    this.m = new Float32Array(new SharedArrayBuffer((range[1] - range[0]) * 4));
    this.v = new Float32Array(new SharedArrayBuffer((range[1] - range[0]) * 4));
  }

  update(params: Float32Array, grads: Float32Array, opts: UpdateOptions): void {
    const { g, base } = gradView(grads, this.range, this.layout.size);
    const { beta1, beta2, eps, weightDecay } = this.cfg;
    const scale = opts.gradScale ?? 1;
    const t = ++this.updates;
    const c1 = 1 - beta1 ** t;
    const c2 = 1 - beta2 ** t;
    const lr = opts.lr;
    const r0 = this.range[0];
    const m = this.m;
    const v = this.v;
    for (const piece of pieces(this.layout, this.range)) {
      const wd = piece.decay ? weightDecay : 0;
      for (let i = piece.start; i < piece.end; i++) {
        const gi = g[i - base]! * scale;
        const s = i - r0;
        const mi = (m[s] = beta1 * m[s]! + (1 - beta1) * gi);
        const vi = (v[s] = beta2 * v[s]! + (1 - beta2) * gi * gi);
        const p = params[i]!;
        params[i] = p - lr * (mi / c1 / (Math.sqrt(vi / c2) + eps) + wd * p);
      }
    }
  }

  exportState(): OptimizerState {
    return { type: 'adamw', updates: this.updates, range: [...this.range], slots: { m: this.m.slice(), v: this.v.slice() } };
  }

  peekState(): OptimizerState {
    return { type: 'adamw', updates: this.updates, range: [...this.range], slots: { m: this.m, v: this.v } };
  }

  importState(s: OptimizerState): void {
    checkState(s, 'adamw', this.range);
    this.updates = s.updates;
    this.m = new Float32Array(new SharedArrayBuffer(s.slots.m!.length * 4));
    this.m.set(s.slots.m!);
    this.v = new Float32Array(new SharedArrayBuffer(s.slots.v!.length * 4));
    this.v.set(s.slots.v!);
  }
}

function checkState(s: OptimizerState, type: string, range: readonly [number, number]): void {
  if (s.type !== type || s.range[0] !== range[0] || s.range[1] !== range[1]) {
    throw new PartiError('checkpoint', `optimizer state is ${s.type} over [${s.range}], expected ${type} over [${range}]`);
  }
}

/**
 * Adafactor (Shazeer & Stern, 2018): factored second moments (row and column means) for matrices,
 * full for vectors; decay 1 - t^-decayRate; update clipping by RMS; optional momentum (beta1);
 * decoupled weight decay. The learning rate is absolute (from the schedule), and scaled by the
 * parameter's RMS (floored at eps2) only when `scaleParameter` is set. Requires its range to fall on
 * parameter boundaries (`layout.shardRanges`).
 */
class Adafactor implements Optimizer {
  private slots: Record<string, Float32Array> = {};
  private updates = 0;
  private readonly entries: ParamLayout['entries'][number][];
  constructor(
    private readonly cfg: Extract<OptimizerConfig, { type: 'adafactor' }>,
    private readonly layout: ParamLayout,
    readonly range: [number, number],
  ) {
    this.entries = [];
    for (const piece of pieces(layout, range)) {
      const e = piece.entry;
      if (piece.start !== e.offset || piece.end !== e.offset + e.size) {
        throw new PartiError('internal', `adafactor range [${range}] cuts parameter ${e.name}; use layout.shardRanges()`);
      }
      this.entries.push(e);
      if (e.shape.length >= 2) {
        const cols = e.shape[e.shape.length - 1]!;
        this.slots[`${e.name}.vr`] = new Float32Array(e.size / cols);
        this.slots[`${e.name}.vc`] = new Float32Array(cols);
      } else this.slots[`${e.name}.v`] = new Float32Array(e.size);
      if (cfg.beta1 > 0) this.slots[`${e.name}.m`] = new Float32Array(e.size);
    }
  }

  update(params: Float32Array, grads: Float32Array, opts: UpdateOptions): void {
    const { g, base } = gradView(grads, this.range, this.layout.size);
    const { beta1, decayRate, eps1, eps2, clipThreshold, weightDecay, scaleParameter } = this.cfg;
    const scale = opts.gradScale ?? 1;
    const t = ++this.updates;
    const beta2t = 1 - t ** -decayRate;
    for (const e of this.entries) {
      const n = e.size;
      const off = e.offset;
      const u = new Float64Array(n);
      if (e.shape.length >= 2) {
        const cols = e.shape[e.shape.length - 1]!;
        const rows = n / cols;
        const vr = this.slots[`${e.name}.vr`]!;
        const vc = this.slots[`${e.name}.vc`]!;
        const rowSum = new Float64Array(rows);
        const colSum = new Float64Array(cols);
        for (let r = 0; r < rows; r++)
          for (let c = 0; c < cols; c++) {
            const gi = g[off + r * cols + c - base]! * scale;
            const g2 = gi * gi + eps1;
            rowSum[r] += g2;
            colSum[c] += g2;
          }
        let vrMean = 0;
        for (let r = 0; r < rows; r++) {
          vr[r] = beta2t * vr[r]! + (1 - beta2t) * (rowSum[r]! / cols);
          vrMean += vr[r]!;
        }
        vrMean /= rows;
        for (let c = 0; c < cols; c++) vc[c] = beta2t * vc[c]! + (1 - beta2t) * (colSum[c]! / rows);
        for (let r = 0; r < rows; r++)
          for (let c = 0; c < cols; c++) {
            const vhat = (vr[r]! * vc[c]!) / vrMean;
            u[r * cols + c] = (g[off + r * cols + c - base]! * scale) / Math.sqrt(vhat);
          }
      } else {
        const v = this.slots[`${e.name}.v`]!;
        for (let i = 0; i < n; i++) {
          const gi = g[off + i - base]! * scale;
          v[i] = beta2t * v[i]! + (1 - beta2t) * (gi * gi + eps1);
          u[i] = gi / Math.sqrt(v[i]!);
        }
      }
      let ss = 0;
      for (let i = 0; i < n; i++) ss += u[i]! * u[i]!;
      const rmsU = Math.sqrt(ss / n);
      const denom = Math.max(1, rmsU / clipThreshold);
      let lr = opts.lr;
      if (scaleParameter) {
        let ps = 0;
        for (let i = 0; i < n; i++) ps += params[off + i]! * params[off + i]!;
        lr *= Math.max(eps2, Math.sqrt(ps / n));
      }
      const m = this.slots[`${e.name}.m`];
      const wd = e.decay ? weightDecay : 0;
      for (let i = 0; i < n; i++) {
        let step = u[i]! / denom;
        if (m) step = m[i] = beta1 * m[i]! + (1 - beta1) * step;
        const p = params[off + i]!;
        params[off + i] = p - lr * step - opts.lr * wd * p;
      }
    }
  }

  exportState(): OptimizerState {
    const slots: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(this.slots)) slots[k] = v.slice();
    return { type: 'adafactor', updates: this.updates, range: [...this.range], slots };
  }

  importState(s: OptimizerState): void {
    checkState(s, 'adafactor', this.range);
    for (const k of Object.keys(this.slots)) {
      const v = s.slots[k];
      if (!v || v.length !== this.slots[k]!.length) throw new PartiError('checkpoint', `adafactor state slot ${k} missing or wrong size`);
      this.slots[k] = Float32Array.from(v);
    }
    this.updates = s.updates;
  }
}
