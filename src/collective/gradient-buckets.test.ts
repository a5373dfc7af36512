import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { flatBuckets, packBucket, planBuckets, unpackBucket } from './gradient-buckets.ts';
import { createInMemoryCollectiveGroup } from './in-memory-transport.ts';

describe('gradient buckets', () => {
  it('groups whole tensors in order, a big one alone', () => {
    const plan = planBuckets([3, 4, 10, 2, 2, 0, 1], 8);
    assert.deepEqual(plan.map((b) => b.parts.map((p) => p.index)), [[0, 1], [2], [3, 4, 5, 6]]);
    assert.deepEqual(plan.map((b) => b.length), [7, 10, 5]);
    assert.deepEqual(planBuckets([], 8), []);
    assert.throws(() => planBuckets([1], 0), /bucketElements/);
  });

  it('pack then unpack restores the tensors; sizes are checked', () => {
    const tensors = [new Float32Array([1, 2, 3]), new Float32Array([4]), new Float32Array([5, 6])];
    const [b0, b1] = planBuckets(tensors.map((t) => t.length), 4);
    const flat0 = packBucket(b0!, tensors);
    assert.deepEqual([...flat0], [1, 2, 3, 4]);
    const back = tensors.map((t) => new Float32Array(t.length));
    unpackBucket(b0!, flat0, back);
    unpackBucket(b1!, packBucket(b1!, tensors), back);
    assert.deepEqual(back.map((t) => [...t]), tensors.map((t) => [...t]));
    assert.throws(() => packBucket(b0!, [new Float32Array(2), tensors[1]!]), /tensor 0 has 2/);
  });

  it('flat buckets are views covering the array', () => {
    const flat = new Float32Array(10).map((_, i) => i);
    const views = flatBuckets(flat, 4);
    assert.deepEqual(views.map((v) => v.length), [4, 4, 2]);
    views[2]![1] = 99;
    assert.equal(flat[9], 99);
  });

  it('bucketed all-reduce equals all-reduce of the whole', async () => {
    const nodes = createInMemoryCollectiveGroup(3, { jobId: 'b', chunkBytes: 64 });
    const sizes = [5, 17, 1, 40, 3];
    const grads = nodes.map((_, r) => sizes.map((s, t) => new Float32Array(s).map((_, i) => r + t * 0.5 + i * 0.25)));
    const plan = planBuckets(sizes, 20);
    for (const b of plan) {
      const reduced = await Promise.all(nodes.map((n, r) => n.allReduce(packBucket(b, grads[r]!), { op: 'sum' })));
      reduced.forEach((flat, r) => unpackBucket(b, flat, grads[r]!));
    }
    sizes.forEach((s, t) => {
      for (let i = 0; i < s; i++) assert.equal(grads[1]![t]![i], 3 * (t * 0.5 + i * 0.25) + 3);
    });
    await Promise.all(nodes.map((n) => n.close()));
  });
});
