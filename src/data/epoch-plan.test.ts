import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { EpochPlan, rankSlice, type DataCursor, type SampleRef } from './epoch-plan.ts';

const id = (r: SampleRef) => `${r.epoch}/${r.shard}/${r.ordinal}`;
const shardsOf = (sizes: number[]) => sizes.map((samples) => ({ samples }));

test('epoch plan: an epoch is a permutation of all samples, a function of (seed, epoch) only', () => {
  const sizes = [10, 7, 0, 13, 10, 3];
  const a = new EpochPlan(shardsOf(sizes), { seed: 5, globalBatch: 4, windowShards: 2 });
  const b = new EpochPlan(shardsOf(sizes), { seed: 5, globalBatch: 9, windowShards: 2 });
  const e0 = a.epochOrder(0);
  assert.equal(e0.length, 43);
  assert.equal(new Set(e0.map(id)).size, 43);
  for (const r of e0) assert.ok(r.ordinal < sizes[r.shard]!);
  // The global batch (and so the world size) does not change the order.
  assert.deepEqual(b.epochOrder(0), e0);
  assert.deepEqual(new EpochPlan(shardsOf(sizes), { seed: 5, globalBatch: 4, windowShards: 2 }).epochOrder(0), e0);
  assert.notDeepEqual(a.epochOrder(1).map((r) => `${r.shard}/${r.ordinal}`), e0.map((r) => `${r.shard}/${r.ordinal}`));
  assert.notDeepEqual(new EpochPlan(shardsOf(sizes), { seed: 6, globalBatch: 4, windowShards: 2 }).epochOrder(0), e0);
});

test('epoch plan: windows keep each shard within a contiguous stretch of the epoch', () => {
  const plan = new EpochPlan(shardsOf(Array(12).fill(50)), { seed: 1, globalBatch: 16, windowShards: 3 });
  const order = plan.epochOrder(0);
  // Each 150-sample window holds exactly 3 shards.
  for (let w = 0; w < 4; w++) {
    const shards = new Set(order.slice(w * 150, (w + 1) * 150).map((r) => r.shard));
    assert.equal(shards.size, 3);
  }
});

test('epoch plan: for world sizes 1-4 the slices of every step partition the global batch; each sample once per epoch', () => {
  const sizes = [17, 23, 5, 31, 12];
  const total = sizes.reduce((a, b) => a + b);
  for (const globalBatch of [1, 7, 16, 30]) {
    const plan = new EpochPlan(shardsOf(sizes), { seed: 3, globalBatch, windowShards: 2 });
    for (let worldSize = 1; worldSize <= 4; worldSize++) {
      let cursor = EpochPlan.start();
      const seen = new Map<string, number>();
      const steps = Math.ceil((2 * total) / globalBatch);
      for (let s = 0; s < steps; s++) {
        const batch = plan.batchAt(cursor);
        assert.equal(batch.length, globalBatch);
        const slices = Array.from({ length: worldSize }, (_, r) => rankSlice(batch, worldSize, r));
        const union = slices.flat().map(id).sort();
        assert.deepEqual(union, batch.map(id).sort(), `step ${s} world ${worldSize}`);
        for (const sl of slices) assert.ok(sl.length >= Math.floor(globalBatch / worldSize) && sl.length <= Math.ceil(globalBatch / worldSize));
        for (const r of union) seen.set(r, (seen.get(r) ?? 0) + 1);
        cursor = plan.advance(cursor);
      }
      // Epochs 0 and 1 were fully consumed: each of their samples exactly once.
      for (const epoch of [0, 1]) {
        for (const r of plan.epochOrder(epoch)) assert.equal(seen.get(id(r)), 1, `${id(r)} world ${worldSize} batch ${globalBatch}`);
      }
      for (const [k, n] of seen) assert.equal(n, 1, k);
    }
  }
});

test('epoch plan: resuming from a cursor mid-epoch gives exactly the remaining stream', () => {
  const plan = new EpochPlan(shardsOf([40, 25, 33]), { seed: 11, globalBatch: 8, windowShards: 2 });
  const straight: SampleRef[] = [];
  let c = EpochPlan.start();
  for (let s = 0; s < 30; s++) {
    straight.push(...plan.batchAt(c));
    c = plan.advance(c);
  }
  for (const stopAt of [0, 1, 7, 12, 13, 29]) {
    // Serialise the cursor as a checkpoint would, then carry on with a fresh plan.
    const saved = JSON.parse(JSON.stringify(plan.cursorAtStep(stopAt))) as DataCursor;
    const fresh = new EpochPlan(shardsOf([40, 25, 33]), { seed: 11, globalBatch: 8, windowShards: 2 });
    const resumed: SampleRef[] = [];
    let rc = saved;
    for (let s = stopAt; s < 30; s++) {
      resumed.push(...fresh.batchAt(rc));
      rc = fresh.advance(rc);
    }
    assert.deepEqual(resumed, straight.slice(stopAt * 8), `resume at step ${stopAt}`);
  }
});

test('epoch plan: changing the world size at any step keeps exactly-once (property)', () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 0, max: 20 }), { minLength: 1, maxLength: 6 }).filter((a) => a.some((n) => n > 0)),
      fc.integer({ min: 1, max: 12 }),
      fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 80 }),
      fc.integer({ min: 0, max: 1000 }),
      (sizes, globalBatch, worldSizes, seed) => {
        const plan = new EpochPlan(shardsOf(sizes), { seed, globalBatch, windowShards: 2 });
        let cursor = EpochPlan.start();
        const fed: string[] = [];
        for (const worldSize of worldSizes) {
          const batch = plan.batchAt(cursor);
          for (let r = 0; r < worldSize; r++) fed.push(...rankSlice(batch, worldSize, r).map(id));
          cursor = plan.advance(cursor);
        }
        // Whatever the world sizes, the stream fed is the plan's stream, each sample once.
        const expected = plan.samplesFrom(EpochPlan.start(), worldSizes.length * globalBatch).map(id);
        assert.deepEqual([...fed].sort(), [...expected].sort());
        assert.equal(new Set(fed).size, fed.length);
      },
    ),
    { numRuns: 150, seed: 42 },
  );
});

test('epoch plan: bad arguments and cursors are refused', () => {
  assert.throws(() => new EpochPlan(shardsOf([0, 0]), { seed: 0, globalBatch: 2 }), /no samples/);
  assert.throws(() => new EpochPlan(shardsOf([3]), { seed: 0, globalBatch: 0 }), /globalBatch/);
  const plan = new EpochPlan(shardsOf([3]), { seed: 0, globalBatch: 2 });
  assert.throws(() => plan.batchAt({ epoch: 0, samplesConsumed: 3 }), /samplesConsumed/);
  assert.throws(() => rankSlice([], 2, 2), /rank/);
});
