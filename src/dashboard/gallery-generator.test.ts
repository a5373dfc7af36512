import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { configHash, parseConfig } from '../config/load.ts';
import { gallerySchema } from '../config/dashboard-schema.ts';
import { createOptimizer } from '../model/optimizer.ts';
import { partiLayout } from '../model/parti.ts';
import { saveTrainingState } from '../model/training-state.ts';
import { VitVqgan } from '../model/vit-vqgan.ts';
import { createTrainingMetrics } from '../observability/metrics.ts';
import { commitManifest, writeCheckpointObject } from '../storage/checkpoint-commit.ts';
import { openStore } from '../storage/open-store.ts';
import { GalleryGenerator } from './gallery-generator.ts';
import type { GallerySource } from './gallery-source.ts';
import { RunStateStore } from './run-state.ts';

// A very small Parti model (16x16 images, 4x4 image tokens): sampling takes milliseconds, so what
// is measured is the scheduling, on the real sampling thread.
const config = parseConfig({
  name: 'gallery-unit',
  model: {
    text: { vocabSize: 259, maxLength: 16, layers: 1, dModel: 16, heads: 2 },
    image: { layers: 1, dModel: 16, heads: 2 },
    tokenizer: { imageSize: 16, patchSize: 4, encoder: { layers: 1, dModel: 16, heads: 2 }, decoder: { layers: 1, dModel: 16, heads: 2 }, codebookSize: 16, codeDim: 4 },
  },
  data: { synthetic: { samples: 64, seed: 0 } },
  training: {
    seed: 0,
    tokenizer: { steps: 1, batchSize: 2, optimizer: { type: 'adamw', lr: 0.001 } },
    parti: { steps: 1, batchSize: 2, optimizer: { type: 'adamw', lr: 0.001 } },
  },
  runtime: { backend: 'wasm' },
});
const hash = configHash(config);
const dir = mkdtempSync(join(tmpdir(), 'parti-gallery-unit-'));
const source: GallerySource = { config, configHash: hash, checkpointStore: join(dir, 'checkpoints'), tokenizerDir: join(dir, 'tokenizer') };
const generators: GalleryGenerator[] = [];
after(async () => {
  for (const g of generators) await g.close();
  rmSync(dir, { recursive: true, force: true });
});

before(async () => {
  const vq = new VitVqgan(config.model.tokenizer);
  await saveTrainingState(source.tokenizerDir, {
    stage: 'tokenizer',
    step: 0,
    configHash: hash,
    layout: vq.layout.toJSON(),
    params: vq.layout.initialize(0),
    optimizer: createOptimizer(config.training.tokenizer.optimizer, vq.layout).exportState(),
    extra: {},
  });
  const store = openStore(source.checkpointStore);
  const params = partiLayout(config.model).initialize(0);
  // Steps 4, 8, 12 hold the model; step 20 a params.bin of the wrong size (a foreign model).
  for (const [step, p] of [[4, params], [8, params], [12, params], [20, params.subarray(0, 100)]] as const) {
    const ref = await writeCheckpointObject(store, step, 'params.bin', p);
    await commitManifest(store, { step, worldSize: 1, configHash: hash, config, cursor: null, rng: null, objects: [ref] }, { keep: 10 });
  }
  await store.close();
});

function generator(prompts: string[], everySteps: number, minIntervalSeconds = 0) {
  const store = new RunStateStore({ jobId: 'j', name: 'j', configHash: hash, galleryKeep: 20 });
  const metrics = createTrainingMetrics();
  const g = new GalleryGenerator({ store, metrics, gallery: gallerySchema.parse({ prompts, everySteps, minIntervalSeconds }), source, timeoutMs: 60_000 });
  generators.push(g);
  // The thread does not keep a process alive (the coordinator's servers do); this test's waits do.
  const idle = () => {
    const alive = setInterval(() => {}, 1000);
    return g.idle().finally(() => clearInterval(alive));
  };
  return { g, store, metrics, idle };
}

test('samples the first commit at or after each multiple of everySteps, one at a time, the newest waiting one wins', { timeout: 60_000 }, async () => {
  const { g, store, metrics, idle } = generator(['a red circle', 'two squares'], 4);
  g.warm();
  assert.equal(g.checkpointCommitted(2), false, 'step 2 is before the first multiple of 4');
  assert.equal(g.checkpointCommitted(4), true);
  // While step 4 samples: 6 is not due (next due 8); 8 waits; 12 replaces it (8 is skipped).
  assert.equal(g.checkpointCommitted(6), false);
  assert.equal(g.checkpointCommitted(8), true);
  assert.equal(g.checkpointCommitted(12), true);
  await idle();
  assert.deepEqual(g.counts, { done: 2, failed: 0, skipped: 1 });
  assert.deepEqual(store.gallery().map((i) => [i.step, i.prompt]), [[4, 'a red circle'], [4, 'two squares'], [12, 'a red circle'], [12, 'two squares']]);
  const item = store.gallery()[0]!;
  const png = PNG.sync.read(Buffer.from(store.galleryPng(item.id)!));
  assert.deepEqual([png.width, png.height], [128, 128]);
  assert.equal(item.attention.map((a) => a.token).join(''), 'a␣red␣circle');
  assert.equal(PNG.sync.read(Buffer.from(store.galleryPng(item.id, 0)!)).width, 64);
  const text = await metrics.registry.metrics();
  assert.match(text, /^parti_gallery_generations_total\{result="done"\} 2$/m);
  assert.match(text, /^parti_gallery_generations_total\{result="skipped"\} 1$/m);
  assert.deepEqual(store.events(0).events, [], 'no warning');
});

test('no generation starts sooner than minIntervalSeconds after the last one started: a due checkpoint waits for it', { timeout: 60_000 }, async () => {
  const { g, store, idle } = generator(['a red circle'], 4, 3);
  assert.equal(g.checkpointCommitted(4), true);
  await idle();
  const committed8 = Date.now();
  assert.equal(g.checkpointCommitted(8), true);
  await idle();
  // Step 8's generation started at committed8 or later: step 12 (due at once) waits until 3 s after.
  assert.equal(g.checkpointCommitted(12), true);
  await idle();
  assert.deepEqual(store.gallery().map((i) => i.step), [4, 8, 12]);
  assert.deepEqual(g.counts, { done: 3, failed: 0, skipped: 0 });
  // A lower bound only (a timer never fires early); without the wait this is two generations, well under 1 s.
  const stored12 = store.gallery().at(-1)!.time;
  assert.ok(stored12 - committed8 >= 3000, `step 12 stored ${stored12 - committed8} ms after step 8 was committed`);
});

test('a checkpoint retention deleted is skipped; a foreign one is a warning event; neither throws, and the next one is sampled', { timeout: 60_000 }, async () => {
  const { g, store, idle } = generator(['a red circle'], 4);
  // Step 16 was never there (as if retention deleted it): skipped, no event.
  assert.equal(g.checkpointCommitted(16), true);
  await idle();
  assert.deepEqual(g.counts, { done: 0, failed: 0, skipped: 1 });
  assert.deepEqual(store.events(0).events, []);
  // Step 20 holds parameters of another model: a warning, and the gallery goes on.
  assert.equal(g.checkpointCommitted(20), true);
  await idle();
  assert.deepEqual(g.counts, { done: 0, failed: 1, skipped: 1 });
  const events = store.events(0).events;
  assert.equal(events.length, 1);
  assert.equal(events[0]!.kind, 'warning');
  assert.match(events[0]!.message, /^gallery samples of step 20 failed: checkpoint 20: params\.bin has 100 parameters, the config's Parti model \d+$/);
  assert.equal(store.gallery().length, 0);
});

test('without prompts or a period the gallery is off and starts no thread', () => {
  for (const [prompts, every] of [[[], 4], [['x'], 0]] as const) {
    const { g } = generator([...prompts], every);
    assert.equal(g.enabled, false);
    g.warm();
    assert.equal(g.checkpointCommitted(100), false);
    assert.deepEqual(g.counts, { done: 0, failed: 0, skipped: 0 });
  }
});

test('a checkpoint store that does not answer does not hold the gallery: a failed generation ends within the deadline', { timeout: 45_000 }, async () => {
  // An S3 endpoint that accepts connections and never answers (a partitioned network).
  const sockets: Socket[] = [];
  const silent = createServer((socket) => sockets.push(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const env = { AWS_ENDPOINT_URL_S3: `http://127.0.0.1:${(silent.address() as { port: number }).port}`, AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: 'x', AWS_SECRET_ACCESS_KEY: 'y' };
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    const store = new RunStateStore({ jobId: 'j', name: 'j', configHash: hash, galleryKeep: 20 });
    // No tokenizer: the thread fails at once; then the store is asked whether the checkpoint is still there.
    const g = new GalleryGenerator({
      store,
      gallery: gallerySchema.parse({ prompts: ['a red circle'], everySteps: 4 }),
      source: { ...source, checkpointStore: 's3://silent-bucket/ckpt', tokenizerDir: join(dir, 'no-tokenizer') },
      timeoutMs: 3000,
    });
    generators.push(g);
    assert.equal(g.checkpointCommitted(4), true);
    const alive = setInterval(() => {}, 1000);
    try {
      await g.idle();
    } finally {
      clearInterval(alive);
    }
    assert.deepEqual(g.counts, { done: 0, failed: 1, skipped: 0 });
    assert.match(store.events(0).events[0]!.message, /^gallery samples of step 4 failed: .*no trained image tokenizer/);
  } finally {
    for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
    for (const socket of sockets) socket.destroy();
    await new Promise((r) => silent.close(r));
  }
});
