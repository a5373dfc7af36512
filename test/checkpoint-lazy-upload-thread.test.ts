// The coordinator and workers in one process (the real gRPC coordinator service on 127.0.0.1, in-memory
// collectives, the linear test model): a worker that never checkpoints never starts its checkpoint
// upload thread; one that does starts it with its first save, and the checkpoint commits and loads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CollectiveNode } from '../src/collective/collective-node.ts';
import { InMemoryHub } from '../src/collective/in-memory-transport.ts';
import { Coordinator } from '../src/coordinator/coordinator.ts';
import { startCoordinatorServer } from '../src/coordinator/coordinator-server.ts';
import { StoreCheckpointCommitter } from '../src/coordinator/checkpoint-committer.ts';
import { StepPlan } from '../src/coordinator/step-samples.ts';
import { EpochPlan } from '../src/data/epoch-plan.ts';
import { LinearModel } from '../src/worker/linear-model.ts';
import { WorkerRuntime } from '../src/worker/worker-runtime.ts';
import { CheckpointShards } from '../src/worker/checkpoint-shards.ts';
import { CheckpointWriter } from '../src/storage/checkpoint-writer.ts';
import { FileStore } from '../src/storage/file-store.ts';
import { listCheckpointSteps } from '../src/storage/checkpoint-load.ts';

/**
 * Runs a job of two workers. `untilHeartbeats`: the job has no step limit to speak of and is asked
 * to stop once every worker has sent that many heartbeats, so that each heartbeat thread has
 * loaded (the point at which workers used to start their upload threads) well before the end.
 */
async function runJob(opts: { checkpointEvery: number; atEnd: boolean; steps: number; untilHeartbeats?: number }) {
  const dir = mkdtempSync(join(tmpdir(), 'parti-lazy-thread-'));
  const store = new FileStore(join(dir, 'checkpoints'));
  const plan = new StepPlan(new EpochPlan([{ samples: 48 }], { seed: 3, globalBatch: 8 }));
  const coordinator = new Coordinator({
    jobId: 'job',
    configHash: 'hash',
    totalSteps: opts.steps,
    microBatch: 4,
    plan,
    targetWorkers: 2,
    minWorkers: 2,
    heartbeatMs: 100,
    failureTimeoutMs: 5000,
    stepDeadlineMs: 10_000,
    zeroStage: 1,
    checkpointEvery: opts.checkpointEvery,
    checkpointAtEnd: opts.atEnd,
    checkpoints: new StoreCheckpointCommitter(store, { configHash: 'hash', config: {}, keep: 2, plan, seed: 0 }),
    ledgerFile: null,
  });
  const server = await startCoordinatorServer(coordinator, '127.0.0.1', 0, 1 << 20);
  const hub = new InMemoryHub();
  const writers = [0, 1].map(() => new CheckpointWriter({ url: store.url, transfer: false }));
  // Whether any upload thread was running when a step ended, per worker.
  const threadSeen = [false, false];
  const sample = () => writers.forEach((w, i) => (threadSeen[i] ||= w.threadRunning));
  coordinator.subscribe((e) => {
    if (e.type === 'step') sample();
  });
  const beats = new Map<string, number>();
  const heartbeat = coordinator.heartbeat.bind(coordinator);
  coordinator.heartbeat = (workerId: string, state: string) => {
    beats.set(workerId, (beats.get(workerId) ?? 0) + 1);
    sample();
    if (opts.untilHeartbeats && beats.size === 2 && [...beats.values()].every((n) => n >= opts.untilHeartbeats!)) coordinator.requestStop('heard every worker often enough');
    return heartbeat(workerId, state);
  };
  const runtimes = writers.map(
    (writer, i) =>
      new WorkerRuntime({
        coordinator: server.address,
        jobId: 'job',
        configHash: 'hash',
        name: `w${i}`,
        createModel: async () => new LinearModel({ dim: 10, seed: 5, lr: 0.05 }),
        collective: new CollectiveNode(hub.transport(), { jobId: 'job', chunkBytes: 16 }),
        seed: 0,
        zeroStage: 1,
        heartbeatMs: 100,
        rpcDeadlineMs: 2000,
        stepDeadlineMs: 10_000,
        maxMessageBytes: 1 << 20,
        reconnectMs: 2000,
        store: new CheckpointShards(store, 'hash', { writer }),
      }),
  );
  try {
    const exits = await Promise.all(runtimes.map((r) => r.run()));
    if (opts.untilHeartbeats) assert.ok(exits[0]!.applied > 0 && exits[0]!.applied < opts.steps && exits[1]!.applied === exits[0]!.applied, `stopped after some steps: ${exits.map((e) => e.applied)}`);
    else assert.ok(exits.every((e) => e.applied === opts.steps), `every worker applied ${opts.steps} steps`);
    return { writers, threadSeen, committed: await listCheckpointSteps(store), failedSaves: coordinator.failedSaves, heartbeats: Math.min(...beats.values()) };
  } finally {
    coordinator.close();
    await server.close();
    for (const w of writers) await w.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('a worker that never checkpoints starts no upload thread; one that does starts it at its first save', { timeout: 60_000 }, async () => {
  const never = await runJob({ checkpointEvery: 0, atEnd: false, steps: 1_000_000, untilHeartbeats: 5 });
  assert.ok(never.heartbeats >= 5);
  assert.deepEqual(never.committed, []);
  assert.deepEqual(never.threadSeen, [false, false], 'no upload thread while the job ran');
  for (const w of never.writers) {
    assert.equal(w.threadRunning, false);
    assert.deepEqual(w.state, { state: 'closed' }, 'the worker closed a writer that never started a thread');
  }

  const saving = await runJob({ checkpointEvery: 2, atEnd: true, steps: 5 });
  assert.equal(saving.failedSaves, 0);
  assert.deepEqual(saving.committed, [4, 5], 'checkpoints 2 and 4 then the final 5, keep 2');
  assert.deepEqual(saving.threadSeen, [true, true], 'each worker started its thread when it saved');
  for (const w of saving.writers) {
    assert.equal(w.lastFailure, null);
    assert.equal(w.threadRunning, false, 'closed with the worker');
  }
});
