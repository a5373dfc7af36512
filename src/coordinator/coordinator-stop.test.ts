// What the coordinator tells its workers at the end: Stop.finished is true exactly when the job ran
// all its steps, and a join after that end is refused with JoinRefusal.finished (typed, beside the
// text). A worker's exit code rests on these (0 completes a Kubernetes Indexed Job's index), so
// every other stop (a leaver, a job stopped before its end, a failed job) must say false.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Coordinator, type CheckpointCommitter } from './coordinator.ts';
import { PartiError } from '../errors.ts';
import { fromGrpcError, JoinRefusedError, toGrpcStatus } from './protocol.ts';
import { objectKey } from '../storage/checkpoint-manifest.ts';
import { FakeWorker, readyPair, options as jobOptions } from './coordinator-fixtures.ts';

/** A job of 2 steps (the fixtures' default is 5). */
const options = (o: Parameters<typeof jobOptions>[0] = {}) => jobOptions({ totalSteps: 2, ...o });

/** A join after the end, as the worker's runtime gets it back (through the gRPC status mapping). */
function lateJoin(c: Coordinator): PartiError {
  try {
    c.join({ jobId: 'job', configHash: 'h', workerName: 'late', collectiveAddress: 'late:1', paramCount: 10 });
  } catch (err) {
    return fromGrpcError(toGrpcStatus(err), 'coordinator c:7070 join');
  }
  assert.fail('the late join was accepted');
}

test('a job that ran all its steps stops every worker with finished = true and refuses a late join with JoinRefusal.finished', () => {
  const c = new Coordinator(options());
  try {
    const [a, b] = readyPair(c);
    for (let s = 0; s < 2; s++) {
      a.reduced();
      b.reduced();
    }
    assert.equal(c.phase.kind, 'done');
    assert.equal(c.step, 2);
    for (const w of [a, b]) assert.deepEqual(w.stop(), { reason: 'all steps done', finished: true });
    const late = lateJoin(c);
    assert.equal(late.code, 'refused');
    assert.ok(late instanceof JoinRefusedError, `typed refusal: ${late.message}`);
    assert.deepEqual(late.refusal, { finished: true });
  } finally {
    c.close();
  }
});

test('a stop requested while the final checkpoint uploads still says finished: the job ran all its steps', async () => {
  const committed: number[] = [];
  const store: CheckpointCommitter = { latestStep: async () => committed.at(-1) ?? null, commit: async (step) => void committed.push(step) };
  const c = new Coordinator(options({ targetWorkers: 1, minWorkers: 1, totalSteps: 1, checkpoints: store, checkpointAtEnd: true }));
  try {
    const a = new FakeWorker(c, 'a');
    a.ready();
    a.reduced();
    const final = a.last().checkpoint!;
    assert.equal(final.step, 1, 'the final checkpoint');
    c.requestStop('SIGTERM');
    assert.ok(!a.commands.some((cmd) => cmd.stop), 'no stop before the save lands');
    a.report('CHECKPOINTED', final.epoch, 1, { checkpointObjectsJson: JSON.stringify([{ name: 'params.bin', key: objectKey(1, 'params.bin'), size: 8, sha256: 'a'.repeat(64) }]) });
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(committed, [1]);
    // (a text match on the reason would have made this worker exit 75 and run again)
    assert.deepEqual(a.stop(), { reason: 'SIGTERM', finished: true });
    assert.deepEqual((lateJoin(c) as JoinRefusedError).refusal, { finished: true });
  } finally {
    c.close();
  }
});

test('a job stopped before its last step stops its workers with finished = false, and a late join is not told it finished', () => {
  const c = new Coordinator(options({ targetWorkers: 1, minWorkers: 1, totalSteps: 5 }));
  try {
    const a = new FakeWorker(c, 'a');
    a.ready();
    a.reduced();
    c.requestStop('all steps done'); // even in the words of a finished job
    a.reduced(); // the stop comes at the next step boundary
    assert.equal(c.step, 2);
    assert.deepEqual(a.stop(), { reason: 'all steps done', finished: false });
    const late = lateJoin(c);
    assert.ok(!(late instanceof JoinRefusedError), late.message);
    assert.notEqual(late.code, 'refused', late.message);
  } finally {
    c.close();
  }
});

test('a worker that leaves at a step boundary is stopped with finished = false; the others finish with true', () => {
  const c = new Coordinator(options({ targetWorkers: 3, minWorkers: 2, totalSteps: 3 }));
  try {
    const ws = ['a', 'b', 'x'].map((n) => new FakeWorker(c, n));
    for (const w of ws) w.ready();
    c.leave(ws[2]!.id, 'SIGTERM');
    for (const w of ws) w.reduced();
    assert.deepEqual(ws[2]!.stop(), { reason: 'left at a step boundary', finished: false });
    const [a, b] = ws as [FakeWorker, FakeWorker];
    a.ready();
    b.ready();
    while (c.phase.kind === 'stepping') {
      a.reduced();
      b.reduced();
    }
    assert.equal(c.step, 3);
    for (const w of [a, b]) assert.deepEqual(w.stop(), { reason: 'all steps done', finished: true });
  } finally {
    c.close();
  }
});

test('a failed job (aborts in a loop) stops its workers with finished = false', () => {
  const c = new Coordinator(options({ targetWorkers: 1, minWorkers: 1 }));
  try {
    const a = new FakeWorker(c, 'a');
    for (let i = 0; i < 60 && c.phase.kind !== 'done'; i++) {
      if (a.last().reconfigure) a.ready();
      const s = a.last().step!;
      a.report('FAILED', s.epoch, s.step, { error: 'boom' });
      // (skip the backoff between aborts: the test drives the clock)
      (c as unknown as { phase: { kind: string } }).phase = c.phase.kind === 'backoff' ? { kind: 'between-steps' } : c.phase;
      (c as unknown as { advance(): void }).advance();
    }
    assert.ok(c.failed, 'the job failed');
    const stop = a.stop();
    assert.equal(stop.finished, false, stop.reason);
    const late = lateJoin(c);
    assert.ok(!(late instanceof JoinRefusedError), late.message);
  } finally {
    c.close();
  }
});

test('other join refusals carry no JoinRefusal (their text is all there is)', () => {
  const c = new Coordinator(options());
  try {
    let refused: PartiError | null = null;
    try {
      c.join({ jobId: 'other', configHash: 'h', workerName: 'x', collectiveAddress: 'x:1', paramCount: 10 });
    } catch (err) {
      refused = fromGrpcError(toGrpcStatus(err), 'join');
    }
    assert.ok(refused && refused.code === 'refused' && !(refused instanceof JoinRefusedError), refused?.message);
  } finally {
    c.close();
  }
});
