import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { createTrainingMetrics } from '../observability/metrics.ts';
import { commitManifest, writeCheckpointObject } from '../storage/checkpoint-commit.ts';
import { listCheckpointSteps } from '../storage/checkpoint-load.ts';
import { isCheckpointObjectKey, stepOfObjectKey } from '../storage/checkpoint-manifest.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { openStore } from '../storage/open-store.ts';
import { GalleryArchive, galleryIndexKey, loadGallery, pruneGallery, saveGalleryStep, type GallerySampleData } from './gallery-archive.ts';
import { RunStateStore } from './run-state.ts';
import { galleryResponseSchema } from './api-schema.ts';
import { startCoordinatorDashboard } from './coordinator-bridge.ts';
import { scriptedCoordinator } from './coordinator-source-fixture.ts';
import { dashboardSchema } from '../config/dashboard-schema.ts';

const root = mkdtempSync(join(tmpdir(), 'parti-gallery-archive-'));
after(() => rmSync(root, { recursive: true, force: true }));
let dirs = 0;
function newStore(): { store: ObjectStore; dir: string } {
  const dir = join(root, `s${++dirs}`);
  return { store: openStore(dir), dir };
}

/** A real PNG, w x w of one grey level, so that samples differ byte for byte. */
function png(level: number, w = 4): Uint8Array {
  const p = new PNG({ width: w, height: w });
  for (let i = 0; i < w * w; i++) p.data.set([level, level, level, 255], i * 4);
  return new Uint8Array(PNG.sync.write(p));
}

/** The samples of one step: one per prompt, each with an attention map per character. */
function samples(step: number, prompts = ['ab', 'cd']): GallerySampleData[] {
  return prompts.map((prompt, i) => ({
    prompt,
    png: png((step * 10 + i) % 250, 8),
    width: 8,
    height: 8,
    attention: [...prompt].map((token, j) => ({ token, png: png((step + i + j) % 250) })),
  }));
}

const HASH = 'cafe';

test('round trip: what is saved loads back, oldest first, with its time, PNGs and attention maps', async () => {
  const { store } = newStore();
  try {
    await saveGalleryStep(store, 200, samples(200), { configHash: HASH, time: 1000 });
    await saveGalleryStep(store, 100, samples(100), { configHash: HASH, time: 500 });
    const r = await loadGallery(store, { keep: 48, configHash: HASH });
    assert.deepEqual(r.skipped, []);
    assert.equal(r.late, false);
    const expected = [...samples(100).map((s) => ({ ...s, step: 100, time: 500 })), ...samples(200).map((s) => ({ ...s, step: 200, time: 1000 }))];
    assert.deepEqual(
      r.samples.map((s) => ({ ...s, png: Buffer.from(s.png), attention: s.attention!.map((a) => ({ token: a.token, png: Buffer.from(a.png) })) })),
      expected.map((s) => ({ ...s, png: Buffer.from(s.png), attention: s.attention!.map((a) => ({ token: a.token, png: Buffer.from(a.png) })) })),
    );
    // Into the dashboard's state: the API's items and PNGs, the sample's own time.
    const state = new RunStateStore({ jobId: 'j', name: 'j', galleryKeep: 48, now: () => 99_999 });
    const archive = new GalleryArchive({ store: openStore(store.url), configHash: HASH });
    await archive.loadInto(state, { keep: state.galleryKeep() });
    await archive.close();
    const items = state.gallery();
    assert.deepEqual(items.map((i) => [i.step, i.prompt, i.time, i.width, i.attention.map((a) => a.token).join('')]), [
      [100, 'ab', 500, 8, 'ab'],
      [100, 'cd', 500, 8, 'cd'],
      [200, 'ab', 1000, 8, 'ab'],
      [200, 'cd', 1000, 8, 'cd'],
    ]);
    assert.deepEqual(Buffer.from(state.galleryPng(items[3]!.id)!), Buffer.from(samples(200)[1]!.png));
    assert.deepEqual(Buffer.from(state.galleryPng(items[3]!.id, 1)!), Buffer.from(samples(200)[1]!.attention![1]!.png));
  } finally {
    await store.close();
  }
});

test('the limit: only the newest `keep` items are read; later steps than maxStep and other configs are ignored', async () => {
  const { store } = newStore();
  try {
    for (const step of [10, 20, 30]) await saveGalleryStep(store, step, samples(step), { configHash: HASH, time: step });
    await saveGalleryStep(store, 25, samples(25), { configHash: 'another-config', time: 25 });
    const r = await loadGallery(store, { keep: 3, configHash: HASH });
    assert.deepEqual(r.samples.map((s) => [s.step, s.prompt]), [[20, 'cd'], [30, 'ab'], [30, 'cd']]);
    assert.deepEqual(r.ignoredSteps, [25]);
    // Resumed from step 20: step 30's samples belong to a history that no longer counts.
    const resumed = await loadGallery(store, { keep: 3, configHash: HASH, maxStep: 20 });
    assert.deepEqual(resumed.samples.map((s) => [s.step, s.prompt]), [[10, 'cd'], [20, 'ab'], [20, 'cd']]);
    assert.deepEqual(resumed.ignoredSteps, [30, 25]);
    assert.deepEqual((await loadGallery(store, { keep: 0, configHash: HASH })).samples, []);
  } finally {
    await store.close();
  }
});

test('a corrupt index is skipped and counted, naming its key; a step with PNGs but no index does not exist', async () => {
  const { store, dir } = newStore();
  try {
    for (const step of [10, 20, 30]) await saveGalleryStep(store, step, samples(step), { configHash: HASH, time: step });
    writeFileSync(join(dir, galleryIndexKey(20)), '{"format": "parti-gallery", "ver');
    writeFileSync(join(dir, galleryIndexKey(30)), JSON.stringify({ format: 'parti-gallery', version: 1, step: 30, configHash: HASH, time: 1, items: [{ prompt: 'x', image: { name: '../../manifests/x.png', size: 3 }, attention: [] }] }));
    // A save cut short before its index: PNGs only.
    await store.put('gallery/000000000040/abc/0.png', png(1));
    const metrics = createTrainingMetrics();
    const state = new RunStateStore({ jobId: 'j', name: 'j', galleryKeep: 48 });
    const archive = new GalleryArchive({ store: openStore(dir), configHash: HASH, metrics });
    const r = await archive.loadInto(state, { keep: 48 });
    await archive.close();
    assert.deepEqual(r.skipped.map((s) => s.key), [galleryIndexKey(30), galleryIndexKey(20)]);
    assert.match(r.skipped[1]!.reason, /JSON/);
    assert.match(r.skipped[0]!.reason, /not a gallery index \(items\.0\.image\.name/);
    assert.deepEqual(state.gallery().map((i) => [i.step, i.prompt]), [[10, 'ab'], [10, 'cd']]);
    assert.match(await metrics.registry.metrics(), /^parti_gallery_store_errors_total\{op="read"\} 2$/m);
  } finally {
    await store.close();
  }
});

test('an item whose PNG is missing or cut short is skipped (the key named); the rest of its step loads', async () => {
  const { store, dir } = newStore();
  try {
    await saveGalleryStep(store, 10, samples(10, ['ab', 'cd', 'ef']), { configHash: HASH, time: 10 });
    const keys = (await store.list('gallery/')).map((o) => o.key);
    const attention = keys.find((k) => k.endsWith('/0-a1.png'))!;
    const image = keys.find((k) => k.endsWith('/2.png'))!;
    unlinkSync(join(dir, attention));
    writeFileSync(join(dir, image), Buffer.from(samples(10, ['ab', 'cd', 'ef'])[2]!.png).subarray(0, 20));
    const r = await loadGallery(store, { keep: 48, configHash: HASH });
    assert.deepEqual(r.samples.map((s) => s.prompt), ['cd']);
    assert.deepEqual(r.skipped.map((s) => s.key), [attention, image]);
    assert.equal(r.skipped[0]!.reason, 'missing');
    assert.match(r.skipped[1]!.reason, /^20 bytes, the index says \d+$/);
  } finally {
    await store.close();
  }
});

test('a PNG of the right size but damaged, or not of the size the index gives, is skipped (the key and why named)', async () => {
  const { store, dir } = newStore();
  try {
    const data = samples(10, ['ab', 'cd', 'ef']);
    // the third image claims 9 x 9 pixels in the index, its PNG holds 8 x 8
    data[2] = { ...data[2]!, width: 9, height: 9 };
    await saveGalleryStep(store, 10, data, { configHash: HASH, time: 10 });
    const keys = (await store.list('gallery/')).map((o) => o.key);
    const attention = keys.find((k) => k.endsWith('/0-a1.png'))!;
    const bytes = Buffer.from(data[0]!.attention![1]!.png);
    // one byte of the image data chunk's CRC flipped: same size, same magic, intact pixels
    const idat = bytes.indexOf('IDAT');
    const crc = idat + 4 + bytes.readUInt32BE(idat - 4);
    bytes[crc] = bytes[crc]! ^ 0xff;
    writeFileSync(join(dir, attention), bytes);
    const r = await loadGallery(store, { keep: 48, configHash: HASH });
    assert.deepEqual(r.samples.map((s) => s.prompt), ['cd']);
    const image = keys.find((k) => k.endsWith('/2.png'))!;
    assert.deepEqual(r.skipped.map((s) => s.key), [attention, image]);
    assert.match(r.skipped[0]!.reason, /^not a valid PNG: \S/);
    assert.equal(r.skipped[1]!.reason, '8 x 8 pixels, the index says 9 x 9');
  } finally {
    await store.close();
  }
});

test('a step saved again replaces its samples and pruning removes the PNGs of the older save', async () => {
  const { store } = newStore();
  try {
    await saveGalleryStep(store, 10, samples(10), { configHash: HASH, time: 1 });
    const before = (await store.list('gallery/')).map((o) => o.key);
    await saveGalleryStep(store, 10, samples(11, ['xy']), { configHash: HASH, time: 2 });
    // Without `keep` no step goes: only what the index of the step just written does not name.
    const pruned = await pruneGallery(store, { step: 10, configHash: HASH });
    assert.deepEqual(pruned.failed, []);
    assert.equal(pruned.deleted.length, 2 + 4, 'the older save: two samples, four maps');
    const after = (await store.list('gallery/')).map((o) => o.key);
    assert.deepEqual(after.filter((k) => before.includes(k)), [galleryIndexKey(10)], 'only the index key is shared');
    assert.equal(after.length, 1 + 1 + 2, 'the index, one sample, its two maps');
    const r = await loadGallery(store, { keep: 48, configHash: HASH });
    assert.deepEqual(r.samples.map((s) => [s.step, s.prompt, s.time]), [[10, 'xy', 2]]);
  } finally {
    await store.close();
  }
});

test('a failed write is logged and counted, never thrown; close waits for queued saves', async () => {
  const { store, dir } = newStore();
  const metrics = createTrainingMetrics();
  let puts = 0;
  // A store that takes the first PNG, then fails (a full disk, a denied bucket).
  const failing: ObjectStore = Object.assign(Object.create(store) as ObjectStore, {
    put: async (key: string, body: Uint8Array) => {
      if (++puts > 1) throw new Error(`storage: ${key}: no space left`);
      return store.put(key, body);
    },
    close: () => store.close(),
  });
  const archive = new GalleryArchive({ store: failing, configHash: HASH, metrics });
  archive.save(10, samples(10));
  await archive.close();
  assert.deepEqual(archive.counts, { saved: 0, failed: 1 });
  assert.match(await metrics.registry.metrics(), /^parti_gallery_store_errors_total\{op="write"\} 1$/m);
  const reopened = openStore(dir);
  try {
    assert.deepEqual((await loadGallery(reopened, { keep: 48, configHash: HASH })).samples, [], 'no index: nothing half loaded');
    // The good path through the queue: two saves in order, both there after close.
    const ok = new GalleryArchive({ store: openStore(dir), configHash: HASH, metrics });
    ok.save(20, samples(20));
    ok.save(30, samples(30));
    await ok.close();
    assert.deepEqual(ok.counts, { saved: 2, failed: 0 });
    assert.deepEqual((await loadGallery(reopened, { keep: 48, configHash: HASH })).samples.map((s) => s.step), [20, 20, 30, 30]);
  } finally {
    await reopened.close();
  }
});

test('checkpoint retention, listing and key checks leave the gallery alone', async () => {
  const { store } = newStore();
  try {
    await saveGalleryStep(store, 10, samples(10), { configHash: HASH, time: 1 });
    await saveGalleryStep(store, 20, samples(20), { configHash: HASH, time: 2 });
    const gallery = (await store.list('gallery/')).map((o) => o.key).sort();
    for (const step of [10, 20, 30]) {
      const ref = await writeCheckpointObject(store, step, 'params.bin', new Float32Array(4));
      await commitManifest(store, { step, worldSize: 1, configHash: HASH, config: {}, cursor: null, rng: null, objects: [ref] }, { keep: 2 });
    }
    assert.deepEqual(await listCheckpointSteps(store), [20, 30]);
    assert.deepEqual((await store.list('gallery/')).map((o) => o.key).sort(), gallery, 'pruning step 10 kept its gallery');
    for (const k of gallery) {
      assert.equal(stepOfObjectKey(k), null, k);
      assert.equal(isCheckpointObjectKey(10, 'index.json', k), false, k);
    }
    assert.equal((await loadGallery(store, { keep: 48, configHash: HASH })).samples.length, 4);
  } finally {
    await store.close();
  }
});

test('a starting coordinator dashboard serves the stored gallery at once: resumed step respected, a corrupt item skipped', async () => {
  const { store, dir } = newStore();
  for (const step of [10, 20, 30]) await saveGalleryStep(store, step, samples(step), { configHash: HASH, time: step });
  writeFileSync(join(dir, galleryIndexKey(20)), 'not json');
  await store.close();
  // Recovered at step 25: step 30's samples came after it, in a history that no longer counts.
  const { source } = scriptedCoordinator({ configHash: HASH, step: 25, epoch: 0, workers: 1, phase: { kind: 'waiting-for-workers' } });
  const config = dashboardSchema.parse({ port: 0, host: '127.0.0.1', gallery: { prompts: ['ab', 'cd'], everySteps: 10, keep: 8 } });
  // No generation info (no model, no tokenizer here): earlier samples are shown all the same.
  const dash = await startCoordinatorDashboard(source, config, { name: 'j', stage: 'parti', checkpointStore: dir });
  try {
    const res = await fetch(`${dash.url}api/gallery`, { signal: AbortSignal.timeout(10_000) });
    const items = galleryResponseSchema.parse(await res.json()).items;
    assert.deepEqual(items.map((i) => [i.step, i.prompt, i.time]), [[10, 'ab', 10], [10, 'cd', 10]]);
    const image = await fetch(new URL(items[1]!.attention[1]!.image, dash.url), { signal: AbortSignal.timeout(10_000) });
    assert.deepEqual(Buffer.from(await image.arrayBuffer()), Buffer.from(samples(10)[1]!.attention![1]!.png));
    assert.match(await dash.metrics.registry.metrics(), /^parti_gallery_store_errors_total\{op="read"\} 1$/m);
    assert.equal(dash.gallery, null);
  } finally {
    await dash.close();
  }
});

test('saves waiting for a slow store stay bounded: past four, a save is dropped and counted', async () => {
  const { store } = newStore();
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const slow: ObjectStore = Object.assign(Object.create(store) as ObjectStore, {
    put: async (key: string, body: Uint8Array) => {
      await gate;
      return store.put(key, body);
    },
    close: () => store.close(),
  });
  const metrics = createTrainingMetrics();
  const archive = new GalleryArchive({ store: slow, configHash: HASH, metrics });
  for (const step of [10, 20, 30, 40, 50, 60]) archive.save(step, samples(step));
  assert.deepEqual(archive.counts, { saved: 0, failed: 2 }, 'steps 50 and 60 dropped at once');
  open();
  const reader = openStore(store.url);
  await archive.close();
  try {
    assert.deepEqual(archive.counts, { saved: 4, failed: 2 });
    assert.match(await metrics.registry.metrics(), /^parti_gallery_store_errors_total\{op="write"\} 2$/m);
    assert.deepEqual([...new Set((await loadGallery(reader, { keep: 48, configHash: HASH })).samples.map((s) => s.step))], [10, 20, 30, 40]);
  } finally {
    await reader.close();
  }
});

/** Every key of the store, sorted. */
async function keysOf(store: ObjectStore): Promise<string[]> {
  return (await store.list('')).map((o) => o.key).sort();
}

/** The steps that have any object under gallery/<step>/. */
async function storedSteps(store: ObjectStore): Promise<number[]> {
  const steps = (await store.list('gallery/')).map((o) => /^gallery\/(\d{12})\//.exec(o.key)).filter((m) => m !== null).map((m) => Number(m[1]));
  return [...new Set(steps)].sort((a, b) => a - b);
}

/** Items as comparable values, PNG bytes included. */
function comparable(items: readonly { step: number; prompt: string; time: number; png: Uint8Array; attention?: { token: string; png: Uint8Array }[] }[]): unknown[] {
  return items.map((s) => ({ step: s.step, prompt: s.prompt, time: s.time, png: Buffer.from(s.png), attention: (s.attention ?? []).map((a) => ({ token: a.token, png: Buffer.from(a.png) })) }));
}

/** Waits for `cond`, failing after `ms`. */
async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function commitCheckpoint(store: ObjectStore, step: number): Promise<void> {
  const ref = await writeCheckpointObject(store, step, 'params.bin', new Float32Array(4));
  await commitManifest(store, { step, worldSize: 1, configHash: HASH, config: {}, cursor: null, rng: null, objects: [ref] }, { keep: 2 });
}

test('pruning after saves: the store holds exactly the steps a restarted loader reads; checkpoints and other keys stay', async () => {
  const { store, dir } = newStore();
  try {
    await commitCheckpoint(store, 20);
    await commitCheckpoint(store, 40);
    await store.put('gallery/notes.txt', Buffer.from('not a step folder'));
    const outside = (await keysOf(store)).filter((k) => !/^gallery\/\d{12}\//.test(k));
    assert.ok(outside.some((k) => k.startsWith('manifests/')) && outside.some((k) => k.startsWith('steps/')), outside.join(' '));
    const metrics = createTrainingMetrics();
    // keep 5, two items a step (three at step 40): more steps than fit.
    const prompts = (step: number) => (step === 40 ? ['ab', 'cd', 'ef'] : ['ab', 'cd']);
    const first = new GalleryArchive({ store: openStore(dir), configHash: HASH, metrics, keep: 5 });
    for (const step of [10, 20, 30, 40]) first.save(step, samples(step, prompts(step)), step);
    await first.close();
    assert.deepEqual(first.counts, { saved: 4, failed: 0 });
    // Newest first: 40 (3 items), 30 (2): five, so 10 and 20 can no longer be shown.
    assert.deepEqual(await storedSteps(store), [30, 40]);
    const loaded = await loadGallery(store, { keep: 5, configHash: HASH, maxStep: 40 });
    assert.deepEqual([...new Set(loaded.samples.map((s) => s.step))], [30, 40]);

    // A restart: keep comes from the start-up load, as the coordinator's dashboard does it.
    const second = new GalleryArchive({ store: openStore(dir), configHash: HASH, metrics });
    const state = new RunStateStore({ jobId: 'j', name: 'j', galleryKeep: 5 });
    await second.loadInto(state, { keep: 5, maxStep: 40 });
    assert.equal(state.gallery().length, 5);
    second.save(50, samples(50), 50);
    second.save(60, samples(60), 60);
    await second.close();
    assert.deepEqual(second.counts, { saved: 2, failed: 0 });
    assert.deepEqual(second.pruning.failed, 0);

    // 60 and 50 (four items), then 40 (three): 40 is the oldest step shown.
    const reload = await loadGallery(store, { keep: 5, configHash: HASH, maxStep: 60 });
    assert.deepEqual(reload.skipped, []);
    assert.deepEqual(reload.samples.map((s) => [s.step, s.prompt]), [[40, 'ef'], [50, 'ab'], [50, 'cd'], [60, 'ab'], [60, 'cd']]);
    const gallery = (await keysOf(store)).filter((k) => /^gallery\/\d{12}\//.test(k));
    assert.deepEqual(await storedSteps(store), [...new Set(reload.samples.map((s) => s.step))]);
    // Per step: its index, and per item its PNG and one map per prompt character; nothing else.
    assert.equal(gallery.length, (1 + 3 * 3) + (1 + 2 * 3) + (1 + 2 * 3), gallery.join('\n'));
    for (const step of [40, 50, 60]) assert.ok(gallery.includes(galleryIndexKey(step)), `index of ${step}`);
    assert.deepEqual((await keysOf(store)).filter((k) => !/^gallery\/\d{12}\//.test(k)), outside, 'checkpoints and gallery/notes.txt untouched');
    assert.deepEqual(await listCheckpointSteps(store), [20, 40]);
    assert.doesNotMatch(await metrics.registry.metrics(), /^parti_gallery_store_errors_total\{op="(prune|write|read)"\} [1-9]/m);
  } finally {
    await store.close();
  }
});

test('pruning counts as the loader counts: a reload after pruning returns the same items as before', async () => {
  const { store, dir } = newStore();
  try {
    await commitCheckpoint(store, 50);
    for (const step of [10, 20, 30, 35, 40, 50]) await saveGalleryStep(store, step, samples(step), { configHash: HASH, time: step });
    // Another config's samples between them: the loader does not count them.
    await saveGalleryStep(store, 45, samples(45), { configHash: 'another-config', time: 45 });
    // A later step of a history the job went back from (it resumed before 70): ignored, left alone.
    await saveGalleryStep(store, 70, samples(70), { configHash: HASH, time: 70 });
    // One of step 35's items lost a map: that item does not count.
    const lost = (await store.list('gallery/000000000035/')).map((o) => o.key).find((k) => k.endsWith('/1-a0.png'))!;
    unlinkSync(join(dir, lost));
    // Leftovers no index names: an old write in a kept step, an old write of a step whose index
    // never landed, and a recent write (a save that may still be running) that must stay.
    const recent = `gallery/000000000040/${Date.now().toString(36)}-0123abcd/0.png`;
    for (const key of ['gallery/000000000050/old/0.png', 'gallery/000000000048/old/0.png', recent]) await store.put(key, png(7));
    const outside = (await keysOf(store)).filter((k) => !k.startsWith('gallery/'));

    const options = { keep: 6, configHash: HASH, maxStep: 50 };
    const before = await loadGallery(store, options);
    // 50 (2), 45 (another config: 0), 40 (2), 35 (1 of 2), 30 (2): the sixth item is 30's.
    assert.deepEqual(before.samples.map((s) => [s.step, s.prompt]), [[30, 'cd'], [35, 'ab'], [40, 'ab'], [40, 'cd'], [50, 'ab'], [50, 'cd']]);
    const r = await pruneGallery(store, { step: 50, keep: 6, configHash: HASH });
    assert.deepEqual(r.failed, []);
    assert.equal(r.late, false);
    assert.equal(r.cutoff, 30);
    const after = await loadGallery(store, options);
    assert.deepEqual(comparable(after.samples), comparable(before.samples));
    assert.deepEqual(after.skipped, before.skipped, 'the same item skipped (its other PNGs are named by the index, so they stay)');
    assert.deepEqual(await storedSteps(store), [30, 35, 40, 45, 50, 70]);
    const keys = await keysOf(store);
    assert.ok(keys.includes(recent), 'a recent write is spared');
    assert.ok(!keys.includes('gallery/000000000050/old/0.png') && !keys.includes('gallery/000000000048/old/0.png'), 'old leftovers deleted');
    assert.ok(r.deleted.includes(galleryIndexKey(10)) && r.deleted.includes(galleryIndexKey(20)));
    assert.ok(r.deleted.every((k) => /^gallery\/0000000000(10|20|48|50)\//.test(k)), r.deleted.join(' '));
    assert.deepEqual(keys.filter((k) => !k.startsWith('gallery/')), outside);
  } finally {
    await store.close();
  }
});

test('a failed delete while pruning is logged and counted (op=prune), never thrown; the next save finishes the job', async () => {
  const { store, dir } = newStore();
  let broken = true;
  const failing: ObjectStore = Object.assign(Object.create(store) as ObjectStore, {
    delete: async (key: string) => {
      if (broken && key === galleryIndexKey(10)) throw new Error(`storage: ${key}: access denied`);
      return store.delete(key);
    },
    close: () => store.close(),
  });
  const metrics = createTrainingMetrics();
  const archive = new GalleryArchive({ store: failing, configHash: HASH, metrics, keep: 2 });
  archive.save(10, samples(10), 10);
  archive.save(20, samples(20), 20);
  const reader = openStore(dir);
  try {
    await until(() => archive.pruning.passes === 2, 'two pruning passes');
    assert.deepEqual(archive.counts, { saved: 2, failed: 0 });
    assert.equal(archive.pruning.failed, 1);
    assert.match(await metrics.registry.metrics(), /^parti_gallery_store_errors_total\{op="prune"\} 1$/m);
    assert.doesNotMatch(await metrics.registry.metrics(), /op="write"/);
    // The index could not go, so step 10 keeps its PNGs too: whole, not half deleted.
    assert.deepEqual(await storedSteps(reader), [10, 20]);
    assert.equal((await reader.list('gallery/000000000010/')).length, 1 + 2 * 3);
    broken = false;
    archive.save(30, samples(30), 30);
    await archive.close();
    assert.deepEqual(archive.counts, { saved: 3, failed: 0 });
    assert.equal(archive.pruning.failed, 1);
    assert.deepEqual(await storedSteps(reader), [30]);
    assert.match(await metrics.registry.metrics(), /^parti_gallery_store_errors_total\{op="prune"\} 1$/m);
  } finally {
    await reader.close();
  }
});

test('pruning past its deadline is counted, and the next save waits for its deletes still in flight', async () => {
  const { store, dir } = newStore();
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const events: string[] = [];
  const slow: ObjectStore = Object.assign(Object.create(store) as ObjectStore, {
    put: async (key: string, body: Uint8Array) => {
      events.push(`put ${key}`);
      return store.put(key, body);
    },
    delete: async (key: string) => {
      if (key === galleryIndexKey(10)) await gate; // a store that hangs on this delete
      await store.delete(key);
      events.push(`deleted ${key}`);
    },
    close: () => store.close(),
  });
  const metrics = createTrainingMetrics();
  const archive = new GalleryArchive({ store: slow, configHash: HASH, metrics, keep: 2, pruneTimeoutMs: 2000 });
  archive.save(10, samples(10), 10);
  archive.save(20, samples(20), 20);
  archive.save(30, samples(30), 30);
  const reader = openStore(dir);
  try {
    await until(() => archive.pruning.failed === 1, 'the pruning after step 20 to be given up');
    assert.match(await metrics.registry.metrics(), /^parti_gallery_store_errors_total\{op="prune"\} 1$/m);
    assert.ok(!events.some((e) => e.startsWith('put gallery/000000000030/')), 'step 30 not written while a delete of the abandoned pass hangs');
    open();
    await archive.close();
    assert.deepEqual(archive.counts, { saved: 3, failed: 0 });
    const deletedIndex = events.indexOf(`deleted ${galleryIndexKey(10)}`);
    const firstPut30 = events.findIndex((e) => e.startsWith('put gallery/000000000030/'));
    assert.ok(deletedIndex >= 0 && firstPut30 > deletedIndex, events.join('\n'));
    // The pass after step 30 did what the abandoned one left.
    assert.deepEqual(await storedSteps(reader), [30]);
    assert.deepEqual([...new Set((await loadGallery(reader, { keep: 2, configHash: HASH })).samples.map((s) => s.step))], [30]);
  } finally {
    await reader.close();
  }
});
