/**
 * Which samples each optimizer step consumes, and which of them each rank computes. The order of an
 * epoch is a function of (seed, epoch) alone; the global batch is fixed; step s always takes the
 * same samples, whatever the world size, so redoing a step after a failure never repeats or loses
 * a sample (exactly once by construction, proved by the ledger).
 */
import { mixSeed } from '../data/seeded-random.ts';
import { PartiError } from '../errors.ts';

/** The samples of one optimizer step. */
export interface StepSamples {
  /** The pass over the data set these samples belong to. */
  dataEpoch: number;
  /** Global sample indices, in order. */
  samples: number[];
}

/** The order of the data set for one epoch: a Fisher-Yates shuffle seeded by (seed, epoch). */
function epochOrder(size: number, seed: number, epoch: number): Uint32Array {
  const order = new Uint32Array(size);
  for (let i = 0; i < size; i++) order[i] = i;
  for (let i = size - 1; i > 0; i--) {
    const j = mixSeed(seed, epoch, i) % (i + 1);
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  return order;
}

/**
 * The step plan: `size` samples, global batch `batch`, epochs of floor(size / batch) steps (the
 * remainder of an epoch is left out, the same samples on every run).
 */
export class StepPlan {
  readonly stepsPerEpoch: number;
  private cached: { epoch: number; order: Uint32Array } | null = null;

  constructor(
    readonly size: number,
    readonly batch: number,
    readonly seed: number,
  ) {
    if (batch > size) throw new PartiError('config', `global batch ${batch} is larger than the data set (${size} samples)`);
    this.stepsPerEpoch = Math.floor(size / batch);
  }

  /** The samples optimizer step `step` consumes. */
  samplesOf(step: number): StepSamples {
    const dataEpoch = Math.floor(step / this.stepsPerEpoch);
    if (this.cached?.epoch !== dataEpoch) this.cached = { epoch: dataEpoch, order: epochOrder(this.size, this.seed, dataEpoch) };
    const offset = (step % this.stepsPerEpoch) * this.batch;
    return { dataEpoch, samples: Array.from(this.cached.order.subarray(offset, offset + this.batch)) };
  }
}

/** Rank r of n computes this contiguous slice of a step's samples (sizes differ by at most one). */
export function rankSlice<T>(samples: readonly T[], rank: number, worldSize: number): T[] {
  const n = samples.length;
  return samples.slice(Math.floor((rank * n) / worldSize), Math.floor(((rank + 1) * n) / worldSize));
}
