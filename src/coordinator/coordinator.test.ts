import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Coordinator, type CheckpointCommitter, type CoordinatorOptions } from './coordinator.ts';
import { StepPlan } from './step-samples.ts';
import { EpochPlan } from '../data/epoch-plan.ts';
import { PartiError } from '../errors.ts';
import type { Command, StepReport } from './protocol.ts';

/** A scripted worker: records the commands it gets; the test answers for it. */
class FakeWorker {
  readonly commands: Command[] = [];
  id = '';
  ended = false;
  constructor(
    readonly c: Coordinator,
    readonly name: string,
  ) {
    this.id = c.join({ jobId: 'job', configHash: 'h', workerName: name, collectiveAddress: `${name}:1`, paramCount: 10 }).workerId;
    c.attach(this.id, (cmd) => this.commands.push(cmd), () => (this.ended = true));
  }
  last(): Command {
    return this.commands.at(-1)!;
  }
  report(kind: StepReport['kind'], epoch: number, step: number, extra: Partial<StepReport> = {}): boolean {
    return this.c.report({
      jobId: 'job', workerId: this.id, kind, epoch, step, loss: 1, nonFinite: false, computeMs: 1, allReduceMs: 1, optimizerMs: 0,
      samples: 1, optimizerStateBytes: 80, gradNorm: 0, error: '', checkpointObjectsJson: '', learningRate: 0.1, tokens: 0, ...extra,
    });
  }
  /** Answers a reconfigure with READY. */
  ready(): void {
    const r = this.last().reconfigure!;
    this.report('READY', r.epoch, r.step);
  }
  /** Answers a step with REDUCED. */
  reduced(extra: Partial<StepReport> = {}): void {
    const s = this.last().step!;
    this.report('REDUCED', s.epoch, s.step, extra);
  }
}

function options(o: Partial<CoordinatorOptions> = {}): CoordinatorOptions {
  return {
    jobId: 'job', configHash: 'h', totalSteps: 5, microBatch: 2,
    plan: new StepPlan(new EpochPlan([{ samples: 20 }], { seed: 0, globalBatch: 4 })),
    targetWorkers: 2, minWorkers: 2, heartbeatMs: 50, failureTimeoutMs: 60_000, stepDeadlineMs: 60_000,
    zeroStage: 0, checkpointEvery: 0, checkpointAtEnd: false, checkpoints: null, ledgerFile: null, ...o,
  };
}

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
    const a = new FakeWorker(c, 'a');
    const b = new FakeWorker(c, 'b');
    a.ready();
    b.ready();
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
    const a = new FakeWorker(c, 'a');
    const b = new FakeWorker(c, 'b');
    a.ready();
    b.ready();
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
    const a = new FakeWorker(c, 'a');
    const b = new FakeWorker(c, 'b');
    a.ready();
    b.ready();
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
    const a = new FakeWorker(c, 'a');
    const b = new FakeWorker(c, 'b');
    a.ready();
    b.ready();
    for (let i = 0; i < 2; i++) {
      a.reduced();
      b.reduced();
    }
    assert.equal(c.phase.kind, 'checkpointing');
    const ck = a.last().checkpoint!;
    a.report('CHECKPOINTED', ck.epoch, ck.step);
    b.report('CHECKPOINTED', ck.epoch, ck.step);
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
    for (const w of ws) w.report('CHECKPOINTED', w.last().checkpoint!.epoch, 2);
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
    const a = new FakeWorker(c, 'a');
    const b = new FakeWorker(c, 'b');
    a.ready();
    b.ready();
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
