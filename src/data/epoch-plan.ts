import { PartiError } from '../errors.ts';
import { mixSeed, SeededRandom } from './seeded-random.ts';

/**
 * The epoch plan: which samples feed which optimizer step, on which rank. It is the data half of
 * DESIGN.md's determinism and exactly-once contracts.
 *
 * Order. The samples of epoch e are laid out as a function of (seed, e) and the shard sizes only:
 * the shards are shuffled, cut into windows of `windowShards` consecutive shards, and the samples
 * of each window are shuffled together. So a window's shards are each read once, whole and in
 * order, while consecutive batches still mix samples of several shards.
 *
 * Stream and batches. The epochs are concatenated into one stream; the batch at a cursor is the
 * next `globalBatch` samples of the stream. The last batch of an epoch is completed from the start
 * of the next one, so every sample of every epoch feeds exactly one step and every step has the
 * same global batch. The cursor `{ epoch, samplesConsumed }` is all the state there is: the batch
 * after step s of a run started at cursor c is `batchAt(cursorAtStep(s, c))`.
 *
 * Ranks. `rankSlice(batch, worldSize, rank)` splits a global batch into worldSize contiguous
 * parts (sizes differ by at most one) after sorting it by (shard, ordinal), so a rank reads few
 * shards. The slices of a step are a partition of its batch for any world size, so changing the
 * world size between any two steps keeps exactly-once: the cursor does not depend on it.
 * Ranks' slices may differ in size by one: weight each rank's summed loss by (its samples) /
 * globalBatch, not by 1/worldSize, to get the same gradient as one rank would.
 *
 * Who calls what. The coordinator builds the plan from the shard index (openShardSet) and, for
 * each step, sends rank r the refs `rankSlice(plan.batchAt(cursor), N, r)`; it never touches
 * samples. A worker passes those refs to a SampleReader. A worker may also build the same plan
 * itself (same index, seed, batch) to prefetch the next steps' refs before they are sent.
 */

/** A sample of the plan: sample `ordinal` (0-based, in tar order) of shard `shard` in epoch `epoch`. */
export interface SampleRef {
  epoch: number;
  /** Index into the plan's shard list (the order of the shard set URL). */
  shard: number;
  ordinal: number;
}

/** Where the data stream stands: the next sample to consume is `samplesConsumed` of `epoch`. */
export interface DataCursor {
  epoch: number;
  /** 0 <= samplesConsumed < samplesPerEpoch. */
  samplesConsumed: number;
}

/** Options of an EpochPlan. */
export interface EpochPlanOptions {
  /** The data seed (training.seed). */
  seed: number;
  /** Samples per optimizer step, summed over all ranks (the stage's batchSize). */
  globalBatch: number;
  /**
   * Shards whose samples are shuffled together (default 8). Larger mixes better; a reader holds
   * about this many shards in memory.
   */
  windowShards?: number;
}

interface Window {
  /** Shards of the window, in the epoch's shard order. */
  shards: number[];
  /** First stream offset (within the epoch) of the window. */
  start: number;
  size: number;
}

interface EpochLayout {
  windows: Window[];
}

export class EpochPlan {
  /** Samples per shard, in shard set order. */
  readonly shardSizes: readonly number[];
  readonly seed: number;
  readonly globalBatch: number;
  readonly windowShards: number;
  readonly samplesPerEpoch: number;
  private readonly layouts = new Map<number, EpochLayout>();
  private readonly windowOrders = new Map<string, { shards: Uint32Array; ordinals: Uint32Array }>();

  /** `shards`: the sample count of each shard (ShardSet.shards works as is). */
  constructor(shards: readonly { samples: number }[], options: EpochPlanOptions) {
    const { seed, globalBatch } = options;
    const windowShards = options.windowShards ?? 8;
    if (!Number.isSafeInteger(seed) || seed < 0) throw new PartiError('data', `epoch plan: seed must be an integer >= 0, got ${seed}`);
    if (!Number.isSafeInteger(globalBatch) || globalBatch < 1) throw new PartiError('data', `epoch plan: globalBatch must be an integer >= 1, got ${globalBatch}`);
    if (!Number.isSafeInteger(windowShards) || windowShards < 1) throw new PartiError('data', `epoch plan: windowShards must be an integer >= 1, got ${windowShards}`);
    this.shardSizes = shards.map((s, i) => {
      if (!Number.isSafeInteger(s.samples) || s.samples < 0) throw new PartiError('data', `epoch plan: shard ${i} has ${s.samples} samples`);
      return s.samples;
    });
    this.samplesPerEpoch = this.shardSizes.reduce((a, b) => a + b, 0);
    if (this.samplesPerEpoch === 0) throw new PartiError('data', 'epoch plan: the shard set has no samples');
    this.seed = seed;
    this.globalBatch = globalBatch;
    this.windowShards = windowShards;
  }

  /** The cursor of a fresh run. */
  static start(): DataCursor {
    return { epoch: 0, samplesConsumed: 0 };
  }

  /** Throws PartiError('data') unless the cursor is valid for this plan. */
  checkCursor(cursor: DataCursor): void {
    const ok =
      Number.isSafeInteger(cursor?.epoch) &&
      cursor.epoch >= 0 &&
      Number.isSafeInteger(cursor.samplesConsumed) &&
      cursor.samplesConsumed >= 0 &&
      cursor.samplesConsumed < this.samplesPerEpoch;
    if (!ok) throw new PartiError('data', `data cursor ${JSON.stringify(cursor)}: needs integer epoch >= 0 and 0 <= samplesConsumed < ${this.samplesPerEpoch}`);
  }

  private layout(epoch: number): EpochLayout {
    let layout = this.layouts.get(epoch);
    if (layout) return layout;
    const order = this.shardSizes.map((_, i) => i);
    new SeededRandom(mixSeed(this.seed, epoch, 0x5a4d)).shuffle(order);
    const nonEmpty = order.filter((s) => this.shardSizes[s]! > 0);
    const windows: Window[] = [];
    let start = 0;
    for (let i = 0; i < nonEmpty.length; i += this.windowShards) {
      const shards = nonEmpty.slice(i, i + this.windowShards);
      const size = shards.reduce((n, s) => n + this.shardSizes[s]!, 0);
      windows.push({ shards, start, size });
      start += size;
    }
    layout = { windows };
    if (this.layouts.size >= 4) this.layouts.delete(this.layouts.keys().next().value!);
    this.layouts.set(epoch, layout);
    return layout;
  }

  private windowOrder(epoch: number, w: number, window: Window): { shards: Uint32Array; ordinals: Uint32Array } {
    const id = `${epoch}:${w}`;
    let order = this.windowOrders.get(id);
    if (order) return order;
    const shards = new Uint32Array(window.size);
    const ordinals = new Uint32Array(window.size);
    let i = 0;
    for (const s of window.shards) {
      for (let o = 0; o < this.shardSizes[s]!; o++, i++) {
        shards[i] = s;
        ordinals[i] = o;
      }
    }
    const rng = new SeededRandom(mixSeed(this.seed, epoch, w, 0x77));
    for (let k = window.size - 1; k > 0; k--) {
      const j = rng.int(k + 1);
      const ts = shards[k]!;
      shards[k] = shards[j]!;
      shards[j] = ts;
      const to = ordinals[k]!;
      ordinals[k] = ordinals[j]!;
      ordinals[j] = to;
    }
    order = { shards, ordinals };
    if (this.windowOrders.size >= 8) this.windowOrders.delete(this.windowOrders.keys().next().value!);
    this.windowOrders.set(id, order);
    return order;
  }

  /** The sample at position `offset` (0 <= offset < samplesPerEpoch) of epoch `epoch`. */
  sampleAt(epoch: number, offset: number): SampleRef {
    this.checkCursor({ epoch, samplesConsumed: offset });
    const { windows } = this.layout(epoch);
    let lo = 0;
    let hi = windows.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (windows[mid]!.start <= offset) lo = mid;
      else hi = mid - 1;
    }
    const window = windows[lo]!;
    const order = this.windowOrder(epoch, lo, window);
    const i = offset - window.start;
    return { epoch, shard: order.shards[i]!, ordinal: order.ordinals[i]! };
  }

  /** The whole order of an epoch (for tests, ledgers and small sets). */
  epochOrder(epoch: number): SampleRef[] {
    const out: SampleRef[] = [];
    for (let i = 0; i < this.samplesPerEpoch; i++) out.push(this.sampleAt(epoch, i));
    return out;
  }

  /** The `count` samples of the stream from `cursor` on (crossing into later epochs as needed). */
  samplesFrom(cursor: DataCursor, count: number): SampleRef[] {
    this.checkCursor(cursor);
    const out: SampleRef[] = [];
    let { epoch, samplesConsumed: offset } = cursor;
    for (let i = 0; i < count; i++) {
      out.push(this.sampleAt(epoch, offset));
      offset++;
      if (offset === this.samplesPerEpoch) {
        epoch++;
        offset = 0;
      }
    }
    return out;
  }

  /** The global batch of the step that starts at `cursor` (globalBatch refs). */
  batchAt(cursor: DataCursor): SampleRef[] {
    return this.samplesFrom(cursor, this.globalBatch);
  }

  /** The cursor after the step that starts at `cursor`. */
  advance(cursor: DataCursor, steps = 1): DataCursor {
    this.checkCursor(cursor);
    if (!Number.isSafeInteger(steps) || steps < 0) throw new PartiError('data', `advance: steps must be an integer >= 0, got ${steps}`);
    const position = cursor.epoch * this.samplesPerEpoch + cursor.samplesConsumed + steps * this.globalBatch;
    if (!Number.isSafeInteger(position)) throw new PartiError('data', 'advance: the data stream position overflows');
    return { epoch: Math.floor(position / this.samplesPerEpoch), samplesConsumed: position % this.samplesPerEpoch };
  }

  /** The cursor before step `step` of a run that started at `start` (default: the beginning). */
  cursorAtStep(step: number, start: DataCursor = EpochPlan.start()): DataCursor {
    return this.advance(start, step);
  }

  /** The refs rank `rank` reads for the next `steps` steps from `cursor`, step by step (for prefetch). */
  rankRefsAhead(cursor: DataCursor, steps: number, worldSize: number, rank: number): SampleRef[][] {
    const out: SampleRef[][] = [];
    let c = cursor;
    for (let s = 0; s < steps; s++) {
      out.push(rankSlice(this.batchAt(c), worldSize, rank));
      c = this.advance(c);
    }
    return out;
  }
}

/** [start, end) of rank `rank`'s part of a batch of `batchSize` (the first batchSize % worldSize ranks get one more). */
export function rankSliceBounds(batchSize: number, worldSize: number, rank: number): { start: number; end: number } {
  if (!Number.isSafeInteger(worldSize) || worldSize < 1) throw new PartiError('data', `rankSlice: worldSize must be an integer >= 1, got ${worldSize}`);
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= worldSize) throw new PartiError('data', `rankSlice: rank must be in [0, ${worldSize}), got ${rank}`);
  const base = Math.floor(batchSize / worldSize);
  const extra = batchSize % worldSize;
  const start = rank * base + Math.min(rank, extra);
  return { start, end: start + base + (rank < extra ? 1 : 0) };
}

/**
 * Rank `rank`'s share of a global batch: the batch sorted by (epoch, shard, ordinal), cut into
 * worldSize contiguous parts. Sorting groups each rank's samples into few shards. The parts of
 * all ranks are a partition of the batch.
 */
export function rankSlice(batch: readonly SampleRef[], worldSize: number, rank: number): SampleRef[] {
  const { start, end } = rankSliceBounds(batch.length, worldSize, rank);
  const sorted = [...batch].sort((a, b) => a.epoch - b.epoch || a.shard - b.shard || a.ordinal - b.ordinal);
  return sorted.slice(start, end);
}
