import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { writeOnnxTestRun } from './onnx-fixture.ts';
import { PARTI_BIN as BIN, runParti } from './helpers/parti-cli.ts';

/**
 * The commands end to end, as separate processes: `parti export onnx --verify` on a run,
 * `parti serve` on the export over HTTP, and `parti generate` on the run: the server's images
 * for a prompt, settings and seed are generate's (same tokens, same pixels). Bad flags and a
 * missing export are one-line errors.
 */
let root = '';
const children: ChildProcess[] = [];

const parti = (args: string[]) => runParti(args);

/** stderr without JSON log lines and ONNX Runtime's own colored log lines. */
function messages(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.startsWith('parti:'));
}

/** Starts `parti serve` and resolves with its URL once it prints `listening on`. */
function serve(args: string[]): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, [BIN, 'serve', ...args], { env: { ...process.env, PARTI_LOG_FORMAT: 'json' }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`parti serve did not start within 60 s: ${err}`)), 60_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ url: m[1]!, child });
      }
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`parti serve exited with ${code}: ${err}`));
    });
  });
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'parti-serve-cli-'));
  await writeOnnxTestRun(join(root, 'run'));
});

after(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  await rm(root, { recursive: true, force: true });
});

test('parti export onnx --verify, parti serve and parti generate: the same prompt, settings and seed give the same images', async () => {
  const run = join(root, 'run');
  const out = join(root, 'onnx');
  const exp = await parti(['export', 'onnx', '--checkpoint', run, '--out', out, '--verify', '--external-threshold', '2048']);
  assert.equal(exp.code, 0, exp.stderr);
  assert.match(exp.stdout, /verify: all \d+ outputs within 0\.0001/);
  assert.match(exp.stdout, /decoder\.onnx\.data\t\d+ bytes \(external data\)/);

  const settings = ['--cfg', '2.5', '--top-k', '20', '--top-p', '0.95', '--temperature', '0.9', '--seed', '77'];
  const [gen, srv] = await Promise.all([
    parti(['generate', '--checkpoint', run, 'a blue circle on the left', '--samples', '2', ...settings, '--out', join(root, 'gen', 'x.png')]),
    serve(['--onnx', out, '--port', '0', '--concurrency', '1', '--queue', '2']),
  ]);
  assert.equal(gen.code, 0, gen.stderr);
  try {
    const r = await fetch(`${srv.url}/v1/images`, {
      method: 'POST',
      headers: { accept: 'application/json' },
      body: JSON.stringify({ prompt: 'a blue circle on the left', n: 2, cfg: 2.5, top_k: 20, top_p: 0.95, temperature: 0.9, seed: 77 }),
      signal: AbortSignal.timeout(60_000),
    });
    assert.equal(r.status, 200);
    const body = (await r.json()) as { images: { png: string; tokens: number[] }[] };
    const meta = JSON.parse(await readFile(join(root, 'gen', 'x.json'), 'utf8')) as { images: { tokens: number[] }[] };
    for (let i = 0; i < 2; i++) {
      assert.deepEqual(body.images[i]!.tokens, meta.images[i]!.tokens, `sample ${i}: tokens`);
      const served = PNG.sync.read(Buffer.from(body.images[i]!.png, 'base64'));
      const generated = PNG.sync.read(await readFile(join(root, 'gen', `x-${i}.png`)));
      assert.equal(served.width, generated.width);
      let maxDiff = 0;
      for (let k = 0; k < served.data.length; k++) maxDiff = Math.max(maxDiff, Math.abs(served.data[k]! - generated.data[k]!));
      // Float32 outputs agree to ~1e-6; bytes could differ by one level on a rounding boundary.
      assert.ok(maxDiff <= 1, `sample ${i}: pixels differ by ${maxDiff}`);
    }
    const h = await fetch(`${srv.url}/healthz`);
    assert.equal(h.status, 200);
    await h.body?.cancel();
  } finally {
    srv.child.kill('SIGTERM');
    await new Promise((resolve) => (srv.child.exitCode !== null ? resolve(null) : srv.child.once('exit', resolve)));
  }
  assert.equal(srv.child.exitCode, 0, 'parti serve exits cleanly on SIGTERM');
});

test('bad flags and a missing export are one-line errors', async () => {
  const [noExport, provider] = await Promise.all([
    parti(['serve', '--onnx', join(root, 'nowhere'), '--port', '0']),
    parti(['serve', '--onnx', join(root, 'onnx'), '--provider', 'tpu']),
  ]);
  assert.equal(noExport.code, 1);
  assert.deepEqual(messages(noExport.stderr).length, 1);
  assert.match(messages(noExport.stderr)[0]!, /parti-onnx\.json: missing \(run parti export onnx first\)/);
  assert.equal(provider.code, 2);
  assert.match(messages(provider.stderr)[0]!, /--provider: must be cpu or cuda/);
  for (const r of [noExport, provider]) assert.ok(!r.stderr.includes('    at '), 'no stack trace');
});
