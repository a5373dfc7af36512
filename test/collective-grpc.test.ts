// Ranks as real processes over gRPC on 127.0.0.1: world sizes 2-4, assorted lengths, compressed
// mode, and a rank SIGKILLed mid-collective. Children are killed in `after` whatever happens.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { RankCluster, type RankEvent } from '../src/collective/rank-cluster.ts';
import { tolerance } from '../src/collective/seeded-input.ts';

const WAIT_MS = 60_000;

describe('collectives between processes over gRPC', { timeout: 120_000 }, () => {
  let cluster: RankCluster;
  let epoch = 0;
  let op = 0;

  before(async () => {
    cluster = await RankCluster.start(4, () => ({ jobId: 'mp-test', chunkBytes: 256 << 10, streams: 2, deadlineMs: WAIT_MS }));
  });
  after(async () => {
    await cluster?.close();
  });

  async function allReduce(members: number[], cmd: Record<string, unknown>): Promise<RankEvent[]> {
    const id = `op-${op++}`;
    for (const i of members) cluster.send(i, { cmd: 'allreduce', id, seed: op, op: 'mean', compress: 'none', deadlineMs: WAIT_MS, repeat: 1, check: true, inPlace: false, ...cmd });
    return Promise.all(members.map((i) => cluster.waitFor(i, (e) => e.event === 'done' && e.id === id, WAIT_MS)));
  }

  for (const world of [2, 3, 4]) {
    it(`all-reduce on ${world} processes: bitwise equal and close to float64`, async () => {
      const members = Array.from({ length: world }, (_, i) => i);
      await cluster.configure(++epoch, members);
      for (const length of [0, 1, world * 7 + 1, (5 << 20) / 4 + 3]) {
        for (const compress of length > 1000 ? ['none', 'bf16'] : ['none']) {
          const done = await allReduce(members, { length, compress, op: 'sum' });
          for (const d of done) assert.equal(d.ok, true, `${world} ranks, ${length} elements: ${String(d.message)}`);
          assert.equal(new Set(done.map((d) => d.sha256)).size, 1, `${world} ranks, ${length} ${compress}: results differ between ranks`);
          const tol = tolerance(world, compress as 'none' | 'bf16', 'sum');
          assert.ok((done[0]!.maxErr as number) <= tol, `${world} ranks, ${length} ${compress}: error ${String(done[0]!.maxErr)} > ${tol}`);
        }
      }
    });
  }

  it('a rank SIGKILLed mid-collective makes every other rank fail with collective-aborted', async () => {
    const members = [0, 1, 2, 3];
    await cluster.configure(++epoch, members);
    const id = `op-${op++}`;
    // Many repeats of 8 MiB with a long deadline: only the kill can end it early.
    for (const i of members) {
      cluster.send(i, { cmd: 'allreduce', id, length: 2 << 20, seed: 1, op: 'mean', compress: 'none', deadlineMs: WAIT_MS, repeat: 10_000, check: false, inPlace: true });
    }
    await Promise.all(members.map((i) => cluster.waitFor(i, (e) => e.event === 'started' && e.id === id, WAIT_MS)));
    cluster.kill(2);
    const done = await Promise.all([0, 1, 3].map((i) => cluster.waitFor(i, (e) => e.event === 'done' && e.id === id, WAIT_MS)));
    for (const d of done) {
      assert.equal(d.ok, false);
      assert.equal(d.code, 'collective-aborted', `not the deadline: the failure is detected, not waited out (${String(d.message)})`);
    }
  });
});
