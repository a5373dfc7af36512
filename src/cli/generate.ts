import type { Command } from 'commander';
import { SingleBar, Presets } from 'cli-progress';
import { mkdir, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { PartiError, usageError } from '../errors.ts';
import { writeAttentionMaps } from '../generate/attention-maps.ts';
import { checkSettings, Generator, promptTruncated, type GeneratedPrompt, type GenerateSettings, type PromptInput } from '../generate/generator.ts';
import { gridPng, imagePng } from '../generate/image-grid.ts';
import { promptFolderName, readPromptFile } from '../generate/prompt-file.ts';
import { SAMPLER_DEFAULTS } from '../generate/sampler.ts';

/** Raw flags of `parti generate`. */
interface GenerateFlags {
  checkpoint: string;
  prompts?: string;
  out: string;
  samples: string;
  cfg: string;
  topK: string;
  topP: string;
  temperature: string;
  seed: string;
  rerank?: string;
  attentionMaps?: boolean;
  attentionLayers?: boolean;
  upsample?: boolean;
  batch: string;
  gridScale?: string;
  cache: boolean;
}

function parseNumber(flag: string, raw: string, integer: boolean): number {
  const s = raw.trim();
  const ok = integer ? /^[+-]?\d+$/.test(s) : /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(s);
  const v = Number(s);
  if (!ok || !Number.isFinite(v) || (integer && !Number.isSafeInteger(v))) {
    throw usageError(flag, `must be ${integer ? 'an integer' : 'a number'}, got ${JSON.stringify(raw)}`);
  }
  return v;
}

/** Validates the flags into complete settings (one-line usage errors naming the flag). */
export function resolveSettings(f: GenerateFlags): GenerateSettings {
  const settings: GenerateSettings = {
    samples: parseNumber('--samples', f.samples, true),
    cfg: parseNumber('--cfg', f.cfg, false),
    topK: parseNumber('--top-k', f.topK, true),
    topP: parseNumber('--top-p', f.topP, false),
    temperature: parseNumber('--temperature', f.temperature, false),
    seed: parseNumber('--seed', f.seed, true),
    rerank: f.rerank === undefined ? 0 : parseNumber('--rerank', f.rerank, true),
  };
  checkSettings(settings);
  return settings;
}

/** Where one prompt's files go: `<base>.png` (grid), `<base>-<i>.png`, `<base>.json`, ... */
interface OutputPlan {
  dir: string;
  base: string;
}

async function writePrompt(gen: Generator, result: GeneratedPrompt, plan: OutputPlan, f: GenerateFlags, settings: GenerateSettings): Promise<string[]> {
  await mkdir(plan.dir, { recursive: true });
  const size = gen.imageSize;
  const set = { images: result.images.map((i) => i.image), size, channels: gen.channels };
  const gridScale = f.gridScale === undefined ? Math.max(1, Math.round(128 / size)) : Number(f.gridScale);
  const files: string[] = [];
  const put = async (name: string, data: Buffer | string) => {
    const path = join(plan.dir, name);
    await writeFile(path, data);
    files.push(path);
  };
  await put(`${plan.base}.png`, gridPng(set, { scale: gridScale }));
  for (let i = 0; i < set.images.length; i++) await put(`${plan.base}-${i}.png`, imagePng(set, i));
  let upsampledSize: number | undefined;
  if (f.upsample) {
    const up = gen.upsample(set.images);
    upsampledSize = up.size;
    const big = { images: up.images, size: up.size, channels: gen.channels };
    await put(`${plan.base}.up.png`, gridPng(big, { scale: Math.max(1, Math.round(gridScale / (up.size / size))) }));
    for (let i = 0; i < big.images.length; i++) await put(`${plan.base}-${i}.up.png`, imagePng(big, i));
  }
  if (f.attentionMaps || f.attentionLayers) {
    const maps = gen.attentionMaps(result.prompt, result.images.map((i) => i.tokens));
    for (let i = 0; i < maps.length; i++) {
      const written = await writeAttentionMaps(join(plan.dir, `${plan.base}-${i}.attention`), maps[i]!, set.images[i]!, size, gen.channels, {
        perLayer: f.attentionLayers,
      });
      files.push(...written);
    }
  }
  const meta = {
    prompt: result.prompt,
    promptIndex: result.promptIndex,
    truncated: result.truncated,
    checkpoint: gen.checkpoint.source,
    configHash: gen.checkpoint.configHash,
    partiStep: gen.checkpoint.partiStep,
    settings,
    imageSize: size,
    upsampledSize,
    images: result.images.map((im, i) => ({ file: `${plan.base}-${i}.png`, candidate: im.candidate, score: im.score, tokens: Array.from(im.tokens) })),
  };
  // Token lists on one line each.
  await put(`${plan.base}.json`, `${JSON.stringify(meta, null, 2).replace(/\[[\d,\s]+\]/g, (m) => m.replace(/\s+/g, ''))}\n`);
  return files;
}

/**
 * `parti generate`: images from a trained run for one prompt (`--out FILE.png`: the grid, each
 * sample beside it as FILE-i.png, FILE.json with settings, scores and tokens) or for every prompt
 * of a file (`--prompts FILE --out DIR`: one folder per prompt, a progress bar).
 */
export function register(program: Command): void {
  program
    .command('generate')
    .description('Generate images from a trained run (cached sampling, classifier-free guidance, reranking).')
    .argument('[prompt]', 'the prompt (an empty string generates unconditionally)')
    .requiredOption('--checkpoint <run>', 'run directory written by parti train, or the checkpoint store of a cluster job (a path, file:// or s3:// URL; RUN@STEP for a committed step)')
    .requiredOption('--out <path>', 'grid PNG to write (one prompt), or a directory (with --prompts)')
    .option('--prompts <file>', 'a text file with one prompt per line, or a TSV with a Prompt column')
    .option('--samples <n>', 'images per prompt', '4')
    .option('--cfg <scale>', 'classifier-free guidance scale (1 = off)', String(SAMPLER_DEFAULTS.cfg))
    .option('--top-k <k>', 'keep the k most likely codes (0 = all)', String(SAMPLER_DEFAULTS.topK))
    .option('--top-p <p>', 'nucleus sampling mass in (0, 1] (1 = off)', String(SAMPLER_DEFAULTS.topP))
    .option('--temperature <t>', 'softmax temperature (> 0)', String(SAMPLER_DEFAULTS.temperature))
    .option('--seed <s>', 'random seed (integer >= 0)', String(SAMPLER_DEFAULTS.seed))
    .option('--rerank <m>', 'draw m candidates per prompt and keep the best --samples by caption likelihood')
    .option('--attention-maps', 'write a cross-attention heat map per text token beside each image')
    .option('--attention-layers', 'with the heat maps averaged over layers, also one per layer')
    .option('--upsample', "enlarge the images with the run's trained upsampler")
    .option('--batch <n>', 'prompts sampled together (with --prompts)', '4')
    .option('--grid-scale <k>', 'enlargement of the grid PNG (default: about 128 px per image)')
    .option('--no-cache', 'recompute the whole prefix at every step (slow; for comparison)')
    .action(async (prompt: string | undefined, f: GenerateFlags) => {
      const settings = resolveSettings(f);
      const batch = parseNumber('--batch', f.batch, true);
      if (batch < 1) throw usageError('--batch', `must be an integer >= 1, got ${batch}`);
      if (f.gridScale !== undefined) {
        const g = parseNumber('--grid-scale', f.gridScale, true);
        if (g < 1 || g > 64) throw usageError('--grid-scale', `must be an integer from 1 to 64, got ${g}`);
      }
      if (prompt !== undefined && f.prompts) throw usageError('--prompts', 'give either a prompt or --prompts FILE, not both');
      if (prompt === undefined && !f.prompts) throw usageError('prompt', 'give a prompt ("" for unconditional) or --prompts FILE');
      if (!f.prompts && !/\.png$/i.test(f.out)) throw usageError('--out', `must name a .png file, got ${f.out}`);
      const prompts: string[] = f.prompts ? (await readPromptFile(f.prompts)).prompts : [prompt!];
      const gen = await Generator.load(f.checkpoint);
      if (f.upsample && !gen.upsampler) {
        gen.dispose();
        throw new PartiError('checkpoint', `${f.checkpoint}: the run has no trained upsampler (--upsample needs the upsampler stage)`);
      }
      try {
        for (const [i, p] of prompts.entries()) {
          if (promptTruncated(gen.runner.tokenizer, p)) {
            process.stderr.write(`parti: warning: prompt ${i} is longer than ${gen.runner.tokenizer.maxLength - 2} bytes and was truncated\n`);
          }
        }
        const inputs: PromptInput[] = prompts.map((p, i) => ({ prompt: p, promptIndex: i }));
        const bar = f.prompts
          ? new SingleBar({ format: 'generate [{bar}] {value}/{total} prompts | {percentage}% | ETA {eta_formatted}', stream: process.stderr }, Presets.shades_classic)
          : null;
        bar?.start(prompts.length, 0);
        try {
          for (let s = 0; s < inputs.length; s += batch) {
            const results = await gen.generate(inputs.slice(s, s + batch), settings, { cache: f.cache });
            for (const r of results) {
              const plan: OutputPlan = f.prompts
                ? { dir: join(f.out, promptFolderName(r.promptIndex, r.prompt)), base: 'grid' }
                : { dir: dirname(f.out), base: basename(f.out).replace(/\.png$/i, '') };
              const files = await writePrompt(gen, r, plan, f, settings);
              if (!bar) process.stdout.write(`${files[0]}\n`);
              bar?.increment();
            }
          }
        } finally {
          bar?.stop();
        }
        if (f.prompts) process.stdout.write(`${f.out}\n`);
      } finally {
        gen.dispose();
      }
    });
}
