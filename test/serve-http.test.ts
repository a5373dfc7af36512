import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { PNG } from 'pngjs';
import { PartiError } from '../src/errors.ts';
import { exportOnnx } from '../src/export/onnx-export.ts';
import { loadGenerationCheckpoint } from '../src/generate/generation-checkpoint.ts';
import { startImageServer, type ImageBackend, type RunningImageServer } from '../src/serve/image-server.ts';
import { OnnxGenerator } from '../src/serve/onnx-generator.ts';
import { writeOnnxTestRun } from './onnx-fixture.ts';

/**
 * The HTTP API of `parti serve` in-process: good requests on the real ONNX Runtime model (PNG and
 * JSON answers equal to a direct OnnxGenerator call), bad requests (400 naming the field, 404,
 * 405, 413), and the admission queue (429) and timeouts (504) against a backend whose generations
 * the test holds open, so no outcome depends on timing.
 */

let root = '';

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'parti-serve-http-'));
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Polls `cond` every 10 ms until it holds; fails after `ms`. */
async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${url}/v1/images`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  });
}

function metric(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(' ').pop()) : NaN;
}

describe('on the exported model', () => {
  let onnx: OnnxGenerator;
  let srv: RunningImageServer;

  before(async () => {
    const run = join(root, 'run');
    await writeOnnxTestRun(run);
    await exportOnnx(await loadGenerationCheckpoint(run), join(root, 'onnx'));
    onnx = await OnnxGenerator.load(join(root, 'onnx'));
    srv = await startImageServer(onnx, { port: 0, concurrency: 2, queueLimit: 4, maxBodyBytes: 1024, maxImages: 4, maxPromptChars: 100 });
  });

  after(async () => {
    await srv?.close();
    await onnx?.release();
  });

  test('POST /v1/images answers a PNG, or JSON with base64 PNGs and tokens, as generated directly', async () => {
    const settings = { cfg: 2, topK: 10, topP: 0.9, temperature: 0.8, seed: 21 };
    const body = { prompt: 'a small red square', n: 2, cfg: 2, top_k: 10, top_p: 0.9, temperature: 0.8, seed: 21 };
    const direct = await onnx.generate('a small red square', 2, settings);

    const j = await post(srv.url, body, { accept: 'application/json' });
    assert.equal(j.status, 200);
    assert.match(j.headers.get('content-type') ?? '', /application\/json/);
    const json = (await j.json()) as { images: { index: number; png: string; tokens: number[] }[]; settings: Record<string, number>; truncated: boolean };
    assert.equal(json.images.length, 2);
    assert.deepEqual(json.settings, { n: 2, cfg: 2, top_k: 10, top_p: 0.9, temperature: 0.8, seed: 21 });
    json.images.forEach((im, i) => {
      assert.deepEqual(im.tokens, Array.from(direct.tokens[i]!));
      const png = PNG.sync.read(Buffer.from(im.png, 'base64'));
      assert.equal(png.width, onnx.imageSize);
      for (let p = 0; p < onnx.imageSize * onnx.imageSize; p++) {
        for (let c = 0; c < 3; c++) assert.equal(png.data[p * 4 + c], direct.images[i]![p * 3 + c]);
      }
    });

    // The same request as PNG (n = 1): the first image, byte for byte the JSON's.
    const one = await post(srv.url, { ...body, n: 1 });
    assert.equal(one.status, 200);
    assert.equal(one.headers.get('content-type'), 'image/png');
    assert.equal(one.headers.get('x-parti-seed'), '21');
    assert.deepEqual(Buffer.from(await one.arrayBuffer()), Buffer.from(json.images[0]!.png, 'base64'));

    // n > 1 as PNG: one grid image holding both; format overrides Accept.
    const grid = await post(srv.url, { ...body, format: 'png' }, { accept: 'application/json' });
    assert.equal(grid.status, 200);
    const g = PNG.sync.read(Buffer.from(await grid.arrayBuffer()));
    assert.ok(g.width > onnx.imageSize * 2 - 1);

    // Defaults: absent sampling fields take the export's (parti generate's) defaults.
    const dflt = (await (await post(srv.url, { prompt: 'x', format: 'json' })).json()) as { settings: Record<string, number>; images: { tokens: number[] }[] };
    assert.deepEqual(dflt.settings, { n: 1, cfg: 3, top_k: 0, top_p: 1, temperature: 1, seed: 0 });
    const ref = await onnx.generate('x', 1, { cfg: 3, topK: 0, topP: 1, temperature: 1, seed: 0 });
    assert.deepEqual(dflt.images[0]!.tokens, Array.from(ref.tokens[0]!));
  });

  test('bad requests get 400 naming the field; unknown routes 404, wrong method 405, big bodies 413', async () => {
    const cases: [unknown, string][] = [
      [{}, 'prompt'],
      [{ prompt: 3 }, 'prompt'],
      [{ prompt: 'x'.repeat(101) }, 'prompt'],
      [{ prompt: 'x', n: 0 }, 'n'],
      [{ prompt: 'x', n: 5 }, 'n'],
      [{ prompt: 'x', n: 1.5 }, 'n'],
      [{ prompt: 'x', cfg: 'high' }, 'cfg'],
      [{ prompt: 'x', top_k: -1 }, 'top_k'],
      [{ prompt: 'x', top_k: 2.5 }, 'top_k'],
      [{ prompt: 'x', top_p: 0 }, 'top_p'],
      [{ prompt: 'x', top_p: 1.01 }, 'top_p'],
      [{ prompt: 'x', temperature: 0 }, 'temperature'],
      [{ prompt: 'x', temperature: 'warm' }, 'temperature'],
      [{ prompt: 'x', seed: -1 }, 'seed'],
      [{ prompt: 'x', seed: 0.5 }, 'seed'],
      [{ prompt: 'x', format: 'gif' }, 'format'],
      [{ prompt: 'x', steps: 3 }, 'steps'],
      [[1, 2], '(body)'],
      ['{"prompt": ', '(body)'],
    ];
    for (const [body, field] of cases) {
      const r = await post(srv.url, body);
      assert.equal(r.status, 400, JSON.stringify(body));
      const j = (await r.json()) as { error: string; field: string; message: string };
      assert.equal(j.error, 'invalid_request');
      assert.equal(j.field, field, JSON.stringify(body));
      assert.ok(j.message.startsWith(`${field}:`) || field === '(body)', j.message);
      assert.ok(!j.message.includes('\n'));
    }
    const big = await post(srv.url, { prompt: 'x'.repeat(2000) });
    assert.equal(big.status, 413);
    assert.equal(((await big.json()) as { error: string }).error, 'body_too_large');
    const get = await fetch(`${srv.url}/v1/images`);
    assert.equal(get.status, 405);
    await get.body?.cancel();
    const nf = await fetch(`${srv.url}/v2/nothing`);
    assert.equal(nf.status, 404);
    await nf.body?.cancel();
    const health = (await (await fetch(`${srv.url}/healthz`)).json()) as { status: string; model: { imageTokens: number } };
    assert.equal(health.status, 'ok');
    assert.equal(health.model.imageTokens, onnx.imageTokens);
    const metrics = await (await fetch(`${srv.url}/metrics`)).text();
    assert.equal(metric(metrics, 'parti_serve_requests_total{code="400"}'), cases.length);
    assert.equal(metric(metrics, 'parti_serve_requests_total{code="413"}'), 1);
    assert.ok(metric(metrics, 'parti_serve_images_total') >= 5);
    assert.equal(metric(metrics, 'parti_serve_running'), 0);
  });
});

/** A backend whose generations wait until the test releases them or their signal aborts. */
class HeldBackend implements ImageBackend {
  readonly imageSize = 2;
  readonly channels = 3;
  readonly imageTokens = 4;
  readonly defaults = { cfg: 3, topK: 0, topP: 1, temperature: 1, seed: 0 };
  readonly info = { backend: 'held' };
  started = 0;
  private readonly held: (() => void)[] = [];

  generate(_prompt: string, n: number, _s: unknown, opts: { signal: AbortSignal }) {
    this.started++;
    return new Promise<{ tokens: Int32Array[]; images: Uint8Array[]; truncated: boolean }>((resolve, reject) => {
      this.held.push(() => resolve({ tokens: Array.from({ length: n }, () => new Int32Array(4)), images: Array.from({ length: n }, () => new Uint8Array(12).fill(200)), truncated: false }));
      opts.signal.addEventListener('abort', () => reject(new PartiError('deadline', 'aborted')), { once: true });
    });
  }

  /** Lets the oldest held generation finish. */
  releaseOne(): void {
    this.held.shift()?.();
  }
}

test('a full queue answers 429 with Retry-After; queued requests run when a slot frees', async () => {
  const backend = new HeldBackend();
  const srv = await startImageServer(backend, { port: 0, concurrency: 1, queueLimit: 1, timeoutMs: 60_000 });
  try {
    const a = post(srv.url, { prompt: 'a' });
    await until(() => backend.started === 1, 'the first generation to start');
    const b = post(srv.url, { prompt: 'b' });
    await until(() => srv.queue.queued === 1, 'the second request to queue');
    const c = await post(srv.url, { prompt: 'c' });
    assert.equal(c.status, 429);
    assert.equal(c.headers.get('retry-after'), '1');
    assert.equal(((await c.json()) as { error: string }).error, 'busy');
    backend.releaseOne();
    assert.equal((await a).status, 200);
    await until(() => backend.started === 2, 'the queued request to start');
    backend.releaseOne();
    const rb = await b;
    assert.equal(rb.status, 200);
    assert.equal(rb.headers.get('content-type'), 'image/png');
    const metrics = await (await fetch(`${srv.url}/metrics`)).text();
    assert.equal(metric(metrics, 'parti_serve_rejected_total'), 1);
    assert.equal(metric(metrics, 'parti_serve_requests_total{code="429"}'), 1);
    assert.equal(metric(metrics, 'parti_serve_requests_total{code="200"}'), 2);
  } finally {
    await srv.close();
  }
});

test('requests past their timeout get 504, running or queued, and free their slot', async () => {
  const backend = new HeldBackend();
  const srv = await startImageServer(backend, { port: 0, concurrency: 1, queueLimit: 1, timeoutMs: 300 });
  try {
    const [a, b] = await Promise.all([post(srv.url, { prompt: 'a' }), post(srv.url, { prompt: 'b' })]);
    assert.deepEqual([a.status, b.status], [504, 504]);
    const body = (await a.json()) as { error: string; message: string };
    assert.equal(body.error, 'timeout');
    assert.match(body.message, /300 ms/);
    await b.body?.cancel();
    assert.equal(srv.queue.running, 0);
    assert.equal(srv.queue.queued, 0);
    const metrics = await (await fetch(`${srv.url}/metrics`)).text();
    assert.equal(metric(metrics, 'parti_serve_timeouts_total'), 2);
  } finally {
    await srv.close();
  }
});

test('the server side imports no tfjs (the serving role depends on ONNX Runtime only)', async () => {
  const seen = new Set<string>();
  const packages = new Set<string>();
  const visit = async (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = await readFile(file, 'utf8');
    for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s+'([^']+)'|import\('([^']+)'\)/g)) {
      const spec = m[1] ?? m[2]!;
      if (spec.startsWith('.')) await visit(resolve(dirname(file), spec));
      else packages.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
    }
  };
  const src = join(import.meta.dirname, '..', 'src', 'serve');
  await visit(join(src, 'onnx-generator.ts'));
  await visit(join(src, 'image-server.ts'));
  assert.ok(packages.has('onnxruntime-node'));
  assert.ok(seen.size >= 8, `walked ${seen.size} files`);
  assert.deepEqual([...packages].filter((p) => p.startsWith('@tensorflow')), []);
});

test('a client that disconnects cancels its generation and frees its slot', async () => {
  const backend = new HeldBackend();
  const srv = await startImageServer(backend, { port: 0, concurrency: 1, queueLimit: 0, timeoutMs: 60_000 });
  try {
    const c = new AbortController();
    const pending = fetch(`${srv.url}/v1/images`, { method: 'POST', body: JSON.stringify({ prompt: 'a' }), signal: c.signal }).catch((e: Error) => e);
    await until(() => backend.started === 1 && srv.queue.running === 1, 'the generation to start');
    c.abort();
    assert.ok((await pending) instanceof Error);
    // The held generation was never released by the test: only the disconnect can end it.
    await until(() => srv.queue.running === 0, 'the slot to be freed');
    const next = post(srv.url, { prompt: 'b' });
    await until(() => backend.started === 2, 'the next request to start');
    backend.releaseOne(); // the first, already aborted: no effect
    backend.releaseOne();
    assert.equal((await next).status, 200);
  } finally {
    await srv.close();
  }
});
