import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../src/config/load.ts';
import { trainPipeline } from '../src/worker/single-process-trainer.ts';
import { Generator } from '../src/generate/generator.ts';
import { writeRandomRun, smallGenerationConfig } from '../src/generate/random-run.ts';

/**
 * The upsampler as the third stage of `parti train` (tiny.yaml names it), and `parti generate`'s
 * Generator applying what it trained.
 */
const dir = mkdtempSync(join(tmpdir(), 'parti-upsampler-stage-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('tiny.yaml trains the upsampler stage on (downsampled, original) shapes; generation applies it', async () => {
  const config = loadConfig('configs/tiny.yaml');
  config.runtime.backend = 'wasm';
  assert.ok(config.training.upsampler, 'tiny.yaml has an upsampler stage');
  config.training.upsampler.batchSize = 4;
  config.training.upsampler.schedule = { ...config.training.upsampler.schedule, warmupSteps: 1, decay: 'constant' };
  // A run with a (random) tokenizer and Parti, then only the upsampler stage trained into it.
  await writeRandomRun(dir, { ...config, model: { ...config.model } });
  const lines: string[] = [];
  const steps = 6;
  const r = await trainPipeline({ config, runDir: dir, steps, stage: 'upsampler', progress: (l) => lines.push(l), sample: false });
  assert.equal(r.stages.length, 1);
  const s = r.stages[0]!;
  assert.equal(s.stage, 'upsampler');
  assert.equal(s.losses.length, steps);
  assert.ok(s.losses.every(Number.isFinite));
  assert.ok(s.losses.at(-1)! < s.losses[0]!, `loss ${s.losses[0]} -> ${s.losses.at(-1)}`);
  assert.ok(existsSync(join(dir, 'upsampler', 'checkpoint.json')));
  const metrics = readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(metrics.filter((m) => m.stage === 'upsampler').length, steps);

  const gen = await Generator.load(dir);
  try {
    assert.equal(gen.checkpoint.upsampler?.step, steps);
    const [out] = await gen.generate([{ prompt: 'a red circle', promptIndex: 0 }], { samples: 1, cfg: 1, temperature: 1, topK: 0, topP: 1, seed: 0 });
    const up = gen.upsample([out!.images[0]!.image]);
    const scale = gen.upsampler!.config.scale;
    assert.equal(up.size, gen.imageSize * scale);
  } finally {
    gen.dispose();
  }
});

test('training the upsampler stage without training.upsampler is a config error', async () => {
  const d = join(dir, 'no-stage');
  const input = smallGenerationConfig();
  const config = await writeRandomRun(d, input);
  await assert.rejects(
    trainPipeline({ config, runDir: d, steps: 1, stage: 'upsampler', progress: () => {}, sample: false }),
    { code: 'config', message: /training.upsampler/ },
  );
});
