import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { createServer, type Server } from 'node:net';
import { PartiError } from '../errors.ts';
import { createWorkerMetrics, startWorkerMetricsServer } from './worker-metrics.ts';

/** The value of one sample line (`name{labels} value`) of a Prometheus text page; undefined when absent. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** GET (or another method) with a deadline; resolves with status, content type and body. */
function fetchText(url: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), body }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url}: no answer within 5 s`)));
    req.on('error', reject);
    req.end();
  });
}

test('the observer turns reports into per-rank metrics; collective bytes are read at scrape time', async () => {
  let sent = 1000;
  const m = createWorkerMetrics({ collectiveStats: () => ({ refusedFrames: 0, bytesSent: sent, bytesReceived: 900, collectives: 3, aborts: 1 }) });
  const before = await m.registry.metrics();
  assert.equal(sample(before, 'parti_worker_rank'), -1, 'no rank before a membership');
  const at = { rank: 1, worldSize: 2 };
  m.observer.reported({ kind: 'READY', epoch: 0, step: 5 }, at);
  for (const step of [5, 6]) {
    m.observer.reported({ kind: 'REDUCED', epoch: 0, step, computeMs: 300, allReduceMs: 40, allReduceBytes: 400, samples: 12, tokens: 96, skippedSamples: { 'bad-image': 1 } }, at);
    m.observer.reported({ kind: 'APPLIED', epoch: 0, step, optimizerMs: 2, nonFinite: step === 6 }, at);
  }
  m.observer.reported({ kind: 'CHECKPOINTED', epoch: 0, step: 7, snapshotMs: 15 }, at);
  m.observer.reported({ kind: 'CHECKPOINT_FAILED', epoch: 0, step: 7, snapshotMs: 5 }, at);
  m.observer.checkpointEnded(2500);
  m.observer.rejoining();
  sent = 5000;
  const text = await m.registry.metrics();
  const expected: Record<string, number> = {
    parti_worker_rank: 1,
    parti_worker_world_size: 2,
    parti_worker_step: 7,
    parti_worker_steps_total: 2,
    parti_worker_skipped_steps_total: 1,
    parti_worker_compute_seconds_count: 2,
    parti_worker_compute_seconds_sum: 0.6,
    parti_worker_allreduce_seconds_count: 2,
    'parti_worker_allreduce_seconds_bucket{le="0.05"}': 2,
    'parti_worker_allreduce_seconds_bucket{le="0.01"}': 0,
    parti_worker_optimizer_seconds_count: 2,
    parti_worker_allreduce_bytes_total: 800,
    parti_worker_samples_total: 24,
    parti_worker_tokens_total: 192,
    'parti_worker_skipped_samples_total{reason="bad-image"}': 2,
    parti_worker_collective_sent_bytes_total: 5000,
    parti_worker_collective_received_bytes_total: 900,
    parti_worker_collective_aborts_total: 1,
    parti_worker_checkpoint_snapshot_seconds_count: 2,
    parti_worker_checkpoint_snapshot_seconds_sum: 0.02,
    'parti_worker_checkpoints_total{result="saved"}': 1,
    'parti_worker_checkpoints_total{result="failed"}': 1,
    parti_worker_checkpoint_upload_seconds_count: 1,
    parti_worker_checkpoint_upload_seconds_sum: 2.5,
    parti_worker_reconfigurations_total: 1,
    parti_worker_rejoins_total: 1,
    // the test process never loaded tfjs
    parti_worker_wasm_heap_bytes: 0,
  };
  for (const [series, value] of Object.entries(expected)) {
    const got = sample(text, series);
    assert.ok(got !== undefined && Math.abs(got - value) < 1e-9, `${series}: ${got}, expected ${value}`);
  }
  assert.ok(sample(text, 'parti_process_resident_memory_bytes')! > 0, 'process metrics with the parti_ prefix, as the coordinator has them');
});

test('the wasm heap gauge reads the tfjs wasm backend once it runs', async () => {
  const { initBackend } = await import('../model/backend.ts');
  await initBackend('wasm');
  const m = createWorkerMetrics({ processMetrics: false });
  const heap = sample(await m.registry.metrics(), 'parti_worker_wasm_heap_bytes')!;
  // WebAssembly memory grows in 64 KiB pages
  assert.ok(heap > 0 && heap % 65536 === 0, `wasm heap ${heap}`);
});

test('the server answers /metrics and /healthz, 404 elsewhere, 405 to other methods, and closes with a connection open', async () => {
  const m = createWorkerMetrics({ processMetrics: false });
  m.observer.reported({ kind: 'APPLIED', epoch: 0, step: 0 }, { rank: 0, worldSize: 1 });
  const server = await startWorkerMetricsServer(m.registry, { port: 0 });
  try {
    assert.equal(server.host, '127.0.0.1');
    assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const page = await fetchText(server.url);
    assert.equal(page.status, 200);
    assert.equal(page.type, m.registry.contentType);
    assert.equal(sample(page.body, 'parti_worker_steps_total'), 1);
    const base = server.url.replace(/\/metrics$/, '');
    assert.equal((await fetchText(`${base}/healthz`)).status, 200);
    assert.equal((await fetchText(`${base}/nope`)).status, 404);
    assert.equal((await fetchText(`${base}/`)).status, 404);
    assert.equal((await fetchText(server.url, 'POST')).status, 405);
    // a scraper that keeps its connection open must not hold the worker's exit
    const { Agent } = await import('node:http');
    const agent = new Agent({ keepAlive: true });
    await new Promise<void>((resolve, reject) => request(server.url, { agent }, (res) => res.resume().on('end', resolve)).on('error', reject).end());
    const closed = await Promise.race([server.close().then(() => 'closed'), new Promise((r) => setTimeout(() => r('still open after 5 s'), 5000).unref())]);
    assert.equal(closed, 'closed');
    agent.destroy();
  } finally {
    await server.close();
  }
});

test('a port in use is a usage error naming --metrics-port and the address', async () => {
  const taken: Server = createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  const port = (taken.address() as { port: number }).port;
  try {
    const m = createWorkerMetrics({ processMetrics: false });
    await assert.rejects(startWorkerMetricsServer(m.registry, { port }), (err: unknown) => {
      assert.ok(err instanceof PartiError);
      assert.equal(err.code, 'usage');
      assert.equal(err.message, `--metrics-port: cannot listen on 127.0.0.1:${port} (EADDRINUSE: the port is in use)`);
      return true;
    });
  } finally {
    await new Promise((r) => taken.close(r));
  }
});
