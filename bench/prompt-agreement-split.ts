/**
 * Prompt agreement of a trained run on TRAINING captions next to held-out ones, same sampler
 * settings: tells a model that does not follow captions at all from one that does not generalize
 * to unseen combinations. (`parti eval` refuses training captions by design; this bench is the
 * diagnostic beside it.)
 *
 *   npx tsx bench/prompt-agreement-split.ts RUN_DIR [CFG=3] [PROMPTS=48] [DATA_DIR=runs/recipe-data] [PROBE_DIR=runs/recipe-probe]
 */
import { Generator } from '../src/generate/generator.ts';
import { readEvalSamples, resolveEvalData } from '../src/eval/eval-data.ts';
import { Probe } from '../src/eval/probe.ts';
import { labelled } from '../src/eval/probe-training.ts';
import { agreement } from '../src/eval/prompt-agreement.ts';
import { promptImages } from './prompt-images.ts';

const [run, cfgArg = '3', promptsArg = '48', dataDir = 'runs/recipe-data', probeDir = 'runs/recipe-probe'] = process.argv.slice(2);
if (!run) throw new Error('usage: bench/prompt-agreement-split.ts RUN_DIR [CFG] [PROMPTS] [DATA_DIR] [PROBE_DIR]');
const gen = await Generator.load(run);
const probe = await Probe.load(probeDir);
const urls = await resolveEvalData(dataDir);
const settings = { samples: 4, cfg: Number(cfgArg), topK: 0, topP: 1, temperature: 1, seed: 0, rerank: 0 };
console.log(`run ${run}: parti step ${gen.checkpoint.partiStep}, cfg ${settings.cfg}`);
for (const [split, url] of [
  ['train', urls.train],
  ['held-out', urls.heldOut],
] as const) {
  const s = await readEvalSamples(url, gen.imageSize, 1000);
  const real = labelled(probe.scheme, s.captions, s.images);
  const prompts = [...new Set(real.captions)].slice(0, Number(promptsArg));
  const t0 = performance.now();
  const { images, targets: labels } = await promptImages(gen, probe, prompts, settings);
  const a = agreement(probe.scheme, probe.predict(images).classes, labels);
  const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
  console.log(
    `${split.padEnd(8)} ${prompts.length} prompts x 4: color ${pct(a.attributes.color!)}  shape ${pct(a.attributes.shape!)}  position ${pct(a.attributes.position!)}  whole ${pct(a.whole)}  heads ` +
      Object.entries(a.heads)
        .map(([k, v]) => `${k} ${pct(v)}`)
        .join(' ') + `  (${((performance.now() - t0) / 1000).toFixed(0)} s)`,
  );
}
probe.dispose();
gen.dispose();
