// The dashboard during a real local training run as a user starts it: `parti train --workers 2`
// (the launcher: a coordinator, which serves the dashboard, and two worker processes on
// 127.0.0.1), with the linear test model to keep it short. Headless Chromium (Debian's) opens the
// URL the launcher prints and watches: the worker table, the charts growing, a worker SIGKILLed and
// restarted by the launcher (failure and recovery in the event log), checkpoints, the end.
// Screenshots go to test-artifacts/.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { childPids, Cluster, commandOf, freePort, linearConfig, watchStderr } from './orchestration-harness.ts';
import { overviewResponseSchema } from '../src/dashboard/api-schema.ts';
import { launchChromium } from './helpers/chromium.ts';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
});

function descendants(pid: number): number[] {
  const out: number[] = [];
  for (const c of childPids(pid)) out.push(c, ...descendants(c));
  return out;
}

const STEPS = 30;

test('Chromium watches `parti train --workers 2` through a worker SIGKILL and restart', { timeout: 150_000 }, async () => {
  const cluster = new Cluster('dash-launcher');
  const port = await freePort();
  const cfg = cluster.config(
    'job',
    linearConfig({ workers: 2 }, { steps: STEPS, stepDelayMs: 15 }, { dashboard: { port, gallery: { prompts: ['a red circle'], everySteps: 10 } }, checkpoint: { everySteps: 10, keep: 2, atEnd: true } }),
  );
  const launcher = cluster.spawn(['train', '--config', cfg, '--run-dir', join(cluster.dir, 'run'), '--workers', '2'], 'launcher');
  let tree: number[] = [];
  cleanups.push(async () => {
    for (const pid of [...tree, ...descendants(launcher.proc.pid ?? -1)]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await cluster.killAll();
  });
  const out = watchStderr(launcher);
  const urlOf = (text: string) => /dashboard: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(text)?.[1];
  await out.until('a dashboard URL', (t) => urlOf(t) !== undefined, 60_000);
  const url = urlOf(out.text());
  assert.equal(url, `http://127.0.0.1:${port}/`, 'the dashboard listens on the configured port');

  const browser = await launchChromium({ width: 1400, height: 1000 });
  cleanups.push(() => browser.close());
  const context = browser.context;
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  await page.goto(url, { timeout: 20_000 });
  await page.waitForFunction(() => document.querySelector('#live')?.getAttribute('data-state') === 'live', null, { timeout: 20_000 });

  // The worker table fills in and the charts grow while the run goes on.
  await page.waitForFunction(() => document.querySelectorAll('#workers tbody tr[data-state="training"]').length === 2, null, { timeout: 60_000 });
  await page.waitForFunction(() => Number(document.querySelector('#chart-loss')?.getAttribute('data-last-step')) >= 3, null, { timeout: 60_000 });
  const before = Number(await page.locator('#chart-loss').getAttribute('data-last-step'));
  assert.ok(before < STEPS, `the page saw the run in progress (step ${before} of ${STEPS})`);
  await page.waitForFunction(() => Array.from(document.querySelectorAll('#workers tbody tr[data-state="training"] td:nth-child(7)')).every((td) => /^\d+(\.\d+)? (ms|s)$/.test(td.textContent ?? '')), null, { timeout: 20_000 });
  mkdirSync('test-artifacts', { recursive: true });
  await page.screenshot({ path: join('test-artifacts', 'dashboard-launcher.png'), fullPage: true });

  // SIGKILL one worker process: the page shows the failure; the launcher restarts the worker and
  // the job recovers and goes on.
  tree = descendants(launcher.proc.pid!);
  const workers = tree.filter((p) => / worker /.test(commandOf(p)));
  assert.equal(workers.length, 2, 'two worker processes');
  process.kill(workers[0]!, 'SIGKILL');
  await page.locator('#events li[data-kind="failure"]').first().waitFor({ timeout: 30_000 });
  await page.locator('#workers tbody tr[data-state="failed"]').first().waitFor({ timeout: 30_000 });
  await page.locator('#events li[data-kind="recovery"]').first().waitFor({ timeout: 60_000 });
  await page.waitForFunction(() => document.querySelectorAll('#workers tbody tr[data-state="training"]').length === 2, null, { timeout: 60_000 });
  const overview = overviewResponseSchema.parse(await (await fetch(`${url}api/overview`)).json());
  assert.ok(overview.events.some((e) => e.kind === 'failure') && overview.events.some((e) => e.kind === 'recovery'));
  await page.screenshot({ path: join('test-artifacts', 'dashboard-launcher-recovered.png'), fullPage: true });

  // The run reaches its last step with its checkpoints listed.
  await page.waitForFunction((n) => document.querySelector('#chart-loss')?.getAttribute('data-last-step') === String(n), STEPS, { timeout: 90_000 });
  await page.waitForFunction((n) => Array.from(document.querySelectorAll('#checkpoints tbody tr td:first-child')).some((td) => td.textContent === String(n)), STEPS, { timeout: 30_000 });
  // Retention (keep 2) deletes step 10 once step 30 committed: still listed, marked deleted.
  await page.locator('#checkpoints tbody tr.gone').first().waitFor({ timeout: 20_000 });
  const rows = await page.locator('#checkpoints tbody tr').allInnerTexts();
  assert.deepEqual(rows.map((r) => r.split('\t')[0]), ['30', '20', '10']);
  // Size, save time and where the manifest is (the run directory's checkpoints/ store).
  for (const [i, r] of rows.entries()) assert.match(r, new RegExp(`\\t\\d+(\\.\\d)? (B|KiB|MiB)\\t[\\d.]+ (ms|s)\\t\\S*/run/checkpoints/manifests/0+${30 - 10 * i}\\.json${i === 2 ? ' \\(deleted\\)' : ''}$`));
  assert.deepEqual(await page.locator('#checkpoints tbody tr.gone td:first-child').allTextContents(), ['10']);
  // The linear test model has no images: a gallery configured for it stays empty, without a warning.
  assert.equal(await page.locator('#gallery figure.sample').count(), 0);
  assert.equal(await page.locator('#events li', { hasText: 'gallery' }).count(), 0);
  await page.screenshot({ path: join('test-artifacts', 'dashboard-launcher-finished.png'), fullPage: true });
  assert.equal(await launcher.exited, 0, out.text().slice(-2000));
  assert.deepEqual(errors, []);
});
