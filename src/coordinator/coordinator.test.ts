import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Coordinator, type CheckpointCommitter } from './coordinator.ts';
import { PartiError } from '../errors.ts';
import { objectKey } from '../storage/checkpoint-manifest.ts';
import { FakeWorker, readyPair, objectsJson, options } from './coordinator-fixtures.ts';

test('the job waits for its workers, forms a ring, and commits a step only when every rank reduced it', () => {
  const c = new Coordinator(options());
  try {
    const a = new FakeWorker(c, 'a');
    assert.equal(c.phase.kind, 'waiting-for-workers');
    assert.equal(a.commands.length, 0);
    const b = new FakeWorker(c, 'b');
    assert.equal(c.phase.kind, 'forming');
    const ra = a.last().reconfigure!;
    assert.deepEqual([ra.rank, b.last().reconfigure!.rank], [0, 1]);
    assert.deepEqual(ra.peers, ['a:1', 'b:1']);
    assert.equal(ra.restoreStep, -2, 'fresh workers start from the initialization');
    a.ready();
    b.ready();
    assert.equal((c.phase as { kind: string }).kind, 'stepping');
    const sa = a.last().step!;
    const sb = b.last().step!;
    assert.equal(sa.refs.length + sb.refs.length, 4);
    a.reduced();
    assert.equal(c.step, 0, 'not committed with one rank missing');
    b.reduced();
    assert.equal(c.step, 1);
    assert.ok(a.commands.at(-2)!.commit, 'commit, then the next step');
    assert.equal(a.last().step!.step, 1);
  } finally {
    c.close();
  }
});

test('a dead member aborts the step on the survivors, who re-form and redo it; a joiner gets the state from a peer', () => {
  const c = new Coordinator(options({ minWorkers: 1 }));
  try {
    const [a, b] = readyPair(c);
    a.reduced();
    b.reduced();
    const step1 = a.last().step!;
    const ids = [...step1.ids, ...b.last().step!.ids];
    c.detach(b.id, 'killed');
    assert.ok(a.commands.some((cmd) => cmd.abort?.epoch === step1.epoch), 'survivor told to abort');
    const r = a.last().reconfigure!;
    assert.ok(r.epoch > step1.epoch);
    assert.deepEqual(r.peers, ['a:1']);
    assert.equal(r.syncFromRank, -1, 'the survivor holds the state');
    a.ready();
    const redo = a.last().step!;
    assert.equal(redo.step, 1, 'the same step again');
    assert.deepEqual([...redo.ids].sort((x, y) => x - y), ids.sort((x, y) => x - y), 'with the same samples');
    // a joiner is admitted at the next step boundary, with the state of rank 0
    const d = new FakeWorker(c, 'd');
    assert.equal(d.commands.length, 0, 'not in the middle of a step');
    a.reduced();
    const joined = d.last().reconfigure!;
    assert.equal(joined.syncFromRank, 0);
    assert.equal(joined.step, 2);
    assert.equal(joined.restoreStep, -1);
  } finally {
    c.close();
  }
});

test('with a minimum of N the job waits for a replacement; stale reports are ignored', () => {
  const c = new Coordinator(options());
  try {
    const [a, b] = readyPair(c);
    const s = a.last().step!;
    c.detach(b.id, 'killed');
    assert.equal(c.phase.kind, 'waiting-for-workers');
    assert.equal(a.report('REDUCED', s.epoch, s.step), false, 'a report of the aborted epoch is stale');
    const d = new FakeWorker(c, 'd');
    assert.equal(d.last().reconfigure!.syncFromRank, 0);
    assert.equal(d.last().reconfigure!.rank, 1);
  } finally {
    c.close();
  }
});

test('a leaving worker finishes the step, then is stopped at the boundary without an abort', () => {
  const c = new Coordinator(options({ targetWorkers: 3 }));
  try {
    const ws = ['a', 'b', 'x'].map((n) => new FakeWorker(c, n));
    for (const w of ws) w.ready();
    c.leave(ws[2]!.id, 'SIGTERM');
    assert.equal(c.phase.kind, 'stepping');
    for (const w of ws) w.reduced();
    assert.ok(ws[2]!.commands.at(-2)!.commit, 'the leaver commits the step it took part in');
    assert.ok(ws[2]!.last().stop);
    assert.ok(!ws[0]!.commands.some((cmd) => cmd.abort));
    assert.deepEqual(ws[0]!.last().reconfigure!.peers, ['a:1', 'b:1']);
  } finally {
    c.close();
  }
});

test('a non-finite step is committed as skipped and counted', () => {
  const c = new Coordinator(options());
  try {
    const [a, b] = readyPair(c);
    a.reduced({ nonFinite: true });
    b.reduced({ nonFinite: true });
    assert.equal(c.skippedSteps, 1);
    assert.equal(c.history[0]!.skipped, true);
    assert.equal(c.step, 1);
  } finally {
    c.close();
  }
});

test('when no member holds the state, the job goes back to the latest checkpoint; with ZeRO-1 any loss does', async () => {
  const committed: number[] = [];
  const store: CheckpointCommitter = {
    latestStep: async () => committed.at(-1) ?? null,
    commit: async (step) => void committed.push(step),
  };
  const c = new Coordinator(options({ checkpoints: store, checkpointEvery: 2, zeroStage: 1, targetWorkers: 2, minWorkers: 1 }));
  try {
    const [a, b] = readyPair(c);
    for (let i = 0; i < 2; i++) {
      a.reduced();
      b.reduced();
    }
    // asynchronous: the checkpoint command, then at once the next step
    assert.equal(c.phase.kind, 'stepping');
    const ck = a.commands.at(-2)!.checkpoint!;
    assert.equal(ck.step, 2);
    a.report('CHECKPOINTED', ck.epoch, ck.step, { checkpointObjectsJson: objectsJson(2, 'optimizer-rank-0.bin') });
    b.report('CHECKPOINTED', ck.epoch, ck.step, { checkpointObjectsJson: objectsJson(2, 'optimizer-rank-1.bin') });
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(committed, [2]);
    a.reduced();
    b.reduced();
    assert.equal(c.step, 3);
    c.detach(b.id, 'killed');
    const r = a.last().reconfigure!;
    assert.equal(r.restoreStep, 2, 'ZeRO-1: the lost shard comes back from the checkpoint');
    assert.equal(c.step, 2);
  } finally {
    c.close();
  }
});

test('peers of another job, config or model size are refused; aborts in a loop end the job', () => {
  const c = new Coordinator(options({ targetWorkers: 1, minWorkers: 1 }));
  try {
    assert.throws(() => c.join({ jobId: 'other', configHash: 'h', workerName: 'x', collectiveAddress: 'x:1', paramCount: 10 }), (e: unknown) => e instanceof PartiError && e.code === 'refused' && /job id "other"/.test(e.message));
    assert.throws(() => c.join({ jobId: 'job', configHash: 'zz', workerName: 'x', collectiveAddress: 'x:1', paramCount: 10 }), /config hash zz differs/);
    const a = new FakeWorker(c, 'a');
    assert.throws(() => c.join({ jobId: 'job', configHash: 'h', workerName: 'y', collectiveAddress: 'y:1', paramCount: 11 }), /11 parameters/);
    for (let i = 0; i < 60 && c.phase.kind !== 'done'; i++) {
      const r = a.last().reconfigure;
      if (r) a.ready();
      const s = a.last().step!;
      a.report('FAILED', s.epoch, s.step, { error: 'boom' });
      (c as unknown as { phase: { kind: string } }).phase = c.phase.kind === 'backoff' ? { kind: 'between-steps' } : c.phase;
      (c as unknown as { advance(): void }).advance();
    }
    assert.equal(c.phase.kind, 'done');
    assert.match(c.failed ?? '', /50 aborts in a row at step 0; last: worker a failed: boom/);
  } finally {
    c.close();
  }
});

test('ZeRO-1: a worker that leaves triggers a checkpoint of the current step first; the new ring restores it, losing no step', async () => {
  const committed: number[] = [];
  const store: CheckpointCommitter = { latestStep: async () => committed.at(-1) ?? null, commit: async (step) => void committed.push(step) };
  const c = new Coordinator(options({ checkpoints: store, zeroStage: 1, targetWorkers: 3, minWorkers: 2 }));
  try {
    const ws = ['a', 'b', 'x'].map((n) => new FakeWorker(c, n));
    for (const w of ws) w.ready();
    for (const w of ws) w.reduced();
    c.leave(ws[2]!.id, 'SIGTERM');
    for (const w of ws) w.reduced();
    assert.equal(c.step, 2);
    assert.equal(c.phase.kind, 'checkpointing', 'the leaver is still there: checkpoint first');
    for (const w of ws) w.report('CHECKPOINTED', w.last().checkpoint!.epoch, 2, { checkpointObjectsJson: objectsJson(2, `optimizer-rank-${ws.indexOf(w)}.bin`) });
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(committed, [2]);
    assert.ok(ws[2]!.last().stop);
    const r = ws[0]!.last().reconfigure!;
    assert.deepEqual([r.restoreStep, r.step, r.peers.length], [2, 2, 2]);
  } finally {
    c.close();
  }
});

test('a leaver that takes the job below its minimum gets a checkpoint of the current step first', async () => {
  const committed: number[] = [];
  const store: CheckpointCommitter = { latestStep: async () => committed.at(-1) ?? null, commit: async (step) => void committed.push(step) };
  const c = new Coordinator(options({ checkpoints: store }));
  try {
    const [a, b] = readyPair(c);
    c.leave(b.id, 'SIGTERM');
    a.reduced();
    b.reduced();
    assert.equal(c.phase.kind, 'checkpointing');
    for (const w of [a, b]) w.report('CHECKPOINTED', w.last().checkpoint!.epoch, 1);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(committed, [1]);
    assert.equal(c.phase.kind, 'waiting-for-workers');
    assert.ok(b.last().stop);
  } finally {
    c.close();
  }
});

/** A committer that records what it commits (with the objects). */
function recordingStore(): CheckpointCommitter & { committed: { step: number; names: string[] }[] } {
  const committed: { step: number; names: string[] }[] = [];
  return {
    committed,
    latestStep: async () => committed.at(-1)?.step ?? null,
    commit: async (step, _world, objects) => void committed.push({ step, names: objects.map((o) => o.name) }),
  };
}

/** Runs the step in flight on every worker (REDUCED), which commits it and starts the next. */
function step(...ws: FakeWorker[]): void {
  for (const w of ws) w.reduced();
}

test('asynchronous checkpoints: steps go on while ranks upload; the manifest is committed when every rank reported; at most one save in flight', async () => {
  const store = recordingStore();
  const c = new Coordinator(options({ checkpoints: store, checkpointEvery: 1, totalSteps: 10, zeroStage: 1 }));
  try {
    const [a, b] = readyPair(c);
    step(a, b); // step 0 committed: checkpoint 1 due
    assert.ok(a.commands.at(-2)!.checkpoint, 'checkpoint command first');
    assert.equal(a.last().step!.step, 1, 'then step 1 at once');
    const ck = a.commands.at(-2)!.checkpoint!;
    a.report('CHECKPOINTED', ck.epoch, 1, { checkpointObjectsJson: objectsJson(1, 'params.bin', 'optimizer-rank-0.bin') });
    step(a, b); // step 1 committed: checkpoint 2 is due, but b still uploads checkpoint 1
    assert.equal(c.phase.kind, 'checkpointing', 'waits for the save in flight');
    assert.equal(c.step, 2);
    assert.deepEqual(store.committed, []);
    b.report('CHECKPOINTED', ck.epoch, 1, { checkpointObjectsJson: objectsJson(1, 'optimizer-rank-1.bin') });
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(store.committed, [{ step: 1, names: ['params.bin', 'optimizer-rank-0.bin', 'optimizer-rank-1.bin'] }]);
    assert.equal(c.phase.kind, 'stepping', 'then checkpoint 2 starts and step 2 runs');
    assert.equal(a.commands.at(-2)!.checkpoint!.step, 2);
    assert.equal(c.history.length, 2);
  } finally {
    c.close();
  }
});

test('a failed save commits nothing and training goes on; the next checkpoint step saves again', async () => {
  const store = recordingStore();
  const c = new Coordinator(options({ checkpoints: store, checkpointEvery: 2, totalSteps: 10 }));
  try {
    const [a, b] = readyPair(c);
    step(a, b);
    step(a, b);
    const ck = a.commands.at(-2)!.checkpoint!;
    assert.equal(ck.step, 2);
    assert.equal(a.report('CHECKPOINT_FAILED', ck.epoch, 2, { error: 'checkpoint: disk full' }), true);
    b.report('CHECKPOINTED', ck.epoch, 2, { checkpointObjectsJson: '[]' });
    await new Promise((r) => setImmediate(r));
    assert.equal(store.committed.length, 0);
    assert.equal(c.failedSaves, 1);
    assert.equal(c.phase.kind, 'stepping');
    step(a, b);
    step(a, b);
    const again = a.commands.at(-2)!.checkpoint!;
    assert.equal(again.step, 4, 'saved again at the next checkpoint step');
    a.report('CHECKPOINTED', again.epoch, 4, { checkpointObjectsJson: objectsJson(4, 'params.bin') });
    b.report('CHECKPOINTED', again.epoch, 4, { checkpointObjectsJson: '[]' });
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(store.committed.map((x) => x.step), [4]);
  } finally {
    c.close();
  }
});

test('a member lost while its ring saves: that save is never committed, not even with the survivors\' objects', async () => {
  const store = recordingStore();
  const c = new Coordinator(options({ checkpoints: store, checkpointEvery: 2, totalSteps: 10, minWorkers: 1, zeroStage: 1 }));
  try {
    const [a, b] = readyPair(c);
    step(a, b);
    step(a, b);
    const ck = a.commands.at(-2)!.checkpoint!;
    a.report('CHECKPOINTED', ck.epoch, 2, { checkpointObjectsJson: objectsJson(2, 'params.bin', 'optimizer-rank-0.bin') });
    c.detach(b.id, 'killed');
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(store.committed, []);
    assert.equal(c.failedSaves, 1);
    // the survivor re-forms alone (ZeRO-1: from the initialization, nothing was committed)
    const r = a.last().reconfigure!;
    assert.deepEqual([r.peers.length, r.restoreStep], [1, -2]);
  } finally {
    c.close();
  }
});

test('a stop while a save uploads: that save commits, then the final one, then the workers stop', async () => {
  const store = recordingStore();
  const c = new Coordinator(options({ checkpoints: store, checkpointEvery: 2, checkpointAtEnd: true, totalSteps: 10 }));
  try {
    const [a, b] = readyPair(c);
    step(a, b);
    step(a, b);
    const ck = a.commands.at(-2)!.checkpoint!;
    c.requestStop('SIGINT');
    step(a, b); // step 2 ends; the job stops at this boundary once checkpoint 2 is in and 3 is written
    assert.equal(c.phase.kind, 'checkpointing');
    assert.ok(!a.last().stop);
    a.report('CHECKPOINTED', ck.epoch, 2, { checkpointObjectsJson: objectsJson(2, 'params.bin') });
    b.report('CHECKPOINTED', ck.epoch, 2, { checkpointObjectsJson: '[]' });
    await new Promise((r) => setImmediate(r));
    const final = a.last().checkpoint!;
    assert.equal(final.step, 3, 'the final checkpoint');
    a.report('CHECKPOINTED', final.epoch, 3, { checkpointObjectsJson: objectsJson(3, 'params.bin') });
    b.report('CHECKPOINTED', final.epoch, 3, { checkpointObjectsJson: '[]' });
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(store.committed.map((x) => x.step), [2, 3]);
    assert.ok(a.last().stop && b.last().stop);
    assert.equal((await c.done).step, 3);
  } finally {
    c.close();
  }
});

test('refused: a checkpoint report whose objects fail their schema (the save is dropped), a join with a bad collective address', async () => {
  const store = recordingStore();
  const c = new Coordinator(options({ checkpoints: store, checkpointEvery: 1, totalSteps: 10 }));
  try {
    for (const bad of ['nohost', 'host:0', 'host:70000', 'a b:1', 'http://x:1', '-x:1', ''])
      assert.throws(
        () => c.join({ jobId: 'job', configHash: 'h', workerName: 'x', collectiveAddress: bad, paramCount: 10 }),
        (e: unknown) => e instanceof PartiError && e.code === 'refused' && /collectiveAddress: must be host:port/.test(e.message),
        bad,
      );
    for (const good of ['10.0.0.7:7000', '[::1]:5', 'parti-worker-0.parti-workers.default.svc:7000']) c.join({ jobId: 'job', configHash: 'h', workerName: 'x', collectiveAddress: good, paramCount: 10 });
    for (const m of [...c.members.keys()]) c.detach(m, 'test');
    const [a, b] = readyPair(c);
    step(a, b);
    const ck = a.commands.at(-2)!.checkpoint!;
    const badLists = ['{not json', JSON.stringify([{ name: 'params.bin', key: objectKey(1, 'params.bin'), size: -1, sha256: 'a'.repeat(64) }])];
    assert.throws(() => a.report('CHECKPOINTED', ck.epoch, 1, { checkpointObjectsJson: badLists[0] }), (e: unknown) => e instanceof PartiError && e.code === 'refused' && /not JSON/.test(e.message));
    assert.equal(c.failedSaves, 1);
    assert.equal(b.report('CHECKPOINTED', ck.epoch, 1, { checkpointObjectsJson: '[]' }), false, 'a report of the dropped save');
    step(a, b);
    const next = a.commands.at(-2)!.checkpoint!;
    assert.throws(() => a.report('CHECKPOINTED', next.epoch, 2, { checkpointObjectsJson: badLists[1] }), /\[0\]\.size/);
    const wrongKey = JSON.stringify([{ name: 'params.bin', key: objectKey(1, 'params.bin'), size: 1, sha256: 'a'.repeat(64) }]);
    b.report('CHECKPOINTED', next.epoch, 2, { checkpointObjectsJson: '[]' });
    step(a, b);
    const third = a.commands.at(-2)!.checkpoint!;
    assert.throws(() => a.report('CHECKPOINTED', third.epoch, 3, { checkpointObjectsJson: wrongKey }), /expected steps\/000000000003\/params\.bin or /);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(store.committed, []);
  } finally {
    c.close();
  }
});

test('step summaries carry the skipped samples by reason (summed over ranks) and the all-reduce size', () => {
  const c = new Coordinator(options());
  try {
    const [a, b] = readyPair(c);
    a.reduced({ skippedSamples: { 'bad-image': 1 }, allReduceBytes: 64 });
    b.reduced({ skippedSamples: { 'bad-image': 2, 'not-a-tar': 1 }, allReduceBytes: 64 });
    const s = c.history[0]!;
    assert.deepEqual(s.skippedSamples, { 'bad-image': 3, 'not-a-tar': 1 });
    assert.equal(s.allReduceBytes, 64);
    assert.equal(s.allReduceOp, 'all-reduce');
  } finally {
    c.close();
  }
});

test('an aborted epoch while a save uploads (every rank alive): the re-form waits for that save, which commits only its own epoch\'s objects', async () => {
  const store = recordingStore();
  const c = new Coordinator(options({ checkpoints: store, checkpointEvery: 2, totalSteps: 10 }));
  try {
    const [a, b] = readyPair(c);
    step(a, b);
    step(a, b);
    const ck = a.commands.at(-2)!.checkpoint!;
    const s = a.last().step!;
    a.report('FAILED', s.epoch, s.step, { error: 'collective-aborted: boom' });
    await new Promise((r) => setTimeout(r, 200)); // past the backoff
    assert.equal(c.phase.kind, 'checkpointing', 'the re-form waits for the save in flight');
    assert.ok(!a.last().reconfigure, 'no new epoch yet');
    // a report for the old epoch's save still counts: the objects are of step 2, whatever came after
    a.report('CHECKPOINTED', ck.epoch, 2, { checkpointObjectsJson: objectsJson(2, 'params.bin') });
    b.report('CHECKPOINTED', ck.epoch, 2, { checkpointObjectsJson: '[]' });
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(store.committed, [{ step: 2, names: ['params.bin'] }]);
    const r = a.last().reconfigure!;
    assert.ok(r.epoch > ck.epoch, 'then the ring re-forms');
    assert.equal(r.step, 2);
  } finally {
    c.close();
  }
});
