import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { StepSummary } from '../coordinator/coordinator.ts';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { busBandwidth, bridgeCoordinator, startCoordinatorDashboard, stepRecordOf } from './coordinator-bridge.ts';
import { scriptedCoordinator } from './coordinator-source-fixture.ts';
import { commitManifest, writeCheckpointObject } from '../storage/checkpoint-commit.ts';
import { openStore } from '../storage/open-store.ts';
import { dashboardSchema } from '../config/dashboard-schema.ts';
import { stepRecordSchema } from './api-schema.ts';
import { RunStateStore } from './run-state.ts';
import { createTrainingMetrics } from '../observability/metrics.ts';

function summary(extra: Record<string, unknown> = {}): StepSummary {
  return {
    step: 9,
    epoch: 1,
    worldSize: 4,
    loss: 2.5,
    skipped: false,
    computeMs: 700,
    allReduceMs: 100,
    optimizerMs: 20,
    stepMs: 1000,
    samples: 16,
    tokens: 1280,
    gradNorm: 1.2,
    learningRate: 1e-3,
    optimizerStateBytes: [8, 8, 8, 8],
    committedAt: 1_700_000_000_000,
    allReduceBytes: 0,
    allReduceOp: 'all-reduce',
    skippedSamples: {},
    ...extra,
  } as StepSummary;
}

test('bus bandwidth as nccl-tests defines it: algbw x 2(N-1)/N for all-reduce, x (N-1)/N for reduce-scatter', () => {
  // 100 MB in 100 ms: algbw 1 GB/s.
  assert.equal(busBandwidth(100e6, 100, 2), 1e9);
  assert.equal(busBandwidth(100e6, 100, 4), 1.5e9);
  assert.equal(busBandwidth(100e6, 100, 4, 'reduce-scatter'), 0.75e9);
  // One rank moves nothing over a link; no bytes or no time says nothing.
  for (const [b, ms, n] of [[100e6, 100, 1], [0, 100, 2], [100e6, 0, 2]] as const) assert.equal(busBandwidth(b, ms, n), undefined);
});

test('step records carry the all-reduce bytes and busbw when the step summary has them', () => {
  const plain = stepRecordSchema.parse(stepRecordOf(summary()));
  assert.equal(plain.step, 10);
  assert.equal(plain.busBwBytesPerSec, undefined);
  assert.equal(plain.allReduceBytes, undefined);
  const r = stepRecordSchema.parse(stepRecordOf(summary({ allReduceBytes: 50e6, allReduceOp: 'all-reduce' })));
  assert.equal(r.allReduceBytes, 50e6);
  assert.equal(r.busBwBytesPerSec, (50e6 / 0.1) * 1.5);
  const z1 = stepRecordOf(summary({ allReduceBytes: 50e6, allReduceOp: 'reduce-scatter' }));
  assert.equal(z1.busBwBytesPerSec, (50e6 / 0.1) * 0.75);
  // Not reported (0): no busbw rather than a false 0.
  assert.equal(stepRecordOf(summary({ allReduceBytes: 0 })).busBwBytesPerSec, undefined);
});

test('the bridge feeds skipped samples by reason and busbw into the store and /metrics', async () => {
  const { source, emit: send } = scriptedCoordinator({ step: 10, workers: 4 });
  const metrics = createTrainingMetrics();
  const store = new RunStateStore({ jobId: 'j', name: 'j', metrics, autoEvents: false });
  const stop = bridgeCoordinator(source, store, { pollMs: 60_000 });
  try {
    const emit = (s: StepSummary) => send({ type: 'step', step: s });
    emit(summary({ allReduceBytes: 50e6, skippedSamples: { decode: 2, truncated: 1 } }));
    emit(summary({ step: 10, allReduceBytes: 50e6, skippedSamples: {} }));
    emit(summary({ step: 11, allReduceBytes: 50e6, skippedSamples: { decode: 3, 'Bad Caption!': 1, bogus: -1 } }));
    assert.deepEqual(store.skipped().samples, { decode: 5, truncated: 1, 'bad-caption': 1 });
    assert.equal(store.job().skippedSamples, 7);
    const events = store.events(0).events.filter((e) => e.kind === 'skipped-sample');
    assert.deepEqual(events.map((e) => [e.step, e.message]), [
      [10, '3 samples skipped in step 10: 2 decode, 1 truncated'],
      [12, '4 samples skipped in step 12: 3 decode, 1 bad-caption'],
    ]);
    assert.equal(store.steps().at(-1)!.busBwBytesPerSec, 7.5e8);
    const text = await metrics.registry.metrics();
    assert.match(text, /^parti_skipped_samples_total\{reason="decode"\} 5$/m);
    assert.match(text, /^parti_skipped_samples_total\{reason="bad-caption"\} 1$/m);
    assert.match(text, /^parti_allreduce_busbw_bytes_per_second 750000000$/m);
  } finally {
    stop();
  }
});

test('a coordinator dashboard lists the checkpoints already in its store, and marks the ones retention deletes', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'parti-bridge-'));
  const url = join(dir, 'checkpoints');
  const objects = openStore(url);
  const commit = async (step: number) => {
    const ref = await writeCheckpointObject(objects, step, 'params.bin', new Float32Array(step));
    await commitManifest(objects, { step, worldSize: 2, configHash: 'h', config: {}, cursor: null, rng: null, objects: [ref] }, { keep: 2 });
  };
  await commit(10);
  await commit(20);
  const { source, emit } = scriptedCoordinator({ step: 20, ring: ['a', 'b'] });
  const dash = await startCoordinatorDashboard(source, dashboardSchema.parse({ port: 0 }), { name: 'j', stage: 'linear-test', checkpointStore: url });
  try {
    const until = async (what: string, ok: () => boolean) => {
      const deadline = Date.now() + 10_000;
      while (!ok()) {
        assert.ok(Date.now() < deadline, what);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    await until('the committed checkpoints listed', () => dash.store.checkpoints().length === 2);
    assert.deepEqual(dash.store.checkpoints().map((c) => [c.step, c.bytes, c.worldSize, c.deleted, c.uri]), [
      [10, 40, 2, undefined, `${url}/manifests/000000000010.json`],
      [20, 80, 2, undefined, `${url}/manifests/000000000020.json`],
    ]);
    assert.equal(dash.store.job().lastCheckpointStep, 20);
    assert.deepEqual(dash.store.events(0).events.filter((e) => e.kind === 'checkpoint'), [], 'found, not committed now: no events');
    // Step 30 commits (keep 2 deletes step 10); the coordinator says so.
    await commit(30);
    const at = Date.now();
    const checkpoint = { step: 30, bytes: 120, startedAt: at - 1500, snapshotMs: 12 };
    emit({ type: 'event', event: { at, kind: 'checkpoint', message: 'checkpoint of step 30 committed (1 objects)', checkpoint } });
    await until('step 10 marked deleted', () => dash.store.checkpoints().some((c) => c.deleted));
    assert.deepEqual(dash.store.checkpoints().map((c) => [c.step, c.deleted ?? false]), [[10, true], [20, false], [30, false]]);
    const c30 = dash.store.checkpoints().at(-1)!;
    assert.deepEqual([c30.bytes, c30.saveSeconds, c30.snapshotSeconds], [120, 1.5, 0.012]);
    assert.equal(dash.gallery, null, 'the linear test model has no gallery');
  } finally {
    await dash.close();
    await objects.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a manifest already in the store that cannot be read hides only itself from the list', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'parti-bridge-'));
  const url = join(dir, 'checkpoints');
  const objects = openStore(url);
  for (const step of [10, 20, 30]) {
    const ref = await writeCheckpointObject(objects, step, 'params.bin', new Float32Array(step));
    await commitManifest(objects, { step, worldSize: 2, configHash: 'h', config: {}, cursor: null, rng: null, objects: [ref] }, { keep: 5 });
  }
  // step 10's manifest is not one (another tool's, or cut short)
  writeFileSync(join(url, 'manifests', '000000000010.json'), '{"not": "a manifest"');
  const { source } = scriptedCoordinator({ step: 30, ring: ['a', 'b'] });
  const dash = await startCoordinatorDashboard(source, dashboardSchema.parse({ port: 0 }), { name: 'j', stage: 'linear-test', checkpointStore: url });
  try {
    const deadline = Date.now() + 10_000;
    while (dash.store.checkpoints().length < 2) {
      assert.ok(Date.now() < deadline, `listed: ${JSON.stringify(dash.store.checkpoints().map((c) => c.step))}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual(dash.store.checkpoints().map((c) => c.step), [20, 30]);
    assert.equal(dash.store.job().lastCheckpointStep, 30);
  } finally {
    await dash.close();
    await objects.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
