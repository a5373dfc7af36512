/**
 * Images/s and p50/p95 latency for the tiny model (configs/tiny.yaml: 64 image tokens, d_model
 * 128, 3 decoder layers, 256 codes; random weights: speed does not depend on training) through
 * `parti serve` (ONNX Runtime, over HTTP) and through `parti generate` (tfjs wasm), in the same
 * run, one image per request with guidance on (cfg 3, the default):
 *
 * - serve, 1 client: sequential POST /v1/images to a running `parti serve` (warm).
 * - serve, C clients: C concurrent clients against `--concurrency C`.
 * - generate CLI: one `parti generate` process per image, as a user runs it (process start,
 *   tfjs init and checkpoint load included).
 * - generate in-process: Generator.generate warm, the tfjs compute alone.
 * - ONNX in-process: OnnxGenerator.generate warm (what the server runs, without HTTP and PNG).
 *
 *   flock /tmp/parti-bench.lock npx tsx bench/serve.ts [--requests N] [--cli-runs K] [--clients C]
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { exportOnnx } from '../src/export/onnx-export.ts';
import { Generator } from '../src/generate/generator.ts';
import { writeRandomRun } from '../src/generate/random-run.ts';
import { OnnxGenerator } from '../src/serve/onnx-generator.ts';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}
const REQUESTS = arg('--requests', 20);
const CLI_RUNS = arg('--cli-runs', 4);
const CLIENTS = arg('--clients', 2);
const ROOT = join(import.meta.dirname, '..');
const BIN = join(ROOT, 'bin', 'parti.mjs');
const PROMPT = 'a red circle above a blue square';

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

const rows: string[][] = [];
function report(path: string, latenciesMs: number[], wallMs: number, images: number): void {
  rows.push([path, String(images), (images / (wallMs / 1000)).toFixed(2), quantile(latenciesMs, 0.5).toFixed(0), quantile(latenciesMs, 0.95).toFixed(0)]);
}

const dir = await mkdtemp(join(tmpdir(), 'parti-bench-serve-'));
try {
  const tiny = parse(await readFile(join(ROOT, 'configs', 'tiny.yaml'), 'utf8'));
  tiny.runtime = { ...tiny.runtime, backend: 'wasm' };
  const run = join(dir, 'run');
  await writeRandomRun(run, tiny);
  const gen = await Generator.load(run);
  await exportOnnx(gen.checkpoint, join(dir, 'onnx'));

  // parti serve (a separate process, as deployed).
  const child = spawn(process.execPath, [BIN, 'serve', '--onnx', join(dir, 'onnx'), '--port', '0', '--concurrency', String(CLIENTS), '--queue', '64'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, PARTI_LOG_LEVEL: 'warn' },
  });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error('parti serve did not start in 60 s')), 60_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /listening on (\S+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
      child.once('exit', (code) => reject(new Error(`parti serve exited with ${code}`)));
    });
    const request = async (seed: number) => {
      const t0 = performance.now();
      const r = await fetch(`${url}/v1/images`, { method: 'POST', body: JSON.stringify({ prompt: PROMPT, n: 1, seed }), signal: AbortSignal.timeout(120_000) });
      if (r.status !== 200) throw new Error(`serve answered ${r.status}: ${await r.text()}`);
      await r.arrayBuffer();
      return performance.now() - t0;
    };
    for (let i = 0; i < 3; i++) await request(1000 + i); // warm-up
    {
      const lat: number[] = [];
      const t0 = performance.now();
      for (let i = 0; i < REQUESTS; i++) lat.push(await request(i));
      report('parti serve (ONNX Runtime, HTTP), 1 client', lat, performance.now() - t0, REQUESTS);
    }
    {
      const lat: number[] = [];
      const t0 = performance.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: CLIENTS }, async () => {
          while (next < REQUESTS) lat.push(await request(next++));
        }),
      );
      report(`parti serve (ONNX Runtime, HTTP), ${CLIENTS} clients, --concurrency ${CLIENTS}`, lat, performance.now() - t0, REQUESTS);
    }
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
  }

  // parti generate: one process per image.
  {
    const lat: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < CLI_RUNS; i++) {
      const s = performance.now();
      await new Promise<void>((resolve, reject) =>
        execFile(process.execPath, [BIN, 'generate', '--checkpoint', run, PROMPT, '--samples', '1', '--seed', String(i), '--out', join(dir, 'gen', `${i}.png`)], { timeout: 300_000, env: { ...process.env, PARTI_LOG_LEVEL: 'warn' } }, (err) =>
          err ? reject(err) : resolve(),
        ),
      );
      lat.push(performance.now() - s);
    }
    report('parti generate (tfjs wasm), one process per image', lat, performance.now() - t0, CLI_RUNS);
  }
  // The same tfjs generation warm, in-process.
  {
    const settings = { samples: 1, cfg: 3, topK: 0, topP: 1, temperature: 1, seed: 0 };
    for (let i = 0; i < 2; i++) await gen.generate([{ prompt: PROMPT, promptIndex: 0 }], { ...settings, seed: 1000 + i });
    const lat: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < REQUESTS; i++) {
      const s = performance.now();
      await gen.generate([{ prompt: PROMPT, promptIndex: 0 }], { ...settings, seed: i });
      lat.push(performance.now() - s);
    }
    report('Generator.generate (tfjs wasm) in-process, warm', lat, performance.now() - t0, REQUESTS);
  }
  gen.dispose();
  {
    const onnx = await OnnxGenerator.load(join(dir, 'onnx'));
    const settings = { cfg: 3, topK: 0, topP: 1, temperature: 1, seed: 0 };
    for (let i = 0; i < 3; i++) await onnx.generate(PROMPT, 1, { ...settings, seed: 1000 + i });
    const lat: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < REQUESTS; i++) {
      const s = performance.now();
      await onnx.generate(PROMPT, 1, { ...settings, seed: i });
      lat.push(performance.now() - s);
    }
    report('OnnxGenerator.generate (ONNX Runtime) in-process, warm', lat, performance.now() - t0, REQUESTS);
    await onnx.release();
  }

  const header = ['path', 'images', 'images/s', 'p50 ms', 'p95 ms'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ');
  console.log(`tiny model (configs/tiny.yaml, random weights), 1 image per request, cfg 3, 64 image tokens`);
  console.log(line(header));
  for (const r of rows) console.log(line(r));
} finally {
  await rm(dir, { recursive: true, force: true });
}
