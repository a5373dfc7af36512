// The dashboard of a real multi-process run: `parti coordinator` (which serves the dashboard) and
// two `parti worker` processes on 127.0.0.1 with the linear test model. Headless Chromium (Debian's)
// watches it: the worker table, the charts growing, a worker SIGKILLed and replaced (failure and
// recovery in the event log), and the run finishing. Screenshots go to test-artifacts/.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';
import { Cluster, freePort, linearConfig } from './orchestration-harness.ts';
import { overviewResponseSchema } from '../src/dashboard/api-schema.ts';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
});

const STEPS = 30;

test('Chromium watches `parti coordinator` + 2 `parti worker` processes, through a worker SIGKILL', { timeout: 150_000 }, async () => {
  const cluster = new Cluster('dashboard');
  cleanups.push(() => cluster.killAll());
  const port = await freePort();
  const cfg = cluster.config(
    'job',
    linearConfig({ workers: 2, minWorkers: 2 }, { steps: STEPS, stepDelayMs: 15 }, { dashboard: { port }, checkpoint: { everySteps: 10, keep: 2, atEnd: true } }),
  );
  const coordinator = await cluster.coordinator(cfg);
  const url = `http://127.0.0.1:${port}/`;
  // The dashboard answers once the coordinator is up.
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ok = await fetch(`${url}readyz`).then((r) => r.status === 200, () => false);
    if (ok) break;
    assert.ok(Date.now() < deadline, `the dashboard at ${url} did not become ready`);
    await new Promise((r) => setTimeout(r, 200));
  }

  const profile = mkdtempSync(join(tmpdir(), 'parti-chromium-'));
  cleanups.push(() => rmSync(profile, { recursive: true, force: true }));
  const context: BrowserContext = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1400, height: 1000 },
    timeout: 30_000,
  });
  cleanups.push(() => context.close());
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  await page.goto(url, { timeout: 20_000 });
  await page.waitForFunction(() => document.querySelector('#live')?.getAttribute('data-state') === 'live', null, { timeout: 20_000 });
  assert.equal(await page.locator('#job-state').textContent(), 'waiting');

  cluster.worker(cfg, coordinator.address, 'w0');
  const w1 = cluster.worker(cfg, coordinator.address, 'w1');
  await page.waitForFunction(() => document.querySelectorAll('#workers tbody tr[data-state="training"]').length === 2, null, { timeout: 60_000 });
  await page.waitForFunction(() => Number(document.querySelector('#chart-loss')?.getAttribute('data-last-step')) >= 3, null, { timeout: 60_000 });
  const before = Number(await page.locator('#chart-loss').getAttribute('data-last-step'));
  assert.ok(before < STEPS, `the page saw the run in progress (step ${before} of ${STEPS})`);
  mkdirSync('test-artifacts', { recursive: true });
  await page.screenshot({ path: join('test-artifacts', 'dashboard-processes.png'), fullPage: true });
  // Each worker's own step time and throughput, from its step reports (the linear model counts
  // samples, not tokens, so the column shows samples/s).
  await page.waitForFunction(() => Array.from(document.querySelectorAll('#workers tbody tr[data-state="training"] td:nth-child(7)')).every((td) => /^\d+(\.\d+)? (ms|s)$/.test(td.textContent ?? '')), null, { timeout: 20_000 });
  assert.equal(await page.locator('#workers-rate').textContent(), 'Samples/s');
  for (const rate of await page.locator('#workers tbody tr[data-state="training"] td:nth-child(8)').allTextContents()) assert.ok(Number(rate) > 0, rate);

  // SIGKILL a worker: the page shows the failure; a replacement joins and the job recovers.
  w1.proc.kill('SIGKILL');
  await page.locator('#events li[data-kind="failure"]').first().waitFor({ timeout: 30_000 });
  await page.waitForFunction(() => document.querySelector('#workers tbody tr[data-state="failed"]') !== null, null, { timeout: 30_000 });
  cluster.worker(cfg, coordinator.address, 'w2');
  await page.locator('#events li[data-kind="recovery"]').first().waitFor({ timeout: 60_000 });
  await page.waitForFunction((s) => Number(document.querySelector('#chart-loss')?.getAttribute('data-last-step')) > s, before, { timeout: 60_000 });
  const overview = overviewResponseSchema.parse(await (await fetch(`${url}api/overview`)).json());
  assert.ok(overview.events.some((e) => e.kind === 'failure'));
  await page.screenshot({ path: join('test-artifacts', 'dashboard-processes-recovered.png'), fullPage: true });

  // The run ends; the last thing the page shows is the finished job at the last step.
  await page.waitForFunction((n) => document.querySelector('#chart-loss')?.getAttribute('data-last-step') === String(n), STEPS, { timeout: 90_000 });
  assert.equal(await page.locator('#s-step').textContent(), String(STEPS));
  // Checkpoints every 10 steps (into the run directory), listed with their size and save time.
  await page.waitForFunction((n) => Array.from(document.querySelectorAll('#checkpoints tbody tr td:first-child')).some((td) => td.textContent === String(n)), STEPS, { timeout: 30_000 });
  const rows = await page.locator('#checkpoints tbody tr').allInnerTexts();
  assert.deepEqual(rows.map((r) => r.split('\t')[0]), ['30', '20', '10']);
  for (const r of rows) assert.match(r, /\t\d+(\.\d)? (B|KiB|MiB)\t[\d.]+ (ms|s)\t/);
  await page.screenshot({ path: join('test-artifacts', 'dashboard-processes-finished.png'), fullPage: true });
  await coordinator.waitFor(/"done":true/, 60_000);
  assert.deepEqual(errors, []);
});
