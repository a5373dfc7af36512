/**
 * Does a trained Parti use its caption? Teacher-forced image-token loss (nats per token) of real
 * images under their true captions, under shuffled captions (each image gets another image's
 * caption) and under the empty caption, on held-out and on training samples. If the three are
 * equal the decoder ignores the text. The loss is also split between background tokens (a code
 * the tokenizer gives an all-black patch) and object tokens (the rest: where colour and shape are
 * decided).
 *
 *   npx tsx bench/caption-use.ts RUN_DIR [DATA_DIR=runs/recipe-data] [N=256]
 */
import { Generator } from '../src/generate/generator.ts';
import { tokenLogLikelihoodsPerPosition } from '../src/generate/reranking.ts';
import { readEvalSamples, resolveEvalData } from '../src/eval/eval-data.ts';
import { measureTokenizer } from '../src/eval/tokenizer-metrics.ts';

const [run, dataDir = 'runs/recipe-data', nArg = '256'] = process.argv.slice(2);
if (!run) throw new Error('usage: bench/caption-use.ts RUN_DIR [DATA_DIR] [N]');
const N = Number(nArg);
const gen = await Generator.load(run);
const urls = await resolveEvalData(dataDir);
const { model } = gen.runner;
const T = model.imageTokens;
const black = gen.vq.encode(gen.checkpoint.tokenizer, new Uint8Array(gen.imageSize * gen.imageSize * 3), 1);
const background = new Set(black);
console.log(`run ${run}: parti step ${gen.checkpoint.partiStep}, ${model.codes} codes, ${T} tokens/image; an all-black image uses ${background.size} code(s)`);

const perToken = (texts: readonly string[], tokens: readonly Int32Array[]) => tokenLogLikelihoodsPerPosition(gen.runner, texts, tokens);

for (const [split, url] of [
  ['held-out', urls.heldOut],
  ['train', urls.train],
] as const) {
  const s = await readEvalSamples(url, gen.imageSize, N);
  const { tokens } = measureTokenizer(gen.vq, gen.checkpoint.tokenizer, s.images);
  const n = s.captions.length;
  const isBg = new Uint8Array(n * T);
  tokens.forEach((tok, i) => tok.forEach((c, t) => (isBg[i * T + t] = background.has(c) ? 1 : 0)));
  const bgCount = isBg.reduce((a, b) => a + b, 0);
  const shuffled = s.captions.map((_, i) => s.captions[(i + 7) % n]!);
  const empty = s.captions.map(() => '');
  const t0 = performance.now();
  const row = (name: string, texts: string[]) => {
    const ll = perToken(texts, tokens);
    let all = 0;
    let bg = 0;
    for (let i = 0; i < ll.length; i++) {
      all -= ll[i]!;
      if (isBg[i]) bg -= ll[i]!;
    }
    const fg = all - bg;
    return { name, all: all / ll.length, bg: bg / bgCount, fg: fg / (ll.length - bgCount), fgPerImage: fg / n };
  };
  const rows = [row('true', s.captions), row('shuffled', shuffled), row('empty', empty)];
  console.log(`${split}: ${n} images, ${((100 * (n * T - bgCount)) / (n * T)).toFixed(1)}% object tokens (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  for (const r of rows) {
    console.log(`  caption ${r.name.padEnd(8)} loss/token all ${r.all.toFixed(4)}  background ${r.bg.toFixed(4)}  object ${r.fg.toFixed(4)}  (object nats per image ${r.fgPerImage.toFixed(2)})`);
  }
}
gen.dispose();
