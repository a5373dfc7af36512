import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { configHash, parseConfig } from '../config/load.ts';
import type { Config, ConfigInput } from '../config/schema.ts';
import { createOptimizer } from '../model/optimizer.ts';
import type { ParamLayout } from '../model/param-layout.ts';
import { partiLayout } from '../model/parti.ts';
import { saveTrainingState } from '../model/training-state.ts';
import { Upsampler } from '../model/upsampler.ts';
import { vqganLayout } from '../model/vit-vqgan.ts';
import { upsamplerConfigOf } from './generation-checkpoint.ts';

/**
 * Writes a run directory in `parti train`'s layout whose models are freshly initialized (step 0):
 * for tests and benchmarks of generation, where the property under test needs no trained model.
 */
export async function writeRandomRun(dir: string, input: ConfigInput, opts: { seed?: number; upsampler?: boolean } = {}): Promise<Config> {
  const config = parseConfig(input, 'random run');
  const hash = configHash(config);
  const seed = opts.seed ?? config.training.seed;
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify({ configHash: hash, config }, null, 2));
  const save = (stage: string, layout: ParamLayout, params: Float32Array) =>
    saveTrainingState(join(dir, stage), {
      stage,
      step: 0,
      configHash: hash,
      layout: layout.toJSON(),
      params,
      optimizer: createOptimizer(config.training.parti.optimizer, layout).exportState(),
      extra: {},
    });
  const pl = partiLayout(config.model);
  await save('parti', pl, pl.initialize(seed));
  const vl = vqganLayout(config.model.tokenizer);
  await save('tokenizer', vl, vl.initialize(seed + 1));
  if (opts.upsampler) {
    const up = new Upsampler(upsamplerConfigOf(config), config.model.tokenizer.channels);
    await save('upsampler', up.layout, up.initialize(seed + 2));
  }
  return config;
}

/** A small model config for generation tests: 2+2 layers of width 32, 16 image tokens, 64 codes. */
export function smallGenerationConfig(overrides: { imageSize?: number; patchSize?: number; codes?: number; dModel?: number; layers?: number } = {}): ConfigInput {
  const d = overrides.dModel ?? 32;
  const layers = overrides.layers ?? 2;
  return {
    name: 'generate-test',
    model: {
      text: { vocabSize: 259, maxLength: 24, layers, dModel: d, heads: 2, mlpRatio: 2 },
      image: { layers, dModel: d, heads: 2, mlpRatio: 2 },
      tokenizer: {
        imageSize: overrides.imageSize ?? 16,
        patchSize: overrides.patchSize ?? 4,
        encoder: { layers: 1, dModel: 16, heads: 2, mlpRatio: 2 },
        decoder: { layers: 1, dModel: 16, heads: 2, mlpRatio: 2 },
        codebookSize: overrides.codes ?? 64,
        codeDim: 8,
      },
    },
    training: {
      tokenizer: { steps: 1, batchSize: 2, optimizer: { type: 'adamw', lr: 1e-3 } },
      parti: { steps: 1, batchSize: 2, optimizer: { type: 'adamw', lr: 1e-3 } },
    },
    runtime: { backend: 'wasm' },
  };
}
