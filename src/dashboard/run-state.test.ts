import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RunStateStore } from './run-state.ts';
import type { LiveUpdate } from './api-schema.ts';
import { createTrainingMetrics } from '../observability/metrics.ts';
import { PartiError } from '../errors.ts';

function record(step: number) {
  return { step, time: step, loss: 1 / step, stepMs: 10, tokensPerSec: 100, lr: 0.1, worldSize: 1 };
}

test('a step at or below the last one (a resume from a checkpoint) drops the history after it', () => {
  const store = new RunStateStore({ jobId: 'j', name: 'j' });
  for (let s = 1; s <= 10; s++) store.recordStep(record(s));
  store.recordStep(record(7));
  assert.deepEqual(store.steps().map((r) => r.step), [1, 2, 3, 4, 5, 6, 7]);
  assert.equal(store.job().step, 7);
  store.recordStep(record(8));
  assert.deepEqual(store.steps().map((r) => r.step).slice(-2), [7, 8]);
});

test('the event log keeps the newest events, counts the dropped ones, and pages by seq', () => {
  const store = new RunStateStore({ jobId: 'j', name: 'j', eventsKept: 20 });
  for (let i = 1; i <= 100; i++) store.recordEvent({ kind: 'warning', message: `w${i}` });
  const all = store.events(0, 1000);
  assert.equal(all.lastSeq, 100);
  assert.ok(all.events.length <= 20 && all.events.length >= 18, String(all.events.length));
  assert.equal(all.dropped + all.events.length, 100);
  assert.equal(all.events.at(-1)!.message, 'w100');
  assert.deepEqual(store.events(97).events.map((e) => e.seq), [98, 99, 100]);
  assert.deepEqual(store.events(0, 2).events.map((e) => e.seq), [99, 100]);
});

test('worker state changes write join, failure and leave events and keep workers_up right', async () => {
  const metrics = createTrainingMetrics();
  let t = 1000;
  const store = new RunStateStore({ jobId: 'j', name: 'j', metrics, now: () => t });
  const updates: LiveUpdate[] = [];
  store.subscribe((u) => updates.push(u));
  store.upsertWorker({ id: 'a', host: 'h:1', rank: 0, state: 'training' });
  store.upsertWorker({ id: 'b', host: 'h:2', rank: 1, state: 'syncing' });
  assert.equal((await metrics.workersUp.get()).values[0]!.value, 2);
  store.upsertWorker({ id: 'b', state: 'failed', rank: undefined }, 'stream closed');
  store.upsertWorker({ id: 'a', state: 'left' });
  assert.equal((await metrics.workersUp.get()).values[0]!.value, 0);
  assert.equal((await metrics.workerFailuresTotal.get()).values[0]!.value, 1);
  const messages = store.events().events.map((e) => `${e.kind}: ${e.message}`);
  assert.deepEqual(messages, [
    'join: worker a (rank 0) joined from h:1',
    'join: worker b (rank 1) joined from h:2',
    'failure: worker b failed: stream closed',
    'leave: worker a (rank 0) left',
  ]);
  assert.equal(store.workers().find((w) => w.id === 'b')!.rank, undefined);

  // Heartbeats alone reach subscribers at most every 2 s per worker; other changes at once.
  store.upsertWorker({ id: 'c', host: 'h:3', rank: 2, state: 'training' });
  const count = () => updates.filter((u) => u.type === 'worker' && u.worker.id === 'c').length;
  assert.equal(count(), 1);
  for (let i = 0; i < 10; i++) {
    t += 100;
    store.upsertWorker({ id: 'c', lastHeartbeat: t });
  }
  assert.equal(count(), 1);
  t += 1100;
  store.upsertWorker({ id: 'c', lastHeartbeat: t });
  assert.equal(count(), 2);
  store.upsertWorker({ id: 'c', lastHeartbeat: t + 1, step: 5 });
  assert.equal(count(), 3);
  assert.equal(store.workers().find((w) => w.id === 'c')!.lastHeartbeat, t + 1);
});

test('a throwing subscriber never reaches the caller', () => {
  const store = new RunStateStore({ jobId: 'j', name: 'j' });
  let seen = 0;
  store.subscribe(() => {
    throw new Error('socket closed');
  });
  store.subscribe(() => seen++);
  store.recordStep(record(1));
  assert.ok(seen >= 1);
});

test('skipped samples are counted by reason; a reason must be a slug (it is a metric label)', () => {
  const store = new RunStateStore({ jobId: 'j', name: 'j' });
  store.recordSkippedSample({ reason: 'decode', shard: 'a.tar', key: '1' });
  store.recordSkippedSample({ reason: 'decode' });
  assert.deepEqual(store.skipped(), { samples: { decode: 2 }, steps: 0 });
  assert.equal(store.job().skippedSamples, 2);
  assert.throws(() => store.recordSkippedSample({ reason: 'Bad Reason!' }), (e: unknown) => e instanceof PartiError && /short lowercase slug/.test(e.message));
});

test('the gallery keeps the newest items and serves their PNGs by id', () => {
  const store = new RunStateStore({ jobId: 'j', name: 'j', galleryKeep: 2 });
  const png = (n: number) => new Uint8Array([n]);
  const ids = [1, 2, 3].map((n) => store.addGalleryItem({ step: n, prompt: `p${n}`, png: png(n), attention: [{ token: 't', png: png(10 + n) }] }));
  assert.deepEqual(store.gallery().map((g) => g.prompt), ['p2', 'p3']);
  assert.equal(store.galleryPng(ids[0]!), undefined);
  assert.deepEqual(store.galleryPng(ids[2]!), png(3));
  assert.deepEqual(store.galleryPng(ids[2]!, 0), png(13));
  assert.equal(store.galleryPng(ids[2]!, 1), undefined);
});

test('a failed job logs an error event with its reason', () => {
  const store = new RunStateStore({ jobId: 'j', name: 'j' });
  store.setJob({ state: 'failed', error: 'fewer than minWorkers for 60 s' });
  assert.equal(store.job().error, 'fewer than minWorkers for 60 s');
  assert.deepEqual(store.events().events.map((e) => [e.kind, e.message]), [['error', 'job failed: fewer than minWorkers for 60 s']]);
});
