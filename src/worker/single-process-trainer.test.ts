import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { loadConfig } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { trainPipeline } from './single-process-trainer.ts';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'parti-train-'));
  dirs.push(d);
  return d;
}
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** tiny.yaml with a smaller batch and a short warm-up, so a few steps show learning. */
function testConfig(): Config {
  const c = loadConfig('configs/tiny.yaml');
  c.runtime.backend = 'wasm';
  for (const s of [c.training.tokenizer, c.training.parti]) {
    s.batchSize = 8;
    s.schedule = { ...s.schedule, warmupSteps: 2, decay: 'constant' };
    s.optimizer = { ...s.optimizer, lr: 2e-3 };
  }
  // The tokenizer's continuous warm-up ends inside the short runs below, so they cross the switch.
  c.model.tokenizer.quantizeFromStep = 2;
  c.checkpoint.everySteps = 0;
  // The upsampler stage has its own test (test/generate-upsampler-stage.test.ts).
  delete c.training.upsampler;
  return c;
}

test('the same seed gives bitwise-identical losses; micro-batching and resuming keep them', async () => {
  const quiet = () => {};
  const run = (config: Config, dir = tempDir(), steps = 3) => trainPipeline({ config, runDir: dir, steps, progress: quiet, sample: false });
  const a = await run(testConfig());
  const b = await run(testConfig());
  assert.equal(a.stages.length, 2);
  for (let s = 0; s < 2; s++) {
    assert.equal(a.stages[s]!.losses.length, 3);
    assert.deepEqual(a.stages[s]!.losses, b.stages[s]!.losses, `stage ${a.stages[s]!.stage}`);
    assert.ok(a.stages[s]!.losses.every(Number.isFinite));
  }
  const otherSeed = testConfig();
  otherSeed.training.seed = 1;
  const c = await run(otherSeed);
  assert.notDeepEqual(c.stages[0]!.losses, a.stages[0]!.losses);
  // Micro-batches of 3 (3 + 3 + 2) sum to the same gradients up to float rounding.
  const micro = testConfig();
  micro.training.parti.microBatchSize = 3;
  micro.training.tokenizer.microBatchSize = 3;
  const m = await run(micro);
  m.stages.forEach((s, i) => s.losses.forEach((l, j) => assert.ok(Math.abs(l - a.stages[i]!.losses[j]!) < 1e-3)));
  // Stop after 2 steps, resume to 3 (each stage on its own): the third step's loss is the
  // uninterrupted run's.
  const dir = tempDir();
  const stage = (name: 'tokenizer' | 'parti', steps: number) =>
    trainPipeline({ config: testConfig(), runDir: dir, steps, stage: name, progress: quiet, sample: false });
  await stage('tokenizer', 2);
  assert.deepEqual((await stage('tokenizer', 3)).stages[0]!.losses, a.stages[0]!.losses.slice(2));
  await stage('parti', 2);
  assert.deepEqual((await stage('parti', 3)).stages[0]!.losses, a.stages[1]!.losses.slice(2));
});

test('a short tiny run: losses fall, metrics.jsonl has a line per step, a sample image is written', async () => {
  const dir = tempDir();
  const lines: string[] = [];
  const steps = 24;
  const r = await trainPipeline({ config: testConfig(), runDir: dir, steps, progress: (l) => lines.push(l) });
  const metrics = readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  for (const s of r.stages) {
    // The tokenizer's objective to watch is its reconstruction error: its codebook term rises
    // when the warm-up ends and z first meets the codes.
    const curve = s.stage === 'tokenizer' ? metrics.filter((m) => m.stage === 'tokenizer').map((m) => m.l2 as number) : s.losses;
    const head = curve.slice(0, 3).reduce((x, y) => x + y) / 3;
    const tail = curve.slice(-3).reduce((x, y) => x + y) / 3;
    assert.ok(tail < head * 0.8, `${s.stage}: ${s.stage === 'tokenizer' ? 'l2' : 'loss'} ${head.toFixed(3)} -> ${tail.toFixed(3)} did not fall`);
  }
  assert.equal(metrics.length, 2 * steps);
  for (const m of metrics) {
    assert.equal(typeof m.step, 'number');
    assert.ok(Number.isFinite(m.loss) && m.tokensPerSec > 0);
  }
  assert.ok(lines.some((l) => /parti step +\d+\/24 +loss [\d.]+ +\d+ tok\/s +ETA/.test(l)), lines.join('\n'));
  const png = PNG.sync.read(readFileSync(r.samplePng!));
  assert.equal(png.height, 32 * 4);
  const again = await trainPipeline({ config: testConfig(), runDir: dir, steps, progress: () => {}, sample: false });
  assert.ok(again.stages.every((s) => s.skipped), 'a finished run directory is not retrained');
});
