/**
 * Which samples each optimizer step consumes, and which of them each rank computes: the data
 * plan (src/data/epoch-plan.ts) seen from the step clock. The order of an epoch is a function of
 * (seed, epoch) alone and the global batch is fixed, so step s always takes the same samples,
 * whatever the world size: redoing a step after a failure never repeats or loses a sample (exactly
 * once by construction, proved by the ledger).
 */
import { EpochPlan, rankSlice, type DataCursor, type SampleRef } from '../data/epoch-plan.ts';

/** The samples of one optimizer step (or of one rank's slice of it). */
export interface StepSamples {
  refs: SampleRef[];
  /** Index of each ref in the data set (shard offset + ordinal). */
  ids: number[];
}

export class StepPlan {
  private readonly shardStarts: number[];

  /** `start`: the data cursor of step 0 of this run (the beginning, unless a run resumed elsewhere). */
  constructor(
    readonly plan: EpochPlan,
    private readonly start: DataCursor = EpochPlan.start(),
  ) {
    let acc = 0;
    this.shardStarts = plan.shardSizes.map((n) => {
      const s = acc;
      acc += n;
      return s;
    });
  }

  get globalBatch(): number {
    return this.plan.globalBatch;
  }

  /** The data cursor before optimizer step `step` (what a checkpoint of that step stores). */
  cursorAt(step: number): DataCursor {
    return this.plan.cursorAtStep(step, this.start);
  }

  /** The global batch of optimizer step `step`. */
  samplesOf(step: number): StepSamples {
    return this.withIds(this.plan.batchAt(this.cursorAt(step)));
  }

  /** Rank `rank`'s part of a step's batch (a partition of the batch for any world size). */
  rankPart(batch: StepSamples, worldSize: number, rank: number): StepSamples {
    return this.withIds(rankSlice(batch.refs, worldSize, rank));
  }

  private withIds(refs: SampleRef[]): StepSamples {
    return { refs, ids: refs.map((r) => this.shardStarts[r.shard]! + r.ordinal) };
  }
}
