// The gallery during a real Parti run: a real `parti coordinator` process and a real `parti
// worker` process train a very small Parti model (16x16 images, 16 image tokens) with checkpoints
// every 2 steps (keep 3); the coordinator's gallery thread samples the fixed prompts from the
// committed checkpoints of steps 4, 8, ... (at most one generation every 5 s, the default) with
// the run's image tokenizer. The API serves the items (the PNGs decode, the prompts match, one
// attention map per prompt character), /metrics counts them, retention shows as deleted
// checkpoints, and headless Chromium shows the samples, and the newest 100 of the run's hundreds
// of checkpoints. The data are a shard set with two bad samples (an undecodable image, a caption
// too long): the workers' step reports count them by reason and the dashboard shows them (API,
// /metrics, page). SIGTERM then checkpoints and stops the job cleanly. A new coordinator on the
// same run directory (a restart: it recovers from the latest checkpoint) serves the earlier
// gallery at once, from the job's store (gallery/<step>/), before any worker joins: the same
// items, times and PNGs, in the API and on the page.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { parseConfig } from '../src/config/load.ts';
import { checkpointsResponseSchema, galleryResponseSchema, overviewResponseSchema } from '../src/dashboard/api-schema.ts';
import { Cluster, writeInitialTokenizer } from './orchestration-harness.ts';
import { ShardSetWriter } from '../src/data/shard-writer.ts';
import { openStore } from '../src/storage/open-store.ts';
import { skippedResponseSchema } from '../src/dashboard/api-schema.ts';
import { launchChromium } from './helpers/chromium.ts';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
});

const PROMPTS = ['a red circle', 'two blue squares'];
const EVERY = 4;

async function until<T>(what: string, ms: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test('a real Parti run fills the gallery from its checkpoints and counts its bad samples; the page shows both', { timeout: 150_000 }, async (t) => {
  const t0 = Date.now();
  const mark = (what: string) => t.diagnostic(`${what} at ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const cluster = new Cluster('dash-gallery');
  cleanups.push(() => cluster.killAll());
  // 30 good 16x16 samples and two bad ones, in two shards.
  const shardStore = openStore(join(cluster.dir, 'shards'));
  const writer = new ShardSetWriter(shardStore, { prefix: 'train', shardSize: 16 });
  const colours: [string, number[]][] = [['red', [220, 30, 30]], ['green', [30, 200, 60]], ['blue', [30, 60, 220]]];
  for (let i = 0; i < 32; i++) {
    const [name, rgb] = colours[i % 3]!;
    const png = new PNG({ width: 16, height: 16 });
    for (let p = 0; p < 256; p++) png.data.set([...rgb, 255], p * 4);
    let files = [{ ext: 'png', data: PNG.sync.write(png) }, { ext: 'txt', data: Buffer.from(`a ${name} square`) }];
    if (i === 5) files = [{ ext: 'png', data: Buffer.from('not a png at all') }, files[1]!];
    if (i === 21) files = [files[0]!, { ext: 'txt', data: Buffer.from(`a ${'very '.repeat(20)}long caption`) }];
    await writer.add({ key: `s${i}`, files });
  }
  const shards = await writer.finish();
  await shardStore.close();
  const raw = {
    name: 'gallery',
    model: {
      text: { vocabSize: 259, maxLength: 24, layers: 1, dModel: 16, heads: 2 },
      image: { layers: 1, dModel: 16, heads: 2 },
      tokenizer: { imageSize: 16, patchSize: 4, encoder: { layers: 1, dModel: 16, heads: 2 }, decoder: { layers: 1, dModel: 16, heads: 2 }, codebookSize: 16, codeDim: 4 },
    },
    data: { source: shards.url, maxCaptionBytes: 64 },
    training: {
      seed: 1,
      tokenizer: { steps: 1, batchSize: 4, optimizer: { type: 'adamw', lr: 0.001 } },
      // Far more steps than the test waits for: SIGTERM ends the job.
      parti: { steps: 5000, batchSize: 4, optimizer: { type: 'adamw', lr: 0.001 } },
    },
    checkpoint: { everySteps: 2, keep: 3, atEnd: true },
    runtime: { backend: 'wasm', workers: 1, heartbeatMs: 200, failureTimeoutMs: 5000 },
    dashboard: { port: 0, gallery: { prompts: PROMPTS, everySteps: EVERY, keep: 8 } },
  };
  const config = parseConfig(raw, 'gallery test');
  const cfg = cluster.config('gallery', raw);
  // The run's image tokenizer, at its initialization (what the Parti stage reads from <run>/tokenizer).
  await writeInitialTokenizer(join(cluster.dir, 'tokenizer'), config);

  const coordinator = await cluster.coordinator(cfg);
  const url = (await coordinator.waitFor(/^dashboard: (http:\S+)$/, 10_000))[1]!;
  const worker = cluster.worker(cfg, coordinator.address, 'w0');
  mark('coordinator up');

  // Both prompts of one step, served by the API.
  const items = await until('gallery items of both prompts', 90_000, async () => {
    const g = galleryResponseSchema.parse(await (await fetch(`${url}api/gallery`)).json());
    return g.items.length >= PROMPTS.length ? g.items : undefined;
  });
  mark(`gallery items at step ${items[0]!.step}`);
  const first = items.filter((i) => i.step === items[0]!.step);
  assert.deepEqual(first.map((i) => i.prompt), PROMPTS, 'one sample per prompt, in order');
  for (const item of items) {
    assert.equal(item.step % EVERY, 0, `sampled at step ${item.step}: a checkpoint at a multiple of ${EVERY}`);
    const res = await fetch(new URL(item.image, url));
    assert.equal(res.headers.get('content-type'), 'image/png');
    const png = PNG.sync.read(Buffer.from(await res.arrayBuffer()));
    assert.deepEqual([png.width, png.height], [item.width, item.height]);
    assert.equal(png.width, 16 * 8, '16-pixel samples enlarged to 128');
    // One cross-attention map per prompt character (a 4x4 grid of image tokens each).
    assert.equal(item.attention.map((a) => a.token).join(''), item.prompt.replaceAll(' ', '␣'));
    const map = PNG.sync.read(Buffer.from(await (await fetch(new URL(item.attention[0]!.image, url))).arrayBuffer()));
    assert.equal(map.width, 4 * 16);
  }
  // The same fixed prompts, the same seed: two samples of a prompt differ only through the model.
  const metrics = await (await fetch(`${url}metrics`)).text();
  const done = Number(/^parti_gallery_generations_total\{result="done"\} (\d+)$/m.exec(metrics)?.[1]);
  assert.ok(done >= 1, `gallery generations counted: ${done}`);
  assert.match(metrics, /^parti_gallery_generation_seconds_count [1-9]\d*$/m);

  // Retention (keep 3) removed older checkpoints: the list still shows them, marked deleted.
  const checkpoints = await until('a checkpoint marked deleted', 30_000, async () => {
    const c = checkpointsResponseSchema.parse(await (await fetch(`${url}api/checkpoints`)).json()).checkpoints;
    return c.some((x) => x.deleted) ? c : undefined;
  });
  const kept = checkpoints.filter((c) => !c.deleted).map((c) => c.step);
  const deleted = checkpoints.filter((c) => c.deleted).map((c) => c.step);
  assert.ok(Math.max(...deleted) < Math.min(...kept), `deleted ${deleted} are older than kept ${kept}`);
  assert.equal(deleted[0], 2, 'the first checkpoint went first');

  // The bad samples, counted by reason from the step reports (each epoch meets them again).
  const skipped = await until('skipped samples of both reasons', 30_000, async () => {
    const k = skippedResponseSchema.parse(await (await fetch(`${url}api/skipped`)).json());
    return k.samples['undecodable-image'] && k.samples['caption-too-long'] ? k : undefined;
  });
  assert.deepEqual(Object.keys(skipped.samples).sort(), ['caption-too-long', 'undecodable-image']);
  const counted = await (await fetch(`${url}metrics`)).text();
  assert.ok(Number(/^parti_skipped_samples_total\{reason="undecodable-image"\} (\d+)$/m.exec(counted)?.[1]) >= 1);
  mark('API checked');
  // A run of more checkpoints than the page lists (100): it lists the newest, says how many there
  // are, and keeps up with twenty commits a second (it redraws at most five times a second).
  await until('more than 100 checkpoints', 60_000, async () => {
    const c = checkpointsResponseSchema.parse(await (await fetch(`${url}api/checkpoints`)).json()).checkpoints;
    return c.length > 100 ? c : undefined;
  });
  mark('100 checkpoints');
  // The page shows the samples with their prompts.
  const browser = await launchChromium({ width: 1400, height: 1200 });
  cleanups.push(() => browser.close());
  const context = browser.context;
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  await page.goto(url, { timeout: 20_000 });
  // The page loads gallery images lazily: bring them into view.
  // (The section, not a sample: the page redraws the samples whenever a new one arrives.)
  await page.locator('#gallery figure.sample').first().waitFor({ timeout: 20_000 });
  await page.locator('#gallery').scrollIntoViewIfNeeded({ timeout: 20_000 });
  await page.waitForFunction(
    (n) => {
      // The newest step's samples come first.
      const imgs = Array.from(document.querySelectorAll<HTMLImageElement>('#gallery figure.sample > img')).slice(0, n);
      return imgs.length === n && imgs.every((i) => i.complete && i.naturalWidth === 128);
    },
    PROMPTS.length,
    { timeout: 20_000 },
  );
  const captions = await page.locator('#gallery figure.sample > figcaption .prompt').allTextContents();
  for (const p of PROMPTS) assert.ok(captions.includes(p), `the page shows "${p}": ${captions}`);
  assert.ok((await page.locator('#gallery figure.sample .attn img').count()) >= PROMPTS.join('').length);
  await page.waitForFunction(() => document.querySelectorAll('#checkpoints tbody tr.gone').length > 0, null, { timeout: 20_000 });
  assert.equal(await page.locator('#checkpoints tbody tr').count(), 100);
  assert.match(await page.locator('#checkpoints-note').innerText(), /^newest 100 of \d{3,}$/);
  const listed = (await page.locator('#checkpoints tbody tr td:first-child').allTextContents()).map(Number);
  assert.deepEqual(listed, [...listed].sort((a, b) => b - a), 'newest first');
  // The skipped-sample reasons and their events.
  const chips = await page.locator('#skipped-reasons .chip').allTextContents();
  assert.ok(chips.some((c) => /undecodable-image/.test(c)) && chips.some((c) => /caption-too-long/.test(c)), String(chips));
  await page.locator('#events li[data-kind="skipped-sample"]').first().waitFor({ timeout: 10_000 });
  mkdirSync('test-artifacts', { recursive: true });
  await page.screenshot({ path: join('test-artifacts', 'dashboard-gallery.png'), fullPage: true });
  const overview = overviewResponseSchema.parse(await (await fetch(`${url}api/overview`)).json());
  assert.equal(overview.galleryKeep, 8);
  assert.ok((await page.locator('#gallery figure.sample').count()) <= 8, 'the page drops what the server dropped');
  assert.ok(!overview.events.some((e) => e.kind === 'warning' && /gallery/.test(e.message)), 'no gallery warning');
  assert.deepEqual(errors, []);

  mark('page checked');
  // What the first coordinator serves (a generation may still land before it stops: see below).
  const before = galleryResponseSchema.parse(await (await fetch(`${url}api/gallery`)).json()).items;
  const pngOf = async (base: string, path: string) => Buffer.from(await (await fetch(new URL(path, base))).arrayBuffer());
  const beforePngs = new Map<string, Buffer[]>();
  for (const i of before) beforePngs.set(`${i.step}/${i.prompt}`, [await pngOf(url, i.image), await pngOf(url, i.attention.at(-1)!.image)]);
  // SIGTERM: a checkpoint, then a clean stop of both processes (the gallery thread holds nothing
  // open); the worker's 75 says the coordinator stopped the job before its end.
  coordinator.proc.kill('SIGTERM');
  assert.equal(await coordinator.exited, 0);
  assert.equal(await worker.exited, 75);
  mark('stopped');

  // The restart: no worker yet, so nothing new is sampled; the gallery comes from the store.
  const again = await cluster.coordinator(cfg, [], 'coordinator-restarted');
  const url2 = (await again.waitFor(/^dashboard: (http:\S+)$/, 10_000))[1]!;
  const restored = galleryResponseSchema.parse(await (await fetch(`${url2}api/gallery`)).json()).items;
  mark(`restarted: ${restored.length} gallery items`);
  assert.ok(restored.length >= PROMPTS.length && restored.length <= 8, `restored ${restored.length} items (keep 8)`);
  const newestBefore = Math.max(...before.map((i) => i.step));
  for (const i of before.filter((x) => x.step === newestBefore)) {
    assert.ok(restored.some((r) => r.step === i.step && r.prompt === i.prompt), `step ${i.step} "${i.prompt}" is back`);
  }
  let compared = 0;
  for (const r of restored) {
    const old = before.find((i) => i.step === r.step && i.prompt === r.prompt);
    // (only one that landed after the list above was read is new here)
    if (!old) {
      assert.ok(r.step > newestBefore, `item of step ${r.step} not served before the restart`);
      continue;
    }
    assert.deepEqual([r.time, r.width, r.height, r.attention.map((a) => a.token)], [old.time, old.width, old.height, old.attention.map((a) => a.token)]);
    assert.deepEqual([await pngOf(url2, r.image), await pngOf(url2, r.attention.at(-1)!.image)], beforePngs.get(`${r.step}/${r.prompt}`), `the PNGs of step ${r.step} "${r.prompt}"`);
    compared++;
  }
  assert.ok(compared >= PROMPTS.length, `${compared} items compared byte for byte`);
  const overview2 = overviewResponseSchema.parse(await (await fetch(`${url2}api/overview`)).json());
  assert.deepEqual(overview2.gallery, restored);
  assert.doesNotMatch(await (await fetch(`${url2}metrics`)).text(), /^parti_gallery_store_errors_total\{op="(read|write)"\} [1-9]/m, 'nothing skipped or lost');
  // The page shows them as soon as it loads.
  await page.goto(url2, { timeout: 20_000 });
  await page.locator('#gallery figure.sample').first().waitFor({ timeout: 20_000 });
  await page.locator('#gallery').scrollIntoViewIfNeeded({ timeout: 20_000 });
  await page.waitForFunction(
    (n) => {
      const imgs = Array.from(document.querySelectorAll<HTMLImageElement>('#gallery figure.sample > img'));
      return imgs.length === n && imgs.slice(0, 2).every((i) => i.complete && i.naturalWidth === 128);
    },
    restored.length,
    { timeout: 20_000 },
  );
  assert.deepEqual(errors, []);
  again.proc.kill('SIGTERM');
  assert.equal(await again.exited, 0);
  mark('restart checked');
  rmSync(cluster.dir, { recursive: true, force: true });
});
