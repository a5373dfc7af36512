// The dashboard during a real training run: the real Coordinator and its gRPC service on
// 127.0.0.1, two real WorkerRuntimes (the orchestration's linear test model, in-memory
// collectives, in this process), and the dashboard the coordinator serves through
// startCoordinatorDashboard. Headless Chromium (Debian's) watches the run: it sees the worker
// table and the charts update, and a screenshot is saved in test-artifacts/.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { CollectiveNode } from '../src/collective/collective-node.ts';
import { InMemoryHub } from '../src/collective/in-memory-transport.ts';
import { Coordinator } from '../src/coordinator/coordinator.ts';
import { startCoordinatorServer, type CoordinatorServer } from '../src/coordinator/coordinator-server.ts';
import { StepPlan } from '../src/coordinator/step-samples.ts';
import { EpochPlan } from '../src/data/epoch-plan.ts';
import { LinearModel } from '../src/worker/linear-model.ts';
import { WorkerRuntime } from '../src/worker/worker-runtime.ts';
import { dashboardSchema } from '../src/config/dashboard-schema.ts';
import { startCoordinatorDashboard, type CoordinatorDashboard } from '../src/dashboard/coordinator-bridge.ts';
import { jobSummarySchema, overviewResponseSchema, stepsResponseSchema, workersResponseSchema } from '../src/dashboard/api-schema.ts';
import { launchChromium } from './helpers/chromium.ts';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
});

const steps = 30;

test('Chromium watches a real 2-worker training run on the dashboard', { timeout: 120_000 }, async () => {
  const coordinator = new Coordinator({
    jobId: 'dash-run',
    configHash: 'hash',
    totalSteps: steps,
    microBatch: 4,
    plan: new StepPlan(new EpochPlan([{ samples: 96 }], { seed: 3, globalBatch: 8 })),
    targetWorkers: 2,
    // Elastic down to 1: worker-1 leaves half way (as on SIGTERM) and the job goes on.
    minWorkers: 1,
    heartbeatMs: 100,
    failureTimeoutMs: 3000,
    stepDeadlineMs: 20_000,
    zeroStage: 0,
    checkpointEvery: 0,
    checkpointAtEnd: false,
    checkpoints: null,
    ledgerFile: null,
  });
  cleanups.push(() => coordinator.close());
  const grpc: CoordinatorServer = await startCoordinatorServer(coordinator, '127.0.0.1', 0, 1 << 20);
  cleanups.push(() => grpc.close());
  const dash: CoordinatorDashboard = await startCoordinatorDashboard(coordinator, dashboardSchema.parse({ port: 0 }), { name: 'linear', stage: 'linear', batchSize: 8 });
  cleanups.push(() => dash.close());

  const browser = await launchChromium({ width: 1400, height: 1000 });
  cleanups.push(() => browser.close());
  const context = browser.context;
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));

  // The page is open before any worker joins: the job waits.
  await page.goto(dash.url, { timeout: 20_000 });
  await page.waitForFunction(() => document.querySelector('#job-state')?.textContent === 'waiting', null, { timeout: 20_000 });
  await page.waitForFunction(() => document.querySelector('#live')?.getAttribute('data-state') === 'live', null, { timeout: 20_000 });

  const hub = new InMemoryHub();
  const runtimes = Array.from({ length: 2 }, (_, i) =>
    new WorkerRuntime({
      coordinator: grpc.address,
      jobId: 'dash-run',
      configHash: 'hash',
      name: `worker-${i}`,
      // A short sleep per microbatch so the run lasts long enough to be watched.
      createModel: async () => new LinearModel({ dim: 16, seed: 5, lr: 0.05, stepDelayMs: 15 }),
      collective: new CollectiveNode(hub.transport(), { jobId: 'dash-run', chunkBytes: 64 }),
      seed: 0,
      zeroStage: 0,
      heartbeatMs: 100,
      rpcDeadlineMs: 5000,
      stepDeadlineMs: 20_000,
      maxMessageBytes: 1 << 20,
      reconnectMs: 2000,
      store: null,
    }),
  );
  const exits = Promise.all(runtimes.map((r) => r.run()));
  exits.catch(() => {});

  // The worker table fills in, and the charts grow while the run goes on.
  await page.waitForFunction(() => document.querySelectorAll('#workers tbody tr[data-state="training"]').length === 2, null, { timeout: 30_000 });
  assert.deepEqual(await page.locator('#workers tbody td.rank').allTextContents(), ['0', '1']);
  assert.deepEqual((await page.locator('#workers tbody tr td:nth-child(2)').allTextContents()).sort(), ['worker-0', 'worker-1']);
  await page.waitForFunction(() => Number(document.querySelector('#chart-loss')?.getAttribute('data-last-step')) >= 3, null, { timeout: 30_000 });
  const seen = Number(await page.locator('#chart-loss').getAttribute('data-last-step'));
  assert.ok(seen < steps, `the page saw the run in progress (step ${seen} of ${steps})`);
  await page.waitForFunction((s) => Number(document.querySelector('#chart-loss')?.getAttribute('data-last-step')) > s + 5, seen, { timeout: 30_000 });
  assert.equal(await page.locator('#chart-loss canvas').count(), 1);
  // Each worker's own step time and throughput, from its step reports (the linear model counts
  // samples, not tokens, so the column shows samples/s).
  await page.waitForFunction(() => Array.from(document.querySelectorAll('#workers tbody tr[data-state="training"] td:nth-child(7)')).every((td) => /^\d+(\.\d+)? (ms|s)$/.test(td.textContent ?? '')), null, { timeout: 20_000 });
  assert.equal(await page.locator('#workers-rate').textContent(), 'Samples/s');
  for (const rate of await page.locator('#workers tbody tr[data-state="training"] td:nth-child(8)').allTextContents()) assert.ok(Number(rate) > 0, rate);

  // The API answers its schemas while the run goes on.
  const overview = overviewResponseSchema.parse(await (await fetch(`${dash.url}api/overview`)).json());
  assert.equal(overview.job.jobId, 'dash-run');
  assert.equal(overview.job.worldSize, 2);
  assert.ok(overview.events.some((e) => e.kind === 'join'));
  mkdirSync('test-artifacts', { recursive: true });
  await page.screenshot({ path: join('test-artifacts', 'dashboard-training-run.png'), fullPage: true });

  // worker-1 leaves at a step boundary: its row says so, the job goes on with one worker.
  await runtimes[1]!.requestLeave('test: scale down');
  await page.waitForFunction(() => document.querySelector('#workers tbody tr[data-state="left"]')?.textContent?.includes('worker-1') ?? false, null, { timeout: 30_000 });
  await page.locator('#events li[data-kind="leave"]').first().waitFor({ timeout: 10_000 });
  await page.waitForFunction(() => /^1 \//.test(document.querySelector('#s-workers')?.textContent ?? ''), null, { timeout: 10_000 });

  const done = await exits;
  assert.equal(done[0]!.applied, steps);
  assert.ok(done[1]!.applied < steps, `worker-1 left after ${done[1]!.applied} steps`);
  await page.waitForFunction(() => document.querySelector('#job-state')?.textContent === 'finished', null, { timeout: 20_000 });
  await page.waitForFunction((n) => document.querySelector('#chart-loss')?.getAttribute('data-last-step') === String(n), steps, { timeout: 20_000 });
  const job = jobSummarySchema.parse(await (await fetch(`${dash.url}api/job`)).json());
  assert.equal(job.step, steps);
  const metrics = await (await fetch(`${dash.url}metrics`)).text();
  assert.match(metrics, new RegExp(`^parti_steps_total ${steps}$`, 'm'));
  // The loss the chart drew came down: the run trained.
  const history = (await (await fetch(`${dash.url}api/history?series=loss`)).json()) as { series: { loss: { value: number[] } } };
  const loss = history.series.loss.value;
  assert.ok(loss.at(-1)! < loss[0]!, `loss ${loss[0]} -> ${loss.at(-1)}`);
  // Every step with two ranks reports the bytes it all-reduced; busbw is nccl-tests' algbw x 2(N-1)/N
  // (= algbw with N = 2); the steps with one worker have none (nothing crosses a link).
  const records = stepsResponseSchema.parse(await (await fetch(`${dash.url}api/steps?limit=100`)).json()).steps;
  const two = records.filter((r) => r.worldSize === 2);
  assert.ok(two.length > 0);
  for (const r of two) {
    assert.ok(r.allReduceBytes! > 0 && r.allReduceMs! > 0, `step ${r.step}: ${r.allReduceBytes} bytes in ${r.allReduceMs} ms`);
    assert.ok(Math.abs(r.busBwBytesPerSec! - r.allReduceBytes! / (r.allReduceMs! / 1000)) <= 1e-6 * r.busBwBytesPerSec!, `step ${r.step} busbw`);
  }
  for (const r of records.filter((x) => x.worldSize === 1)) assert.equal(r.busBwBytesPerSec, undefined);
  assert.match(metrics, /^parti_allreduce_busbw_bytes_per_second \d/m);
  const workers = workersResponseSchema.parse(await (await fetch(`${dash.url}api/workers`)).json()).workers;
  assert.deepEqual(workers.map((w) => [w.name, w.rank, w.state]), [['worker-0', 0, 'training'], ['worker-1', undefined, 'left']]);
  await page.screenshot({ path: join('test-artifacts', 'dashboard-training-run-finished.png'), fullPage: true });
  assert.deepEqual(errors, []);
});

test('a coordinator dashboard on a taken port fails, or moves to a free port when told to', async () => {
  const coordinator = new Coordinator({
    jobId: 'port-test',
    configHash: 'hash',
    totalSteps: 5,
    microBatch: 4,
    plan: new StepPlan(new EpochPlan([{ samples: 16 }], { seed: 1, globalBatch: 4 })),
    targetWorkers: 1,
    minWorkers: 1,
    heartbeatMs: 100,
    failureTimeoutMs: 3000,
    stepDeadlineMs: 5000,
    zeroStage: 0,
    checkpointEvery: 0,
    checkpointAtEnd: false,
    checkpoints: null,
    ledgerFile: null,
  });
  cleanups.push(() => coordinator.close());
  const first = await startCoordinatorDashboard(coordinator, dashboardSchema.parse({ port: 0 }), { name: 'a' });
  cleanups.push(() => first.close());
  const taken = dashboardSchema.parse({ port: first.server.port });
  await assert.rejects(startCoordinatorDashboard(coordinator, taken, { name: 'b' }), /dashboard\.port: cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)/);
  const second = await startCoordinatorDashboard(coordinator, taken, { name: 'b', onPortInUse: 'any-free-port' });
  cleanups.push(() => second.close());
  assert.notEqual(second.server.port, first.server.port);
  assert.equal((await fetch(`${second.url}readyz`)).status, 200);
  const job = jobSummarySchema.parse(await (await fetch(`${second.url}api/job`)).json());
  assert.deepEqual([job.jobId, job.name, job.state, job.totalSteps], ['port-test', 'b', 'waiting', 5]);
});
