// Every worker serves its own /metrics (`parti worker --metrics-port`): a real coordinator and two
// real workers (the linear test model, ZeRO-1, checkpoints every 4 steps) are scraped while they
// train, as an operator's Prometheus would; the servers close when the workers exit (at the job's
// end, after SIGTERM). A metrics port in use stops the worker with one line and exit code 2. Every
// wait has a deadline; children are killed in `finally`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Cluster, linearConfig } from './orchestration-harness.ts';
import { get, scrapeUntil } from './helpers/prometheus-scrape.ts';

/** `p`, or a rejection naming `what` after `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)));
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

test('each worker serves its rank\'s /metrics while it trains; /healthz 200, other paths 404; the servers close when the workers exit', { timeout: 90_000 }, async () => {
  const cluster = new Cluster('worker-metrics');
  try {
    const steps = 40;
    const cfg = cluster.config(
      'job',
      linearConfig({ workers: 2, minWorkers: 2, zeroStage: 1 }, { steps, stepDelayMs: 30 }, { checkpoint: { everySteps: 4, keep: 2, atEnd: false } }),
    );
    const c = await cluster.coordinator(cfg);
    const workers = [0, 1].map((i) => cluster.worker(cfg, c.address, `w${i}`, ['--metrics-port', '0']));
    const urls = await Promise.all(workers.map(async (w) => (await w.waitFor(/^worker metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)$/, 30_000))[1]!));
    assert.notEqual(urls[0], urls[1]);

    const seen: Map<string, number>[] = [];
    for (const url of urls) {
      // a few steps applied and one checkpoint saved by this rank
      const s = await scrapeUntil(url, (s) => (s.get('parti_worker_step') ?? 0) >= 5 && (s.get('parti_worker_checkpoints_total{result="saved"}') ?? 0) >= 1, 30_000, 'step 5 and a saved checkpoint');
      seen.push(s);
      const applied = s.get('parti_worker_steps_total')!;
      // A fresh job, nothing skipped or restored: the step the parameters are at is the steps applied.
      assert.equal(s.get('parti_worker_step'), applied);
      // Compute and all-reduce are observed together, once per step this rank reduced; a scrape can
      // land between a step's all-reduce and its commit, so at most one more than the steps applied.
      const computed = s.get('parti_worker_compute_seconds_count')!;
      assert.equal(s.get('parti_worker_allreduce_seconds_count'), computed);
      assert.ok(computed === applied || computed === applied + 1, `${url}: ${computed} steps computed, ${applied} applied`);
      assert.equal(s.get('parti_worker_optimizer_seconds_count'), applied);
      assert.ok(s.get('parti_worker_compute_seconds_sum')! > 0);
      assert.equal(s.get('parti_worker_world_size'), 2);
      assert.equal(s.get('parti_worker_reconfigurations_total'), 1);
      assert.equal(s.get('parti_worker_rejoins_total'), 0);
      // this rank's share of the global batch (24 samples, 2 ranks), every step it computed
      assert.equal(s.get('parti_worker_samples_total'), 12 * computed);
      assert.ok(s.get('parti_worker_collective_sent_bytes_total')! > 0, 'bytes sent to the ring peer');
      assert.ok(s.get('parti_worker_checkpoint_snapshot_seconds_count')! >= 1);
      assert.ok(s.get('parti_worker_checkpoint_upload_seconds_count')! >= 1);
      assert.ok(s.get('parti_process_resident_memory_bytes')! > 0);
      // the linear test model never loads tfjs
      assert.equal(s.get('parti_worker_wasm_heap_bytes'), 0);

      const page = await get(url);
      assert.match(page.type ?? '', /^text\/plain; version=0\.0\.4/);
      const base = url.replace(/\/metrics$/, '');
      const health = await get(`${base}/healthz`);
      assert.equal(health.status, 200);
      assert.equal((await get(`${base}/metrics/x`)).status, 404);
      assert.equal((await get(`${base}/dashboard`)).status, 404);
    }
    assert.deepEqual(seen.map((s) => s.get('parti_worker_rank')).sort(), [0, 1], 'one worker per rank');

    await within(c.waitFor(/"done":true/, 60_000), 61_000, 'the job to finish');
    // the open keep-alive connections of the scrapes above do not hold the workers' exit
    for (const w of workers) assert.equal(await within(w.exited, 30_000, `${w.name} to exit`), 0);
    for (const url of urls) await assert.rejects(get(url), Error, `${url} still answers after its worker exited`);
  } finally {
    await cluster.killAll();
  }
});

test('SIGTERM with a scraper connected: the worker leaves at a step boundary and exits 143, its /metrics closed', { timeout: 60_000 }, async () => {
  const cluster = new Cluster('worker-metrics-term');
  try {
    const cfg = cluster.config('job', linearConfig({ workers: 1 }, { steps: 200, stepDelayMs: 30 }));
    const c = await cluster.coordinator(cfg);
    const w = cluster.worker(cfg, c.address, 'w', ['--metrics-port', '0']);
    const url = (await w.waitFor(/^worker metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)$/, 30_000))[1]!;
    await scrapeUntil(url, (s) => (s.get('parti_worker_step') ?? 0) >= 2, 30_000, 'step 2');
    w.proc.kill('SIGTERM');
    assert.equal(await within(w.exited, 30_000, 'the worker to exit after SIGTERM'), 143);
    await assert.rejects(get(url), Error, `${url} still answers after its worker exited`);
  } finally {
    await cluster.killAll();
  }
});

test('a --metrics-port in use: the worker stops before joining, one line naming the flag and the port, exit code 2', { timeout: 60_000 }, async () => {
  const cluster = new Cluster('worker-metrics-port');
  const taken = createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  const port = (taken.address() as { port: number }).port;
  try {
    const cfg = cluster.config('job', linearConfig({ workers: 1 }));
    // (no coordinator: the worker must fail before it tries to join one)
    const w = cluster.worker(cfg, '127.0.0.1:9', 'w', ['--metrics-port', String(port)]);
    assert.equal(await within(w.exited, 30_000, 'the worker to exit'), 2);
    const stderr = readFileSync(join(cluster.dir, 'w.log'), 'utf8');
    assert.match(stderr, new RegExp(`^parti: --metrics-port: cannot listen on 127\\.0\\.0\\.1:${port} \\(EADDRINUSE: the port is in use\\)$`, 'm'));
    assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace');
  } finally {
    await cluster.killAll();
    await new Promise((r) => taken.close(r));
  }
});
