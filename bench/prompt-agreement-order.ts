/**
 * How much of the color and shape misses of a shapes run are arrangement misses: prompt agreement
 * as `parti eval` scores it (the probe's object 1 is the upper or left object, so two right objects
 * in the wrong relation count as wrong color and shape), next to the same images scored with the
 * two objects' order ignored (a pair's colors, shapes, or colored shapes equal as multisets; a single
 * object as before). A diagnostic beside `parti eval`, not a replacement for its numbers.
 *
 *   npx tsx bench/prompt-agreement-order.ts RUN_DIR [CFG=1.5] [SEEDS=0,1,2,3] [PROMPTS=48] [DATA_DIR=runs/recipe-data] [PROBE_DIR=runs/recipe-probe]
 */
import { Generator } from '../src/generate/generator.ts';
import { readEvalSamples, resolveEvalData } from '../src/eval/eval-data.ts';
import { Probe } from '../src/eval/probe.ts';
import { labelled } from '../src/eval/probe-training.ts';
import { promptImages } from './prompt-images.ts';

const [run, cfgArg = '1.5', seedsArg = '0,1,2,3', promptsArg = '48', dataDir = 'runs/recipe-data', probeDir = 'runs/recipe-probe'] = process.argv.slice(2);
if (!run) throw new Error('usage: bench/prompt-agreement-order.ts RUN_DIR [CFG] [SEEDS] [PROMPTS] [DATA_DIR] [PROBE_DIR]');
const gen = await Generator.load(run);
const probe = await Probe.load(probeDir);
if (probe.scheme.toJSON().kind !== 'shapes') throw new Error(`${probeDir}: not a shapes probe`);
const urls = await resolveEvalData(dataDir);
const held = await readEvalSamples(urls.heldOut, gen.imageSize, 1000);
const real = labelled(probe.scheme, held.captions, held.images);
const prompts = [...new Set(real.captions)].slice(0, Number(promptsArg));

// heads: color1, shape1 (no `none`), color2, shape2 (index 0 = none, then the same classes), where
type Labels = readonly number[];
const isPair = (l: Labels) => l[2]! > 0;
const objects = (l: Labels): [number, number][] => (isPair(l) ? [[l[0]!, l[1]!], [l[2]! - 1, l[3]! - 1]] : [[l[0]!, l[1]!]]);
const sameMultiset = (a: number[], b: number[]) => a.length === b.length && [...a].sort().join() === [...b].sort().join();
const tally = { images: 0, pairs: 0, strict: { color: 0, shape: 0, where: 0, objects: 0 }, free: { color: 0, shape: 0, objects: 0 }, pairObjectsRightWhereWrong: 0 };
for (const seed of seedsArg.split(',').map(Number)) {
  const settings = { samples: 4, cfg: Number(cfgArg), topK: 0, topP: 1, temperature: 1, seed, rerank: 0 };
  const { images, targets } = await promptImages(gen, probe, prompts, settings);
  const predicted = probe.predict(images).classes;
  predicted.forEach((p, i) => {
    const t = targets[i]!;
    tally.images++;
    const colorStrict = p[0] === t[0] && p[2] === t[2];
    const shapeStrict = p[1] === t[1] && p[3] === t[3];
    tally.strict.color += +colorStrict;
    tally.strict.shape += +shapeStrict;
    tally.strict.where += +(p[4] === t[4]);
    tally.strict.objects += +(colorStrict && shapeStrict);
    const po = objects(p);
    const to = objects(t);
    tally.free.color += +sameMultiset(po.map((o) => o[0]), to.map((o) => o[0]));
    tally.free.shape += +sameMultiset(po.map((o) => o[1]), to.map((o) => o[1]));
    const objectsFree = sameMultiset(po.map((o) => o[0] * 10 + o[1]), to.map((o) => o[0] * 10 + o[1]));
    tally.free.objects += +objectsFree;
    if (isPair(t)) {
      tally.pairs++;
      if (objectsFree && p[4] !== t[4]) tally.pairObjectsRightWhereWrong++;
    }
  });
}
const pct = (k: number) => `${((100 * k) / tally.images).toFixed(1)}%`;
console.log(`run ${run}: parti step ${gen.checkpoint.partiStep}, cfg ${cfgArg}, seeds ${seedsArg}, ${prompts.length} held-out prompts x 4 = ${tally.images} images (${tally.pairs} of a pair)`);
console.log(`as parti eval scores: color ${pct(tally.strict.color)}  shape ${pct(tally.strict.shape)}  position ${pct(tally.strict.where)}  color+shape ${pct(tally.strict.objects)}`);
console.log(`order ignored:        color ${pct(tally.free.color)}  shape ${pct(tally.free.shape)}  colored shapes ${pct(tally.free.objects)}`);
console.log(`pairs whose colored shapes are right in the wrong relation: ${tally.pairObjectsRightWhereWrong} of ${tally.pairs}`);
probe.dispose();
gen.dispose();
