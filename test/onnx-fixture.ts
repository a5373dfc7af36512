import { join } from 'node:path';
import type { ConfigInput } from '../src/config/schema.ts';
import { smallGenerationConfig, writeRandomRun } from '../src/generate/random-run.ts';
import { partiLayout } from '../src/model/parti.ts';
import { SequentialRandom } from '../src/model/rng.ts';
import { loadTrainingState, saveTrainingState } from '../src/model/training-state.ts';
import { vqganLayout } from '../src/model/vit-vqgan.ts';
import type { ParamLayout } from '../src/model/param-layout.ts';

/**
 * A run directory for ONNX tests: the tiny generation config with random weights that are far
 * from their init (matrices and tables `scale` x the init std, every bias, gain and shift moved by
 * N(0, 0.1)), so that parity checks exercise every parameter and the model's token
 * distributions are peaked (the sampler's choices depend on the logits, not only on the draw).
 */
export async function writeOnnxTestRun(dir: string, opts: { logitLaplace?: boolean; seed?: number; scale?: number } = {}): Promise<ConfigInput> {
  const base = smallGenerationConfig() as { model: { tokenizer: Record<string, unknown> } } & ConfigInput;
  const input = opts.logitLaplace
    ? ({ ...base, model: { ...base.model, tokenizer: { ...base.model.tokenizer, losses: { logitLaplace: 1 } } } } as ConfigInput)
    : (base as ConfigInput);
  const config = await writeRandomRun(dir, input, { seed: opts.seed ?? 7 });
  const rng = new SequentialRandom(opts.seed ?? 7);
  const perturb = async (stage: string, layout: ParamLayout) => {
    const s = (await loadTrainingState(join(dir, stage), layout))!;
    for (const e of layout.entries) {
      const v = s.params.subarray(e.offset, e.offset + e.size);
      for (let i = 0; i < v.length; i++) v[i] = e.init.kind === 'normal' ? v[i]! * (opts.scale ?? 5) : v[i]! + rng.normal() * 0.1;
    }
    await saveTrainingState(join(dir, stage), s);
  };
  await perturb('parti', partiLayout(config.model));
  await perturb('tokenizer', vqganLayout(config.model.tokenizer));
  return input;
}
