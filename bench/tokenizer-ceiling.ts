/**
 * The ceiling a tokenizer puts on any Parti trained on it: the evaluation probe's agreement on the
 * tokenizer's reconstructions of real held-out images (and on the originals), plus PSNR and code
 * use. Needs only the tokenizer stage of a run, so it can be read before Parti trains. For each head
 * it also prints the probe's most frequent mistakes on both (true -> predicted), which tells a
 * tokenizer that loses a shape from a probe that never could read it.
 *
 *   npx tsx bench/tokenizer-ceiling.ts RUN_DIR [DATA_DIR=runs/recipe-data] [PROBE_DIR=runs/recipe-probe] [N=1000]
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseConfig } from '../src/config/load.ts';
import { initBackend } from '../src/model/backend.ts';
import { loadTrainingState } from '../src/model/training-state.ts';
import { VitVqgan, vqganLayout } from '../src/model/vit-vqgan.ts';
import { readEvalSamples, resolveEvalData } from '../src/eval/eval-data.ts';
import { Probe } from '../src/eval/probe.ts';
import { labelled } from '../src/eval/probe-training.ts';
import { agreement, type Agreement } from '../src/eval/prompt-agreement.ts';
import { measureTokenizer } from '../src/eval/tokenizer-metrics.ts';

const [run, dataDir = 'runs/recipe-data', probeDir = 'runs/recipe-probe', nArg = '1000'] = process.argv.slice(2);
if (!run) throw new Error('usage: bench/tokenizer-ceiling.ts RUN_DIR [DATA_DIR] [PROBE_DIR] [N]');
const body = JSON.parse(await readFile(join(run, 'config.json'), 'utf8')) as { config: unknown };
const config = parseConfig(body.config, `${run}/config.json`);
await initBackend(config.runtime.backend);
const vq = new VitVqgan(config.model.tokenizer);
const state = await loadTrainingState(join(run, 'tokenizer'), vqganLayout(config.model.tokenizer));
if (!state) throw new Error(`${run}/tokenizer: no checkpoint`);
const probe = await Probe.load(probeDir);
const urls = await resolveEvalData(dataDir);
const held = await readEvalSamples(urls.heldOut, config.model.tokenizer.imageSize, Number(nArg));
const real = labelled(probe.scheme, held.captions, held.images);
const t0 = performance.now();
const { metrics, reconstructions } = measureTokenizer(vq, state.params, real.images);
const fmt = (a: Agreement) =>
  Object.entries(a.attributes)
    .map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`)
    .join('  ') + `  whole ${(100 * a.whole).toFixed(1)}%`;
console.log(`${run} tokenizer step ${state.step}: ${config.model.tokenizer.codebookSize} codes, PSNR ${metrics.psnr.toFixed(2)} dB, usage ${(100 * metrics.codebookUsage).toFixed(1)}%, code perplexity ${metrics.codebookPerplexity.toFixed(0)} (${real.images.length} held-out images, ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
/** The most frequent wrong predictions of one head, as `true->predicted:count`. */
const mistakes = (predicted: readonly (readonly number[])[], head: number, top = 4) => {
  const { classes } = probe.scheme.heads[head]!;
  const counts = new Map<string, number>();
  predicted.forEach((p, i) => {
    const t = real.labels[i]![head]!;
    if (p[head] === t) return;
    const key = `${classes[t]}->${classes[p[head]!]}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  });
  return [...counts].sort((a, b) => b[1] - a[1]).slice(0, top).map(([k, v]) => `${k}:${v}`).join(' ') || '-';
};
const onOriginals = probe.predict(real.images).classes;
const onReconstructions = probe.predict(reconstructions).classes;
console.log(`probe on originals:       ${fmt(agreement(probe.scheme, onOriginals, real.labels))}`);
console.log(`probe on reconstructions: ${fmt(agreement(probe.scheme, onReconstructions, real.labels))}`);
probe.scheme.heads.forEach((h, k) => console.log(`  ${h.name} mistakes: originals ${mistakes(onOriginals, k)} | reconstructions ${mistakes(onReconstructions, k)}`));
probe.dispose();
