/**
 * Image tokens/s of `parti generate`'s sampler with and without the key/value caches, for 64 and
 * 256 image tokens, with and without classifier-free guidance, on a randomly initialized model
 * of the tiny config's width (d_model 128, 2 encoder + 4 decoder layers, 4 heads, 256 codes).
 * The issue asks that with the cache 256-token generation be at least 5x faster than
 * recomputing the prefix at every step.
 *
 *   flock /tmp/parti-bench.lock npx tsx bench/generate.ts [--samples N]
 */
import { parseConfig } from '../src/config/load.ts';
import { initBackend } from '../src/model/backend.ts';
import { PartiModel } from '../src/model/parti.ts';
import { TextTokenizer } from '../src/model/text-tokenizer.ts';
import { sampleImageTokens, type PartiRunner } from '../src/generate/sampler.ts';

const samplesArg = process.argv.indexOf('--samples');
const samples = samplesArg > 0 ? Number(process.argv[samplesArg + 1]) : 4;

await initBackend('wasm');

function runner(imageSize: number): PartiRunner {
  const config = parseConfig({
    model: {
      text: { vocabSize: 259, maxLength: 48, layers: 2, dModel: 128, heads: 4 },
      image: { layers: 4, dModel: 128, heads: 4 },
      tokenizer: {
        imageSize,
        patchSize: 4,
        encoder: { layers: 1, dModel: 32, heads: 2 },
        decoder: { layers: 1, dModel: 32, heads: 2 },
        codebookSize: 256,
        codeDim: 16,
      },
    },
    training: {
      tokenizer: { steps: 1, batchSize: 1, optimizer: { type: 'adamw', lr: 1e-3 } },
      parti: { steps: 1, batchSize: 1, optimizer: { type: 'adamw', lr: 1e-3 } },
    },
  });
  const model = new PartiModel(config.model);
  return { model, tokenizer: new TextTokenizer(48), params: model.layout.toTensors(model.layout.initialize(0)) };
}

const rows: string[] = [];
const header = 'image tokens | guidance | cache | batch rows | seconds | image tokens/s';
console.log(header);
const speedups: string[] = [];
for (const imageSize of [32, 64]) {
  const r = runner(imageSize);
  const T = r.model.imageTokens;
  for (const cfg of [1, 3]) {
    const rate: Record<string, number> = {};
    for (const cache of [true, false]) {
      const req = [{ prompt: 'a red circle above a blue square', promptIndex: 0, samples: Array.from({ length: samples }, (_, i) => i) }];
      // Warm-up: one short run compiles kernels and sizes the heap.
      sampleImageTokens(r, req, { cfg, temperature: 1, topK: 0, topP: 1, seed: 0 }, { cache });
      const t0 = performance.now();
      sampleImageTokens(r, req, { cfg, temperature: 1, topK: 0, topP: 1, seed: 1 }, { cache });
      const s = (performance.now() - t0) / 1000;
      rate[String(cache)] = (samples * T) / s;
      const line = `${String(T).padStart(12)} | ${String(cfg === 1 ? 'off' : `cfg ${cfg}`).padStart(8)} | ${String(cache ? 'yes' : 'no').padStart(5)} | ${String(cfg === 1 ? samples : 2 * samples).padStart(10)} | ${s.toFixed(2).padStart(7)} | ${rate[String(cache)]!.toFixed(1).padStart(14)}`;
      rows.push(line);
      console.log(line);
    }
    speedups.push(`${T} tokens, guidance ${cfg === 1 ? 'off' : 'on'}: cache speed-up ${(rate.true! / rate.false!).toFixed(1)}x`);
  }
  for (const t of r.params.values()) t.dispose();
}
console.log(speedups.join('\n'));
