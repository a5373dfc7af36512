// Real headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) opens the
// dashboard served by a real server, fed through a RunStateStore the way the coordinator feeds it,
// and watches it update live. Screenshots go to test-artifacts/ (gitignored).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import type { BrowserContext, Page } from 'playwright-core';
import { RunStateStore } from '../src/dashboard/run-state.ts';
import { createDashboardServer, type DashboardServer } from '../src/dashboard/dashboard-server.ts';
import { attentionHeatmapPng } from '../src/dashboard/attention-heatmap.ts';
import { createTrainingMetrics } from '../src/observability/metrics.ts';
import { launchChromium } from './helpers/chromium.ts';

const artifacts = 'test-artifacts';

let browser: Awaited<ReturnType<typeof launchChromium>> | undefined;
let context: BrowserContext;
const servers: DashboardServer[] = [];

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  browser = await launchChromium();
  context = browser.context;
});

after(async () => {
  await browser?.close();
  for (const s of servers) await s.close().catch(() => {});
});

/** A 32x32 PNG with a coloured disc on a background, like a tiny-config sample. */
function samplePng(hue: number): Buffer {
  const png = new PNG({ width: 32, height: 32 });
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      const inside = (x - 16) ** 2 + (y - 16) ** 2 < 80;
      const o = (y * 32 + x) * 4;
      png.data[o] = inside ? Math.round(255 * hue) : 230;
      png.data[o + 1] = inside ? 90 : 232;
      png.data[o + 2] = inside ? Math.round(255 * (1 - hue)) : 236;
      png.data[o + 3] = 255;
    }
  }
  return PNG.sync.write(png);
}

/** The numbers a training step of a tiny run would report (a decaying loss, warmup then cosine lr). */
function step(s: number, worldSize = 2) {
  const lr = 1e-3 * Math.min(1, s / 20) * (0.55 + 0.45 * Math.cos((Math.PI * s) / 300));
  const stepMs = 900 + 120 * Math.sin(s / 7);
  return {
    step: s,
    time: Date.now(),
    loss: 5.2 * Math.exp(-s / 90) + 1.1 + 0.08 * Math.sin(s * 1.7),
    stepMs,
    tokensPerSec: (16 * 80 * 1000) / stepMs,
    samplesPerSec: (16 * 1000) / stepMs,
    lr,
    gradNorm: 2 * Math.exp(-s / 150) + 0.3,
    allReduceMs: 40,
    busBwBytesPerSec: 3.2e8,
    worldSize,
  };
}

function feedRun(store: RunStateStore, steps: number): void {
  store.setReady(true);
  store.upsertWorker({ id: 'worker-7f3a', host: '127.0.0.1:41231', rank: 0, state: 'training', lastHeartbeat: Date.now() });
  store.upsertWorker({ id: 'worker-c91e', host: '127.0.0.1:41877', rank: 1, state: 'training', lastHeartbeat: Date.now() });
  store.setJob({ state: 'running', worldSize: 2, epoch: 1 });
  for (let s = 1; s <= steps; s++) {
    const r = step(s);
    store.recordStep(r);
    for (const [i, id] of ['worker-7f3a', 'worker-c91e'].entries()) {
      store.upsertWorker({ id, lastHeartbeat: Date.now(), step: s, stepMs: r.stepMs - 30 * i, tokensPerSec: r.tokensPerSec / 2, samplesPerSec: r.samplesPerSec / 2 });
    }
    if (s === 60) store.recordSkippedSample({ reason: 'decode', shard: 'shard-000003.tar', key: '000317', step: s, rank: 1, message: 'not a PNG or JPEG' });
    if (s === 100) store.addCheckpoint({ step: 100, time: Date.now(), uri: 'file:///tmp/run/ckpt/step-000100/manifest.json', bytes: 27_400_000, saveSeconds: 1.8, worldSize: 2 });
  }
  for (const [i, prompt] of ['a red circle on a white background', 'a blue square above a green triangle'].entries()) {
    store.addGalleryItem({
      step: 100,
      prompt,
      png: samplePng(i ? 0.2 : 0.9),
      width: 32,
      height: 32,
      attention: ['a', 'red', 'circle'].map((token, k) => ({
        token,
        png: attentionHeatmapPng(Array.from({ length: 64 }, (_, j) => Math.exp(-(((j % 8) - 2 - k * 2) ** 2 + (Math.floor(j / 8) - 4) ** 2) / 4)), 8, 8),
      })),
    });
  }
}

async function chartLastStep(page: Page, series: string): Promise<number> {
  return Number(await page.locator(`#chart-${series}`).getAttribute('data-last-step'));
}

test('the page shows the worker table and charts that update live (SSE)', { timeout: 90_000 }, async () => {
  const metrics = createTrainingMetrics();
  const store = new RunStateStore({ jobId: 'tiny-20261127-0412', name: 'tiny', configHash: '9f2c41d07be3a215', totalSteps: 300, targetWorkers: 2, batchSize: 16, metrics });
  feedRun(store, 120);
  const server = await createDashboardServer({ view: store, registry: metrics.registry });
  servers.push(server);
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(msg.text());
  });
  await page.goto(server.url, { timeout: 20_000 });

  const rows = page.locator('#workers tbody tr');
  await rows.first().waitFor({ timeout: 20_000 });
  assert.equal(await rows.count(), 2);
  assert.deepEqual(await page.locator('#workers tbody tr td.rank').allTextContents(), ['0', '1']);
  assert.match((await rows.nth(1).textContent()) ?? '', /worker-c91e.*127\.0\.0\.1:41877.*training/);
  await page.waitForFunction(() => document.querySelector('#chart-loss')?.getAttribute('data-last-step') === '120', null, { timeout: 20_000 });
  assert.equal(await page.locator('#chart-loss canvas').count(), 1);
  // The stream is open (the server has subscribed) before the test pushes more steps.
  await page.waitForFunction(() => document.querySelector('#live')?.getAttribute('data-state') === 'live', null, { timeout: 20_000 });

  // Live: steps pushed into the store reach the charts and the summary without a reload.
  for (let s = 121; s <= 150; s++) {
    store.recordStep(step(s));
    if (s % 10 === 0) await new Promise((r) => setTimeout(r, 50));
  }
  await page.waitForFunction(() => document.querySelector('#chart-loss')?.getAttribute('data-last-step') === '150', null, { timeout: 20_000 });
  assert.equal(await chartLastStep(page, 'throughput'), 150);
  assert.equal(await chartLastStep(page, 'lr'), 150);
  // The summary is redrawn at most every 200 ms (the charts once per frame): wait for it.
  await page.waitForFunction(() => document.querySelector('#s-step')?.textContent === '150', null, { timeout: 10_000 });

  // A worker failure and recovery show in the table and the event log.
  store.upsertWorker({ id: 'worker-c91e', state: 'failed' }, 'missed heartbeats for 3.0 s');
  store.recordRecovery('ring re-formed with 1 worker; step 151 redone', 151);
  store.setJob({ worldSize: 1, epoch: 2 });
  await page.locator('#workers tbody tr[data-state="failed"]').waitFor({ timeout: 10_000 });
  await page.locator('#events li[data-kind="failure"]').waitFor({ timeout: 10_000 });
  assert.match((await page.locator('#events li[data-kind="failure"]').textContent()) ?? '', /^\S+\s*failure\s*worker-c91e \(rank 1\) failed: missed heartbeats/);
  store.upsertWorker({ id: 'worker-c91e', state: 'training', lastHeartbeat: Date.now() });
  store.setJob({ worldSize: 2, epoch: 3 });
  for (let s = 151; s <= 160; s++) store.recordStep(step(s));
  await page.waitForFunction(() => document.querySelector('#chart-loss')?.getAttribute('data-last-step') === '160', null, { timeout: 20_000 });

  assert.equal(await page.locator('#gallery .sample').count(), 2);
  assert.equal(await page.locator('#checkpoints tbody tr').count(), 1);
  assert.match((await page.locator('#skipped-reasons').textContent()) ?? '', /1\s+decode/);
  // Every gallery image loaded (a broken image has naturalWidth 0).
  await page.waitForFunction(() => Array.from(document.querySelectorAll('#gallery img')).every((i) => (i as HTMLImageElement).complete && (i as HTMLImageElement).naturalWidth > 0), null, { timeout: 10_000 });
  await page.screenshot({ path: join(artifacts, 'dashboard.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});

test('a long history is downsampled: the page draws at most 2x the point budget', { timeout: 60_000 }, async () => {
  const store = new RunStateStore({ jobId: 'long', name: 'long', totalSteps: 20_000, targetWorkers: 1 });
  store.setJob({ state: 'running' });
  store.upsertWorker({ id: 'w0', host: '127.0.0.1:1', rank: 0, state: 'training' });
  for (let s = 1; s <= 20_000; s++) store.recordStep(step(s, 1));
  const server = await createDashboardServer({ view: store, historyPoints: 300 });
  servers.push(server);
  const page = await context.newPage();
  await page.goto(server.url, { timeout: 20_000 });
  await page.waitForFunction(() => document.querySelector('#chart-loss')?.getAttribute('data-last-step') === '20000', null, { timeout: 20_000 });
  assert.equal(Number(await page.locator('#chart-loss').getAttribute('data-points')), 300);
  await page.waitForFunction(() => document.querySelector('#live')?.getAttribute('data-state') === 'live', null, { timeout: 20_000 });
  // Live steps past twice the budget make the page fetch a fresh downsampled history.
  for (let s = 20_001; s <= 20_400; s++) store.recordStep(step(s, 1));
  await page.waitForFunction(() => document.querySelector('#chart-loss')?.getAttribute('data-last-step') === '20400', null, { timeout: 20_000 });
  await page.waitForFunction(() => Number(document.querySelector('#chart-loss')?.getAttribute('data-points')) <= 600, null, { timeout: 20_000 });
  await page.close();
});

test('steps that arrive while the page loads its history are neither lost nor drawn twice', { timeout: 60_000 }, async () => {
  const store = new RunStateStore({ jobId: 'gap', name: 'gap', totalSteps: 500, targetWorkers: 2 });
  feedRun(store, 120);
  const server = await createDashboardServer({ view: store });
  servers.push(server);
  const page = await context.newPage();
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let answered!: () => void;
  const historyAnswered = new Promise<void>((r) => (answered = r));
  await page.route('**/api/history*', async (route) => {
    // The server answers now (history up to step 120); the page gets it only later.
    const response = await route.fetch();
    answered();
    await released;
    await route.fulfill({ response });
  });
  await page.goto(server.url, { timeout: 20_000 });
  await historyAnswered;
  await page.waitForFunction(() => document.querySelector('#live')?.getAttribute('data-state') === 'live', null, { timeout: 20_000 });
  for (let s = 121; s <= 130; s++) store.recordStep(step(s));
  release();
  await page.waitForFunction(() => document.querySelector('#chart-loss')?.getAttribute('data-last-step') === '130', null, { timeout: 20_000 });
  assert.equal(Number(await page.locator('#chart-loss').getAttribute('data-points')), 130);
  assert.equal(Number(await page.locator('#chart-lr').getAttribute('data-points')), 130);
  await page.unrouteAll({ behavior: 'ignoreErrors' });
  await page.close();
});

test('with a token, the page asks for it, signs in from the URL fragment, and then works', { timeout: 60_000 }, async () => {
  const token = 'test-token-0123456789abcdef';
  const store = new RunStateStore({ jobId: 'secret', name: 'secret', totalSteps: 10, targetWorkers: 2 });
  feedRun(store, 5);
  const server = await createDashboardServer({ view: store, token });
  servers.push(server);
  const page = await context.newPage();
  const first = await page.goto(server.url, { timeout: 20_000 });
  assert.equal(first?.status(), 401);
  await page.locator('#login').waitFor({ timeout: 10_000 });
  assert.equal(await page.locator('#workers').count(), 0);
  // A wrong token is refused with a message.
  await page.fill('#token', 'wrong-token-wrong-token');
  await page.click('button[type="submit"]');
  await page.waitForFunction(() => /not right/.test(document.querySelector('#message')?.textContent ?? ''), null, { timeout: 10_000 });

  await page.close();

  const signedIn = await context.newPage();
  await signedIn.goto(`${server.url}#token=${token}`, { timeout: 20_000 });
  await signedIn.locator('#workers tbody tr').first().waitFor({ timeout: 20_000 });
  assert.equal(new URL(signedIn.url()).hash, '', 'the token is removed from the address bar');
  assert.equal(await signedIn.locator('#workers tbody tr').count(), 2);
  await signedIn.waitForFunction(() => document.querySelector('#live')?.getAttribute('data-state') === 'live', null, { timeout: 10_000 });
  store.recordStep(step(6));
  await signedIn.waitForFunction(() => document.querySelector('#chart-loss')?.getAttribute('data-last-step') === '6', null, { timeout: 10_000 });
  await signedIn.close();
});
