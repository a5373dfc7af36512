/**
 * The one test suite every collective transport passes (in-memory and gRPC): correctness of the
 * algorithms over it, determinism, and the epoch / abort / deadline / refusal rules.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { PartiError } from '../errors.ts';
import type { CollectiveNode, CollectiveNodeOptions } from './collective-node.ts';
import { float64Reference, maxAbsError, seededInput, tolerance } from './seeded-input.ts';

/** Makes `count` unconfigured nodes that can reach each other; options may differ per node. */
export type NodeFactory = (count: number, options: (i: number) => CollectiveNodeOptions) => Promise<CollectiveNode[]>;

export function assertBitwiseEqual(results: Float32Array[], what: string): void {
  const first = Buffer.from(results[0]!.buffer, results[0]!.byteOffset, results[0]!.byteLength);
  results.forEach((r, i) => {
    assert.ok(first.equals(Buffer.from(r.buffer, r.byteOffset, r.byteLength)), `${what}: rank ${i} differs from rank 0`);
  });
}

async function expectCode(p: Promise<unknown>, codes: string[], what: string): Promise<PartiError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof PartiError, `${what}: expected a PartiError, got ${String(err)}`);
    assert.ok(codes.includes(err.code), `${what}: expected ${codes.join('|')}, got ${err.code}: ${err.message}`);
    return err;
  }
  assert.fail(`${what}: expected a failure with ${codes.join('|')}`);
}

function ring(nodes: CollectiveNode[], epoch: number): void {
  const peers = nodes.map((n) => n.address);
  nodes.forEach((n, rank) => n.configure({ epoch, rank, peers }));
}

export function collectiveContractSuite(name: string, factory: NodeFactory, worldSizes: number[]): void {
  describe(`collective contract: ${name}`, () => {
    const opened: CollectiveNode[] = [];
    const make = async (count: number, options: (i: number) => CollectiveNodeOptions = () => ({ jobId: 'job-a' })) => {
      const nodes = await factory(count, (i) => ({ chunkBytes: 4096, inflight: 3, deadlineMs: 20_000, ...options(i) }));
      opened.push(...nodes);
      return nodes;
    };
    after(async () => {
      await Promise.all(opened.map((n) => n.close()));
    });

    for (const size of worldSizes) {
      it(`all-reduce on ${size} ranks: bitwise equal, close to float64, deterministic`, async () => {
        const nodes = await make(size);
        ring(nodes, 1);
        const lengths = [0, 1, size * 3 + 1, 5003, (1 << 20) + 7];
        for (const [i, length] of lengths.entries()) {
          const op = i % 2 === 0 ? 'mean' : 'sum';
          const inputs = nodes.map((_, r) => seededInput(length, i, r));
          const results = await Promise.all(nodes.map((n, r) => n.allReduce(inputs[r]!, { op })));
          assert.equal(results[0]!.length, length);
          assertBitwiseEqual(results, `length ${length}`);
          const err = maxAbsError(results[0]!, float64Reference(inputs, op));
          assert.ok(err <= tolerance(size, 'none', op), `length ${length} ${op}: error ${err}`);
          if (length === 5003) {
            const again = await Promise.all(nodes.map((n, r) => n.allReduce(inputs[r]!, { op })));
            assertBitwiseEqual([results[0]!, again[0]!], 'second run');
          }
        }
        await Promise.all(nodes.map((n) => n.close()));
      });
    }

    const mid = worldSizes.find((s) => s >= 3) ?? worldSizes[worldSizes.length - 1]!;

    it(`compressed all-reduce (bf16, fp16) on ${mid} ranks stays within tolerance`, async () => {
      const nodes = await make(mid);
      ring(nodes, 1);
      for (const compress of ['bf16', 'fp16'] as const) {
        for (const op of ['sum', 'mean'] as const) {
          const inputs = nodes.map((_, r) => seededInput(30_011, 7, r));
          const results = await Promise.all(nodes.map((n, r) => n.allReduce(inputs[r]!, { op, compress })));
          assertBitwiseEqual(results, `${compress} ${op}`);
          const err = maxAbsError(results[0]!, float64Reference(inputs, op));
          assert.ok(err <= tolerance(mid, compress, op), `${compress} ${op}: error ${err} > ${tolerance(mid, compress, op)}`);
          assert.ok(err > 0, `${compress} ${op}: exactly float32 means nothing was compressed`);
        }
      }
      await Promise.all(nodes.map((n) => n.close()));
    });

    it(`reduce-scatter + all-gather, overlapping calls and broadcast on ${mid} ranks`, async () => {
      const nodes = await make(mid);
      ring(nodes, 1);
      const length = 10_007;
      const inputs = nodes.map((_, r) => seededInput(length, 3, r));
      const [full, shards] = await Promise.all([
        Promise.all(nodes.map((n, r) => n.allReduce(inputs[r]!, { op: 'sum' }))),
        Promise.all(nodes.map((n, r) => n.reduceScatter(inputs[r]!, { op: 'sum' }))),
      ]);
      let covered = 0;
      shards.forEach((s, r) => {
        assert.equal(s.chunk.length, s.end - s.start, `rank ${r} shard length`);
        assert.equal(s.start, covered, `rank ${r} shard start`);
        covered = s.end;
        assert.ok(Buffer.from(s.chunk.buffer).equals(Buffer.from(full[0]!.buffer, s.start * 4, (s.end - s.start) * 4)), `rank ${r} shard equals the all-reduce`);
      });
      assert.equal(covered, length);
      const gathered = await Promise.all(nodes.map((n, r) => n.allGather(shards[r]!.chunk, { length })));
      assertBitwiseEqual([full[0]!, ...gathered], 'all-gather of shards');
      for (const root of [0, mid - 1]) {
        const data = seededInput(70_001, 11, root);
        const got = await Promise.all(nodes.map((n, r) => n.broadcast(root, r === root ? data : null)));
        assertBitwiseEqual([data, ...got], `broadcast from ${root}`);
      }
      await Promise.all(nodes.map((n) => n.close()));
    });

    it('abort() on one rank fails the in-flight collective on every rank; a new epoch works again', async () => {
      const nodes = await make(mid);
      ring(nodes, 1);
      const data = seededInput(1 << 20, 1, 0);
      // The last rank joins late, so the others are surely in flight when rank 0 aborts.
      const running = nodes.slice(0, -1).map((n) => n.allReduce(data));
      setTimeout(() => nodes[0]!.abort('test abort'), 50);
      const errs = await Promise.all(running.map((p, r) => expectCode(p, ['collective-aborted'], `rank ${r}`)));
      assert.match(errs[1]!.message, /test abort|rank 0/);
      await expectCode(nodes[mid - 1]!.allReduce(data), ['collective-aborted'], 'late rank');
      ring(nodes, 2);
      const results = await Promise.all(nodes.map((n) => n.allReduce(data, { op: 'sum' })));
      assertBitwiseEqual(results, 'after re-forming the ring');
      await Promise.all(nodes.map((n) => n.close()));
    });

    it('a deadline fails the collective on every rank with a typed error; nothing waits forever', async () => {
      const nodes = await make(mid);
      ring(nodes, 1);
      // Rank 0 never calls: the others wait for it until their deadline.
      const errs = await Promise.all(
        nodes.slice(1).map((n, i) => expectCode(n.allReduce(new Float32Array(1000), { deadlineMs: 300 + 200 * i }), ['deadline', 'collective-aborted'], `rank ${i + 1}`)),
      );
      assert.equal(errs[0]!.code, 'deadline', 'the first deadline to pass is reported as a deadline');
      await expectCode(nodes[0]!.allReduce(new Float32Array(1000)), ['collective-aborted'], 'rank 0 after its peers failed');
      await Promise.all(nodes.map((n) => n.close()));
    });

    it('a new membership epoch fails a collective still running in the old one', async () => {
      const nodes = await make(2);
      ring(nodes, 4);
      const p = nodes[0]!.allReduce(new Float32Array(100));
      nodes[0]!.configure({ epoch: 5, rank: 0, peers: nodes.map((n) => n.address) });
      await expectCode(p, ['collective-aborted'], 'old epoch collective');
      assert.throws(() => nodes[1]!.configure({ epoch: 3, rank: 1, peers: nodes.map((n) => n.address) }), /not newer/);
      nodes[1]!.configure({ epoch: 5, rank: 1, peers: nodes.map((n) => n.address) });
      const res = await Promise.all(nodes.map((n) => n.allReduce(new Float32Array([1, 2, 3]), { op: 'sum' })));
      assert.deepEqual([...res[1]!], [2, 4, 6]);
      await Promise.all(nodes.map((n) => n.close()));
    });

    it('a peer of another job is refused', async () => {
      const nodes = await make(2, (i) => ({ jobId: i === 0 ? 'job-a' : 'job-b', deadlineMs: 5000 }));
      ring(nodes, 1);
      const errs = await Promise.all(nodes.map((n, r) => expectCode(n.allReduce(new Float32Array(10)), ['refused', 'collective-aborted'], `rank ${r}`)));
      assert.ok(errs.some((e) => e.code === 'refused'), `one side reports the refusal: ${errs.map((e) => e.message).join(' / ')}`);
      await Promise.all(nodes.map((n) => n.close()));
    });

    it('a peer still in an older epoch is refused', async () => {
      const nodes = await make(2, () => ({ jobId: 'job-a', deadlineMs: 1500 }));
      const peers = nodes.map((n) => n.address);
      nodes[0]!.configure({ epoch: 7, rank: 0, peers });
      nodes[1]!.configure({ epoch: 6, rank: 1, peers });
      const [newer, older] = await Promise.all([
        expectCode(nodes[0]!.allReduce(new Float32Array(10)), ['deadline', 'collective-aborted', 'refused'], 'newer rank'),
        expectCode(nodes[1]!.allReduce(new Float32Array(10)), ['refused'], 'older rank'),
      ]);
      assert.match(older.message, /epoch/);
      assert.ok(newer);
      await Promise.all(nodes.map((n) => n.close()));
    });

    it('calls before configure() and after close() are illegal-state errors', async () => {
      const [node] = await make(1);
      await expectCode(node!.allReduce(new Float32Array(1)), ['illegal-state'], 'unconfigured');
      node!.configure({ epoch: 0, rank: 0, peers: [node!.address] });
      assert.deepEqual([...(await node!.allReduce(new Float32Array([1, 2]), { op: 'sum' }))], [1, 2]);
      await node!.close();
      await expectCode(node!.allReduce(new Float32Array(1)), ['illegal-state'], 'closed');
    });
  });
}
