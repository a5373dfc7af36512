// The dashboard's HTTP API on a real server: every answer parsed with its published zod schema,
// live updates over SSE, /metrics parsed as Prometheus text, probes, and the bearer token.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { z } from 'zod';
import {
  checkpointsResponseSchema,
  errorResponseSchema,
  eventsResponseSchema,
  galleryResponseSchema,
  historyResponseSchema,
  jobSummarySchema,
  liveUpdateSchema,
  overviewResponseSchema,
  skippedResponseSchema,
  stepsResponseSchema,
  workersResponseSchema,
  type LiveUpdate,
} from '../src/dashboard/api-schema.ts';
import { RunStateStore } from '../src/dashboard/run-state.ts';
import { createDashboardServer, dashboardServerOptions, type DashboardServer } from '../src/dashboard/dashboard-server.ts';
import { resolveDashboardToken } from '../src/dashboard/dashboard-auth.ts';
import { attentionHeatmapPng } from '../src/dashboard/attention-heatmap.ts';
import { createTrainingMetrics } from '../src/observability/metrics.ts';
import { dashboardSchema } from '../src/config/dashboard-schema.ts';
import { PartiError } from '../src/errors.ts';

const servers: DashboardServer[] = [];
after(async () => {
  for (const s of servers) await s.close();
});

async function start(options: Parameters<typeof createDashboardServer>[0]): Promise<DashboardServer> {
  const s = await createDashboardServer(options);
  servers.push(s);
  return s;
}

function stepRecord(step: number, extra: Record<string, unknown> = {}) {
  return { step, time: 1_700_000_000_000 + step * 1000, loss: 4 / Math.sqrt(step), stepMs: 800 + (step % 5), tokensPerSec: 1600 - (step % 7), samplesPerSec: 20, lr: 1e-3, gradNorm: 1.5, allReduceMs: 30, busBwBytesPerSec: 2.5e8, worldSize: 2, ...extra };
}

function populated() {
  const metrics = createTrainingMetrics();
  const store = new RunStateStore({ jobId: 'tiny-1', name: 'tiny', configHash: 'cafe0123', totalSteps: 5000, targetWorkers: 2, batchSize: 16, metrics, eventsKept: 50 });
  store.upsertWorker({ id: 'w0', host: '127.0.0.1:5000', rank: 0, state: 'training' });
  store.upsertWorker({ id: 'w1', host: '127.0.0.1:5001', rank: 1, state: 'training' });
  store.setJob({ state: 'running', worldSize: 2, epoch: 1 });
  for (let s = 1; s <= 3000; s++) store.recordStep(stepRecord(s, s === 1500 ? { skipped: true, loss: Number.NaN } : {}));
  store.recordSkippedSample({ reason: 'decode', shard: 's-0001.tar', key: 'k17', step: 12 });
  store.recordSkippedSample({ reason: 'decode', shard: 's-0001.tar', key: 'k18', step: 12 });
  store.recordSkippedSample({ reason: 'caption-too-long', shard: 's-0002.tar', key: 'k3' });
  store.addCheckpoint({ step: 1000, time: Date.now(), uri: 'file:///r/ckpt/1000/manifest.json', bytes: 1234, saveSeconds: 2.5, worldSize: 2 });
  store.recordCheckpointLoad(1000, 0.75);
  const heat = attentionHeatmapPng([0, 1, 2, 3], 2, 2, 3);
  store.addGalleryItem({ step: 1000, prompt: 'a red circle', png: heat, width: 6, height: 6, attention: [{ token: 'red', png: heat }] });
  return { store, metrics };
}

async function getJson<S extends z.ZodType>(url: string, schema: S, init?: RequestInit): Promise<z.infer<S>> {
  const res = await fetch(url, init);
  const body = await res.json();
  assert.equal(res.status, 200, `${url}: ${JSON.stringify(body)}`);
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
  return schema.parse(body);
}

/** Parses Prometheus text exposition format (0.0.4): `name{labels} value` samples, keyed by `name{labels}`. */
function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (meta) {
      if (meta[1] === 'TYPE') {
        assert.match(meta[3]!, /^(counter|gauge|histogram|summary|untyped)$/);
        types.set(meta[2]!, meta[3]!);
      }
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$/.exec(line);
    assert.ok(m, `not a Prometheus sample line: ${JSON.stringify(line)}`);
    const base = m[1]!.replace(/_(bucket|sum|count)$/, '');
    assert.ok(types.has(m[1]!) || types.has(base), `sample ${m[1]} has no TYPE line`);
    samples.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]));
  }
  return samples;
}

test('every JSON endpoint answers what its schema says', async () => {
  const { store, metrics } = populated();
  const s = await start({ view: store, registry: metrics.registry, historyPoints: 200 });

  const overview = await getJson(`${s.url}api/overview`, overviewResponseSchema);
  assert.equal(overview.job.step, 3000);
  assert.equal(overview.workers.length, 2);
  assert.equal(overview.historyPoints, 200);
  assert.equal(overview.gallery.length, 1);

  const job = await getJson(`${s.url}api/job`, jobSummarySchema);
  assert.deepEqual(
    { state: job.state, step: job.step, skippedSteps: job.skippedSteps, skippedSamples: job.skippedSamples, lastCheckpointStep: job.lastCheckpointStep },
    { state: 'running', step: 3000, skippedSteps: 1, skippedSamples: 3, lastCheckpointStep: 1000 },
  );
  const workers = await getJson(`${s.url}api/workers`, workersResponseSchema);
  assert.deepEqual(workers.workers.map((w) => [w.rank, w.host, w.state]), [[0, '127.0.0.1:5000', 'training'], [1, '127.0.0.1:5001', 'training']]);

  // History: downsampled to the default budget; a non-finite loss (the skipped step) is left out.
  const history = await getJson(`${s.url}api/history`, historyResponseSchema);
  assert.equal(history.total, 3000);
  assert.equal(history.lastStep, 3000);
  assert.deepEqual(Object.keys(history.series).sort(), ['loss', 'lr', 'tokensPerSec']);
  assert.equal(history.series.loss!.step.length, 200);
  assert.equal(history.series.loss!.step[0], 1);
  assert.equal(history.series.loss!.step.at(-1), 3000);
  assert.ok(!history.series.loss!.step.includes(1500));
  const window = await getJson(`${s.url}api/history?series=gradNorm,busBwBytesPerSec&points=50&from=101&to=120`, historyResponseSchema);
  assert.equal(window.total, 20);
  assert.deepEqual(window.series.gradNorm!.step, Array.from({ length: 20 }, (_, i) => 101 + i));
  assert.ok(window.series.busBwBytesPerSec!.value.every((v) => v === 2.5e8));

  // Steps: full records, paged.
  const page1 = await getJson(`${s.url}api/steps?after=0&limit=1000`, stepsResponseSchema);
  assert.equal(page1.steps.length, 1000);
  assert.equal(page1.next, 1000);
  const last = await getJson(`${s.url}api/steps?after=2990`, stepsResponseSchema);
  assert.deepEqual(last.steps.map((r) => r.step), Array.from({ length: 10 }, (_, i) => 2991 + i));
  assert.equal(last.next, undefined);

  const checkpoints = await getJson(`${s.url}api/checkpoints`, checkpointsResponseSchema);
  assert.deepEqual(checkpoints.checkpoints.map((c) => [c.step, c.bytes]), [[1000, 1234]]);
  const skipped = await getJson(`${s.url}api/skipped`, skippedResponseSchema);
  assert.deepEqual(skipped, { samples: { decode: 2, 'caption-too-long': 1 }, steps: 1 });

  const events = await getJson(`${s.url}api/events?limit=5`, eventsResponseSchema);
  assert.equal(events.events.length, 5);
  assert.equal(events.events.at(-1)!.seq, events.lastSeq);
  const kinds = (await getJson(`${s.url}api/events`, eventsResponseSchema)).events.map((e) => e.kind);
  for (const k of ['join', 'skipped-step', 'skipped-sample', 'checkpoint', 'recovery'] as const) assert.ok(kinds.includes(k), k);
  const after = await getJson(`${s.url}api/events?after=${events.lastSeq - 2}`, eventsResponseSchema);
  assert.deepEqual(after.events.map((e) => e.seq), [events.lastSeq - 1, events.lastSeq]);

  const gallery = await getJson(`${s.url}api/gallery`, galleryResponseSchema);
  const item = gallery.items[0]!;
  assert.equal(item.prompt, 'a red circle');
  for (const path of [item.image, item.attention[0]!.image]) {
    const res = await fetch(new URL(path, s.url));
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'image/png');
    assert.deepEqual([...new Uint8Array(await res.arrayBuffer()).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
  }
});

test('bad requests get 400/404/405 with an error body naming the problem', async () => {
  const { store } = populated();
  const s = await start({ view: store });
  const cases: [string, RequestInit | undefined, number, RegExp][] = [
    ['api/history?series=loss,nope', undefined, 400, /series: unknown series "nope"/],
    ['api/history?points=1', undefined, 400, /points: must be >= 3/],
    ['api/steps?limit=abc', undefined, 400, /limit: must be a number/],
    ['api/gallery/g999/image.png', undefined, 404, /no gallery image/],
    ['api/nothing', undefined, 404, /no such page/],
    ['api/job', { method: 'POST' }, 405, /POST is not allowed/],
  ];
  for (const [path, init, status, message] of cases) {
    const res = await fetch(`${s.url}${path}`, init);
    assert.equal(res.status, status, path);
    assert.match(errorResponseSchema.parse(await res.json()).error, message);
  }
});

test('live updates arrive over Server-Sent Events and match the update schema', { timeout: 20_000 }, async () => {
  const { store } = populated();
  const s = await start({ view: store });
  const controller = new AbortController();
  const res = await fetch(`${s.url}api/stream`, { signal: controller.signal });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const updates: LiveUpdate[] = [];
  let buffer = '';
  async function readUntil(n: number): Promise<void> {
    const deadline = Date.now() + 10_000;
    while (updates.length < n) {
      assert.ok(Date.now() < deadline, `only ${updates.length} of ${n} updates arrived`);
      const { value, done } = await reader.read();
      assert.ok(!done, 'the stream ended');
      buffer += value;
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const message = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const type = /^event: (.*)$/m.exec(message)?.[1];
        const data = /^data: (.*)$/m.exec(message)?.[1];
        if (!type || !data) continue; // retry: line, keep-alive comments
        const update = liveUpdateSchema.parse(JSON.parse(data));
        assert.equal(update.type, type);
        updates.push(update);
      }
    }
  }
  // The subscription exists once the response headers arrived.
  store.recordStep(stepRecord(3001));
  store.upsertWorker({ id: 'w2', host: '127.0.0.1:5002', state: 'joining' });
  await readUntil(4); // step, job, join event, worker
  assert.deepEqual(updates.map((u) => u.type), ['step', 'job', 'event', 'worker']);
  assert.equal(updates[0]!.type === 'step' && updates[0]!.step.step, 3001);
  assert.equal(updates[2]!.type === 'event' && updates[2]!.event.kind, 'join');
  controller.abort();
  await reader.cancel().catch(() => {});
});

test('/metrics is Prometheus text with the training metrics the store keeps up to date', async () => {
  const { store, metrics } = populated();
  const s = await start({ view: store, registry: metrics.registry });
  const res = await fetch(`${s.url}metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const m = parsePrometheus(await res.text());
  assert.equal(m.get('parti_step'), 3000);
  assert.equal(m.get('parti_steps_total'), 3000);
  assert.equal(m.get('parti_skipped_steps_total'), 1);
  assert.equal(m.get('parti_step_seconds_count'), 3000);
  assert.equal(m.get('parti_step_seconds_bucket{le="1"}'), 3000);
  assert.equal(m.get('parti_step_seconds_bucket{le="0.5"}'), 0);
  assert.equal(m.get('parti_tokens_per_second'), stepRecord(3000).tokensPerSec);
  assert.equal(m.get('parti_loss'), stepRecord(3000).loss);
  assert.equal(m.get('parti_grad_norm'), 1.5);
  assert.equal(m.get('parti_learning_rate'), 1e-3);
  assert.equal(m.get('parti_allreduce_busbw_bytes_per_second'), 2.5e8);
  assert.equal(m.get('parti_data_samples_per_second'), 20);
  assert.equal(m.get('parti_skipped_samples_total{reason="decode"}'), 2);
  assert.equal(m.get('parti_skipped_samples_total{reason="caption-too-long"}'), 1);
  assert.equal(m.get('parti_checkpoint_save_seconds_count'), 1);
  assert.equal(m.get('parti_checkpoint_save_seconds_sum'), 2.5);
  assert.equal(m.get('parti_checkpoint_load_seconds_sum'), 0.75);
  assert.equal(m.get('parti_workers_up'), 2);
  store.upsertWorker({ id: 'w1', state: 'failed' }, 'killed');
  const m2 = parsePrometheus(await (await fetch(`${s.url}metrics`)).text());
  assert.equal(m2.get('parti_workers_up'), 1);
  assert.equal(m2.get('parti_worker_failures_total'), 1);
});

test('/healthz always answers; /readyz follows the coordinator', async () => {
  const store = new RunStateStore({ jobId: 'j', name: 'j' });
  const s = await start({ view: store });
  assert.equal((await fetch(`${s.url}healthz`)).status, 200);
  assert.equal((await fetch(`${s.url}readyz`)).status, 503);
  store.setReady(true);
  assert.equal((await fetch(`${s.url}readyz`)).status, 200);
});

test('with a token set, the page, the API, the stream and /metrics need it; probes do not', async () => {
  const token = 'a-long-enough-token-0123456789';
  const { store, metrics } = populated();
  store.setReady(true);
  const s = await start({ view: store, registry: metrics.registry, token });
  const protectedPaths = ['api/overview', 'api/job', 'api/workers', 'api/history', 'api/steps', 'api/events', 'api/checkpoints', 'api/skipped', 'api/gallery', 'api/gallery/g1/image.png', 'api/stream', 'metrics', 'app.js', 'vendor/uPlot.esm.js'];
  for (const path of protectedPaths) {
    for (const authorization of [undefined, 'Bearer wrong-token', `Bearer ${token}x`, `Basic ${token}`, token]) {
      const res = await fetch(`${s.url}${path}`, authorization ? { headers: { authorization } } : {});
      assert.equal(res.status, 401, `${path} with ${authorization}`);
      assert.equal(res.headers.get('www-authenticate'), 'Bearer realm="parti dashboard"');
      await res.body?.cancel();
    }
  }
  for (const path of protectedPaths.filter((p) => p !== 'api/stream')) {
    const res = await fetch(`${s.url}${path}`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(res.status, 200, path);
    await res.body?.cancel();
  }
  // The page without the token is the sign-in page, with 401.
  const login = await fetch(s.url);
  assert.equal(login.status, 401);
  assert.match(await login.text(), /id="login"/);
  // Probes and the sign-in assets are open.
  for (const path of ['healthz', 'readyz', 'login.js', 'login.css']) assert.equal((await fetch(`${s.url}${path}`)).status, 200, path);

  // A session: POST api/session with the bearer token gives a cookie that opens everything.
  assert.equal((await fetch(`${s.url}api/session`, { method: 'POST' })).status, 401);
  assert.equal((await fetch(`${s.url}api/session`, { method: 'POST', headers: { authorization: 'Bearer nope' } })).status, 401);
  const session = await fetch(`${s.url}api/session`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  assert.equal(session.status, 204);
  const setCookie = session.headers.get('set-cookie') ?? '';
  assert.match(setCookie, /^parti_dashboard_session=[A-Za-z0-9_-]+; HttpOnly; SameSite=Strict; Path=\/$/);
  assert.ok(!setCookie.includes(token), 'the cookie does not hold the token itself');
  const cookie = setCookie.split(';')[0]!;
  const page = await fetch(s.url, { headers: { cookie } });
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<script type="module" src="app.js">/);
  const job = await getJson(`${s.url}api/job`, jobSummarySchema, { headers: { cookie } });
  assert.equal(job.jobId, 'tiny-1');
  const stream = await fetch(`${s.url}api/stream`, { headers: { cookie } });
  assert.equal(stream.status, 200);
  await stream.body?.cancel();
  assert.equal((await fetch(`${s.url}api/job`, { headers: { cookie: `${cookie}x` } })).status, 401);
});

function getWithHost(url: string, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { host } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

test('without a token: loopback only (unless allowed), and only loopback Host names', async () => {
  const store = new RunStateStore({ jobId: 'j', name: 'j' });
  await assert.rejects(createDashboardServer({ view: store, host: '0.0.0.0' }), (err: unknown) => {
    assert.ok(err instanceof PartiError);
    assert.equal(err.code, 'config');
    assert.match(err.message, /dashboard\.host: 0\.0\.0\.0 is not loopback and no token is set/);
    return true;
  });
  const open = await start({ view: store, host: '0.0.0.0', allowUnauthenticated: true });
  assert.equal((await fetch(`${open.url}api/job`)).status, 200);
  const withToken = await start({ view: store, host: '0.0.0.0', token: 'x'.repeat(20) });
  assert.equal((await fetch(`${withToken.url}api/job`)).status, 401);

  // DNS rebinding: a loopback server without a token answers loopback Host names only.
  const local = await start({ view: store });
  assert.equal(await getWithHost(`${local.url}api/job`, `localhost:${local.port}`), 200);
  assert.equal(await getWithHost(`${local.url}api/job`, `127.0.0.1:${local.port}`), 200);
  assert.equal(await getWithHost(`${local.url}api/job`, `attacker.example:${local.port}`), 403);
  // A port in use is a config error naming the field.
  await assert.rejects(createDashboardServer({ view: store, port: local.port }), /dashboard\.port: cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)/);
});

test('the token comes from the config, a token file or an environment variable', () => {
  const dir = mkdtempSync(join(tmpdir(), 'parti-token-'));
  try {
    const file = join(dir, 'token');
    writeFileSync(file, '  file-token-0123456789\n');
    const base = dashboardSchema.parse({});
    assert.equal(base.host, '127.0.0.1');
    assert.equal(resolveDashboardToken(base, {}), undefined);
    assert.equal(resolveDashboardToken(base, { PARTI_DASHBOARD_TOKEN: 'env-token-0123456789' }), 'env-token-0123456789');
    assert.equal(resolveDashboardToken({ ...base, tokenEnv: 'MY_TOKEN' }, { MY_TOKEN: 'my-token-0123456789' }), 'my-token-0123456789');
    assert.equal(resolveDashboardToken({ ...base, tokenFile: file }, { PARTI_DASHBOARD_TOKEN: 'env-token-0123456789' }), 'file-token-0123456789');
    assert.equal(resolveDashboardToken({ ...base, token: 'config-token-0123456789', tokenFile: file }, {}), 'config-token-0123456789');
    assert.throws(() => resolveDashboardToken({ ...base, tokenFile: join(dir, 'missing') }, {}), /dashboard\.tokenFile: cannot read .*missing \(ENOENT\)/);
    assert.throws(() => resolveDashboardToken(base, { PARTI_DASHBOARD_TOKEN: 'short' }), /\$PARTI_DASHBOARD_TOKEN must hold a token of at least 16 characters/);
    const store = new RunStateStore({ jobId: 'j', name: 'j' });
    const options = dashboardServerOptions({ ...base, tokenFile: file, port: 0 }, { view: store }, {});
    assert.deepEqual({ host: options.host, port: options.port, token: options.token }, { host: '127.0.0.1', port: 0, token: 'file-token-0123456789' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('live-update streams are capped (503 with Retry-After beyond maxStreams) and closed ones free their place', { timeout: 20_000 }, async () => {
  const { store, metrics } = populated();
  const s = await start({ view: store, maxStreams: 2, registry: metrics.registry, metrics });
  const open = async () => {
    const controller = new AbortController();
    const res = await fetch(`${s.url}api/stream`, { signal: controller.signal });
    return { res, controller };
  };
  const waitStreams = async (n: number) => {
    const deadline = Date.now() + 10_000;
    while (s.openStreams() !== n) {
      assert.ok(Date.now() < deadline, `${s.openStreams()} streams open, expected ${n}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const a = await open();
  const b = await open();
  assert.deepEqual([a.res.status, b.res.status], [200, 200]);
  await waitStreams(2);
  const refused = await fetch(`${s.url}api/stream`);
  assert.equal(refused.status, 503);
  assert.equal(refused.headers.get('retry-after'), '10');
  assert.match(errorResponseSchema.parse(await refused.json()).error, /too many live-update streams: 2 open, at most 2 \(dashboard\.maxStreams\)/);
  const counted = await (await fetch(`${s.url}metrics`)).text();
  assert.match(counted, /^parti_dashboard_streams 2$/m);
  assert.match(counted, /^parti_dashboard_streams_refused_total 1$/m);
  // The rest of the API is not limited.
  assert.equal((await fetch(`${s.url}api/job`)).status, 200);
  // A client that goes away frees its place; updates go on reaching the others.
  a.controller.abort();
  await a.res.body?.cancel().catch(() => {});
  await waitStreams(1);
  const c = await open();
  assert.equal(c.res.status, 200);
  await waitStreams(2);
  store.recordStep(stepRecord(3001));
  const reader = c.res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = '';
  const deadline = Date.now() + 10_000;
  while (!/event: step/.test(text)) {
    assert.ok(Date.now() < deadline, 'no step update on the new stream');
    const { value, done } = await reader.read();
    assert.ok(!done, 'the stream ended');
    text += value;
  }
  for (const x of [b, c]) x.controller.abort();
  await reader.cancel().catch(() => {});
  await waitStreams(0);
  assert.match(await (await fetch(`${s.url}metrics`)).text(), /^parti_dashboard_streams 0$/m);
  assert.equal(dashboardSchema.parse({}).maxStreams, 32);
  assert.equal(dashboardServerOptions(dashboardSchema.parse({ maxStreams: 5 }), { view: store }).maxStreams, 5);
});
