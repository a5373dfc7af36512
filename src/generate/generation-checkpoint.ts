import { mkdtemp, readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Config } from '../config/schema.ts';
import { parseConfig } from '../config/load.ts';
import { PartiError } from '../errors.ts';
import { log } from '../observability/log.ts';
import { partiLayout } from '../model/parti.ts';
import { loadTrainingState } from '../model/training-state.ts';
import { Upsampler } from '../model/upsampler.ts';
import { vqganLayout } from '../model/vit-vqgan.ts';
import { openStore } from '../storage/open-store.ts';
import { upsamplerSchema, type UpsamplerConfig } from '../config/upsampler-schema.ts';

/** What generation needs from a trained run. */
export interface GenerationCheckpoint {
  /** Where it came from (a path or URL). */
  source: string;
  config: Config;
  configHash: string;
  /** Parti parameters and the step they were saved at. */
  parti: Float32Array;
  partiStep: number;
  /** The image tokenizer's parameters. */
  tokenizer: Float32Array;
  /** The upsampler's parameters and config, when the run trained one. */
  upsampler?: { params: Float32Array; config: UpsamplerConfig; step: number };
}

/** The files of a run directory that generation reads (relative paths). */
const RUN_FILES = [
  'config.json',
  'parti/checkpoint.json',
  'parti/state.bin',
  'tokenizer/checkpoint.json',
  'tokenizer/state.bin',
  'upsampler/checkpoint.json',
  'upsampler/state.bin',
];

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** The upsampler config a run uses: `model.upsampler` when the config has it, else the defaults. */
export function upsamplerConfigOf(config: Config): UpsamplerConfig {
  return upsamplerSchema.parse(config.model.upsampler ?? {});
}

/**
 * Loads a trained run for generation: `ref` is a run directory written by `parti train` (a path
 * or file:// URL), or the same layout under an s3:// prefix, which is first copied to a
 * temporary folder. Reads config.json, the Parti and tokenizer checkpoints and, if present, the
 * upsampler's. A missing or foreign run is a one-line PartiError('checkpoint').
 */
export async function loadGenerationCheckpoint(ref: string): Promise<GenerationCheckpoint> {
  if (!ref) throw new PartiError('usage', '--checkpoint: required (a run directory or URL)');
  let dir: string;
  let temp: string | null = null;
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(ref) && !ref.startsWith('file:')) {
    temp = await mkdtemp(join(tmpdir(), 'parti-generate-'));
    dir = temp;
    const store = openStore(ref);
    try {
      for (const key of RUN_FILES) {
        const info = await store.head(key);
        if (!info) continue;
        await mkdir(join(dir, key, '..'), { recursive: true });
        await writeFile(join(dir, key), await store.get(key));
      }
    } catch (err) {
      await rm(temp, { recursive: true, force: true });
      throw new PartiError('checkpoint', `${ref}: cannot read the run (${(err as Error).message})`);
    } finally {
      await store.close();
    }
  } else {
    dir = resolve(ref.startsWith('file:') ? new URL(ref).pathname : ref);
    if (!(await exists(dir))) throw new PartiError('checkpoint', `${ref}: no such run directory`);
  }
  try {
    return await loadFromDir(ref, dir);
  } finally {
    if (temp) await rm(temp, { recursive: true, force: true });
  }
}

async function loadFromDir(ref: string, dir: string): Promise<GenerationCheckpoint> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no config.json' : `config.json is not JSON (${(err as Error).message})`;
    throw new PartiError('checkpoint', `${ref}: not a parti run directory (${why})`);
  }
  const body = raw as { configHash?: unknown; config?: unknown };
  if (typeof body !== 'object' || body === null || typeof body.configHash !== 'string' || typeof body.config !== 'object') {
    throw new PartiError('checkpoint', `${ref}: not a parti run directory (config.json has no configHash and config)`);
  }
  let config: Config;
  try {
    config = parseConfig(body.config, `${ref}/config.json`);
  } catch (err) {
    // One line: the first problem, and how many more there are.
    const lines = (err as Error).message.split('\n');
    const more = lines.length > 1 ? ` and ${lines.length - 1} more` : '';
    throw new PartiError('checkpoint', `${ref}: config.json is not a valid parti config (${lines[0]}${more})`);
  }
  const partiDir = join(dir, 'parti');
  const parti = await loadTrainingState(partiDir, partiLayout(config.model));
  if (!parti) throw new PartiError('checkpoint', `${ref}: no trained Parti model (parti/checkpoint.json missing; run parti train first)`);
  if (parti.configHash !== body.configHash) {
    log.warn({ checkpoint: ref }, `${ref}: parti checkpoint was written by another config hash than config.json's; using it`);
  }
  let tokDir = join(dir, 'tokenizer');
  if (!(await exists(join(tokDir, 'checkpoint.json'))) && config.training.tokenizerFrom) {
    const from = config.training.tokenizerFrom;
    tokDir = (await exists(join(from, 'tokenizer', 'checkpoint.json'))) ? join(from, 'tokenizer') : from;
  }
  const tokenizer = await loadTrainingState(tokDir, vqganLayout(config.model.tokenizer));
  if (!tokenizer) throw new PartiError('checkpoint', `${ref}: no trained image tokenizer (${tokDir}/checkpoint.json missing)`);
  const upCfg = upsamplerConfigOf(config);
  const upModel = new Upsampler(upCfg, config.model.tokenizer.channels);
  const up = await loadTrainingState(join(dir, 'upsampler'), upModel.layout);
  return {
    source: ref,
    config,
    configHash: body.configHash,
    parti: parti.params,
    partiStep: parti.step,
    tokenizer: tokenizer.params,
    upsampler: up ? { params: up.params, config: upCfg, step: up.step } : undefined,
  };
}
