// The coordinator and workers in one process: the real gRPC coordinator service on 127.0.0.1 and
// in-memory collectives, with the linear test model. Checks the step protocol fast: equivalence of
// world sizes, determinism, non-finite steps skipped everywhere, ZeRO-1, and a refused peer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CollectiveNode } from '../src/collective/collective-node.ts';
import { InMemoryHub } from '../src/collective/in-memory-transport.ts';
import { Coordinator } from '../src/coordinator/coordinator.ts';
import { startCoordinatorServer } from '../src/coordinator/coordinator-server.ts';
import { readLedger } from '../src/coordinator/ledger.ts';
import { StepPlan } from '../src/coordinator/step-samples.ts';
import { EpochPlan } from '../src/data/epoch-plan.ts';
import { LinearModel } from '../src/worker/linear-model.ts';
import { WorkerRuntime } from '../src/worker/worker-runtime.ts';
import { PartiError } from '../src/errors.ts';
import { StoreCheckpointCommitter } from '../src/coordinator/checkpoint-committer.ts';
import { FileStore } from '../src/storage/file-store.ts';
import { listCheckpointSteps } from '../src/storage/checkpoint-load.ts';
import { CheckpointShards } from '../src/worker/checkpoint-shards.ts';
import { CheckpointWriter } from '../src/storage/checkpoint-writer.ts';

interface Run {
  params: Float32Array[];
  ledger: ReturnType<typeof readLedger>;
  skipped: number;
  optimizerStateBytes: number[];
  /** Committed checkpoints (with checkpointEvery), in commit order, and where they are. */
  checkpoints: number[];
  store: FileStore | null;
  failedSaves: number;
  /** Learning rate of each committed step's summary. */
  learningRates: number[];
}

async function runJob(workers: number, opts: { zeroStage?: 0 | 1; nonFinite?: number[]; steps?: number; checkpointEvery?: number; failingUploads?: boolean } = {}): Promise<Run> {
  const dir = mkdtempSync(join(tmpdir(), 'parti-orch-'));
  const steps = opts.steps ?? 12;
  const plan = new StepPlan(new EpochPlan([{ samples: 40 }, { samples: 56 }], { seed: 3, globalBatch: 12 }));
  const store = opts.checkpointEvery ? new FileStore(join(dir, 'checkpoints')) : null;
  const coordinator = new Coordinator({
    jobId: 'job',
    configHash: 'hash',
    totalSteps: steps,
    microBatch: 4,
    plan,
    targetWorkers: workers,
    minWorkers: workers,
    heartbeatMs: 100,
    failureTimeoutMs: 2000,
    stepDeadlineMs: 10_000,
    zeroStage: opts.zeroStage ?? 0,
    checkpointEvery: opts.checkpointEvery ?? 0,
    checkpointAtEnd: store !== null,
    checkpoints: store ? new StoreCheckpointCommitter(store, { configHash: 'hash', config: {}, keep: 2, plan, seed: 0 }) : null,
    ledgerFile: join(dir, 'ledger.jsonl'),
  });
  const server = await startCoordinatorServer(coordinator, '127.0.0.1', 0, 1 << 20);
  const hub = new InMemoryHub();
  // Upload threads loaded first: in one process, threads that load at once (tsx compiling the
  // store modules) can hold up the heartbeat threads past the failure timeout.
  // Failing uploads: the workers' upload threads write under a path that is a file (every save fails).
  const blocked = join(dir, 'blocked');
  if (opts.failingUploads) writeFileSync(blocked, 'not a directory');
  const shards = Array.from({ length: workers }, () =>
    store ? new CheckpointShards(store, 'hash', opts.failingUploads ? { writer: new CheckpointWriter({ url: join(blocked, 'checkpoints'), transfer: false }) } : {}) : null,
  );
  await Promise.all(shards.map((s) => s?.start()));
  const runtimes = Array.from({ length: workers }, (_, i) => {
    return new WorkerRuntime({
      coordinator: server.address,
      jobId: 'job',
      configHash: 'hash',
      name: `w${i}`,
      createModel: async () => new LinearModel({ dim: 10, seed: 5, lr: 0.05, nonFiniteSamples: opts.nonFinite }),
      collective: new CollectiveNode(hub.transport(), { jobId: 'job', chunkBytes: 16 }),
      seed: 0,
      zeroStage: opts.zeroStage ?? 0,
      heartbeatMs: 100,
      rpcDeadlineMs: 2000,
      stepDeadlineMs: 5000,
      maxMessageBytes: 1 << 20,
      reconnectMs: 2000,
      store: shards[i]!,
    });
  });
  const checkpoints: number[] = [];
  coordinator.subscribe((e) => {
    if (e.type === 'event' && e.event.checkpoint) checkpoints.push(e.event.checkpoint.step);
  });
  const bytes: number[] = [];
  const learningRates: number[] = [];
  coordinator.subscribe((e) => {
    if (e.type === 'step') bytes.splice(0, bytes.length, ...e.step.optimizerStateBytes);
    if (e.type === 'step') learningRates.push(e.step.learningRate);
  });
  try {
    const exits = await Promise.all(runtimes.map((r) => r.run()));
    assert.ok(exits.every((e) => e.applied === steps), `every worker applied ${steps} steps`);
    return { params: runtimes.map((r) => r.params().slice()), ledger: readLedger(join(dir, 'ledger.jsonl')), skipped: coordinator.skippedSteps, optimizerStateBytes: bytes, checkpoints, store, failedSaves: coordinator.failedSaves, learningRates };
  } finally {
    coordinator.close();
    await server.close();
  }
}

test('1, 2 and 3 workers reach the same parameters; the same world size is bitwise reproducible', { timeout: 60_000 }, async () => {
  const one = await runJob(1);
  const two = await runJob(2);
  const three = await runJob(3);
  const twoAgain = await runJob(2);
  assert.deepEqual(two.params[0], two.params[1], 'ranks agree bitwise');
  assert.deepEqual(three.params[0], three.params[2]);
  assert.deepEqual(twoAgain.params[0], two.params[0], 'bitwise reproducible across runs');
  assert.deepEqual(two.learningRates, new Array(12).fill(0.05), 'step summaries carry the learning rate applied');
  for (const other of [two, three]) {
    for (let i = 0; i < one.params[0]!.length; i++) {
      assert.ok(Math.abs(one.params[0]![i]! - other.params[0]![i]!) < 1e-4, `param ${i}: ${one.params[0]![i]} vs ${other.params[0]![i]}`);
    }
  }
  assert.notDeepEqual(one.params[0], new LinearModel({ dim: 10, seed: 5, lr: 0.05 }).params(), 'training changed the parameters');
  // exactly once: 12 steps of 12 = 144 samples = one and a half epochs of 96
  assert.equal(one.ledger.length, 12);
  const epoch0 = one.ledger.flatMap((e) => e.samples).filter(([epoch]) => epoch === 0).map(([, id]) => id).sort((a, b) => a - b);
  assert.deepEqual(epoch0, Array.from({ length: 96 }, (_, i) => i));
});

test('a non-finite gradient on one rank skips the step on every rank and is counted', { timeout: 30_000 }, async () => {
  const clean = await runJob(2, { steps: 4 });
  const bad = await runJob(2, { steps: 4, nonFinite: [clean.ledger[1]!.samples[0]![1]] });
  assert.equal(bad.skipped, 1);
  assert.deepEqual(bad.ledger.map((e) => e.skipped), [false, true, false, false]);
  assert.deepEqual(bad.params[0], bad.params[1]);
  for (const x of bad.params[0]!) assert.ok(Number.isFinite(x));
  assert.notDeepEqual(bad.params[0], clean.params[0]);
});

test('ZeRO-1 reaches the parameters of the unsharded run; optimizer state per worker falls to 1/N', { timeout: 30_000 }, async () => {
  const plain = await runJob(2);
  const zero = await runJob(2, { zeroStage: 1 });
  for (let i = 0; i < plain.params[0]!.length; i++) assert.ok(Math.abs(plain.params[0]![i]! - zero.params[0]![i]!) < 1e-5);
  assert.deepEqual(zero.params[0], zero.params[1]);
  const full = plain.optimizerStateBytes[0]!;
  assert.equal(full, 11 * 2 * 4);
  assert.deepEqual(zero.optimizerStateBytes, [5 * 8, 6 * 8]);
});

test('asynchronous checkpoints every step (ZeRO-1): training is unchanged, every step is committed, the last one loads to the final state', { timeout: 60_000 }, async () => {
  const plain = await runJob(2, { zeroStage: 1, steps: 8 });
  const saved = await runJob(2, { zeroStage: 1, steps: 8, checkpointEvery: 1 });
  assert.deepEqual(saved.params[0], plain.params[0], 'bitwise the same parameters as without checkpoints');
  assert.deepEqual(saved.checkpoints, [1, 2, 3, 4, 5, 6, 7, 8], 'steps 1-7 while training, 8 at the end');
  assert.deepEqual(await listCheckpointSteps(saved.store!), [7, 8], 'keep 2');
  const loaded = await new CheckpointShards(saved.store!, 'hash').load(8, 0, saved.params[0]!.length);
  assert.deepEqual(loaded.params, saved.params[0]);
  assert.equal(loaded.optimizer.updates, 8);
});

test('failed uploads: reported, nothing committed, every checkpoint step tries again, training goes on unchanged', { timeout: 60_000 }, async () => {
  const plain = await runJob(2, { steps: 6 });
  const failing = await runJob(2, { steps: 6, checkpointEvery: 2, failingUploads: true });
  assert.deepEqual(failing.params[0], plain.params[0], 'the same parameters as without checkpoints');
  assert.deepEqual(failing.checkpoints, [], 'nothing committed');
  assert.equal(failing.failedSaves, 3, 'the saves of steps 2 and 4 and the final one at 6 each failed');
  assert.deepEqual(await listCheckpointSteps(failing.store!), []);
});

test('a worker of another job or config is refused with a clear error on both sides', { timeout: 30_000 }, async () => {
  const coordinator = new Coordinator({
    jobId: 'job', configHash: 'hash', totalSteps: 1, microBatch: 2, plan: new StepPlan(new EpochPlan([{ samples: 4 }], { seed: 0, globalBatch: 2 })),
    targetWorkers: 1, minWorkers: 1, heartbeatMs: 100, failureTimeoutMs: 1000, stepDeadlineMs: 1000, zeroStage: 0,
    checkpointEvery: 0,
    checkpointAtEnd: false, checkpoints: null, ledgerFile: null,
  });
  const server = await startCoordinatorServer(coordinator, '127.0.0.1', 0, 1 << 20);
  try {
    const hub = new InMemoryHub();
    const worker = new WorkerRuntime({
      coordinator: server.address, jobId: 'job', configHash: 'other', name: 'stranger',
      createModel: async () => new LinearModel({ dim: 2, seed: 0, lr: 0.1 }),
      collective: new CollectiveNode(hub.transport(), { jobId: 'job' }),
      seed: 0, zeroStage: 0, heartbeatMs: 100, rpcDeadlineMs: 1000, stepDeadlineMs: 1000, maxMessageBytes: 1 << 20, reconnectMs: 1000, store: null,
    });
    await assert.rejects(worker.run(), (err: unknown) => err instanceof PartiError && err.code === 'refused' && /config hash other differs from this job's hash/.test(err.message));
    assert.ok(coordinator.events.some((e) => e.kind === 'refused' && /stranger/.test(e.message)));
  } finally {
    coordinator.close();
    await server.close();
  }
});
