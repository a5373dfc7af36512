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
import { listCheckpointSteps, loadCheckpoint, readManifest, type LoadedCheckpoint } from '../storage/checkpoint-load.ts';
import { fetchPublishedState, isStoreUrl } from '../storage/published-state.ts';
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
 * Loads a trained run for generation. `ref` is one of:
 * - a run directory written by `parti train` (a path or file:// URL), or the same layout under an
 *   s3:// prefix, which is first copied to a temporary folder: config.json, the Parti and tokenizer
 *   checkpoints and, if present, the upsampler's;
 * - a checkpoint store of a cluster job (`checkpoint.url`, e.g. s3://bucket/run, or a local run's
 *   `checkpoints/` folder), or a run directory that has only committed checkpoints (a job killed
 *   before its end): the newest committed checkpoint that verifies (or the step named by a
 *   trailing `@STEP`), with the config from its manifest and the image tokenizer from the run
 *   directory or `training.tokenizerFrom` (a path, or a URL it was published to).
 * A missing or foreign run is a one-line PartiError('checkpoint').
 */
export async function loadGenerationCheckpoint(ref: string): Promise<GenerationCheckpoint> {
  const at = /^(.+)@(\d+)$/.exec(ref);
  if (at) return loadCommitted(ref, at[1]!, Number(at[2]));
  if (!ref) throw new PartiError('usage', '--checkpoint: required (a run directory or URL)');
  let dir: string;
  let temp: string | null = null;
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(ref) && !ref.startsWith('file:')) {
    const store = openStore(ref);
    if (!(await store.head('config.json').catch(() => null)) && (await listCheckpointSteps(store).catch(() => [])).length > 0) {
      await store.close();
      return loadCommitted(ref, ref, 'latest');
    }
    temp = await mkdtemp(join(tmpdir(), 'parti-generate-'));
    dir = temp;
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
    if (!(await exists(join(dir, 'parti', 'checkpoint.json')))) {
      // No final Parti state: a checkpoint store itself, or a run that has only committed ones.
      if (await exists(join(dir, 'manifests'))) return loadCommitted(ref, dir, 'latest');
      if (await exists(join(dir, 'checkpoints', 'manifests'))) return loadCommitted(ref, dir, 'latest');
    }
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

/**
 * Generation state from a committed checkpoint: `where` is a checkpoint store (URL or folder) or
 * a local run directory holding `checkpoints/`. Reads the manifest's config, verifies params.bin
 * (size and sha256), and finds the image tokenizer (see loadGenerationCheckpoint).
 */
async function loadCommitted(ref: string, where: string, which: 'latest' | number): Promise<GenerationCheckpoint> {
  let runDir: string | null = null;
  let storeUrl = where;
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(where) || where.startsWith('file:')) {
    const dir = resolve(where.startsWith('file:') ? new URL(where).pathname : where);
    if (!(await exists(dir))) throw new PartiError('checkpoint', `${ref}: no such run directory or checkpoint folder`);
    if (await exists(join(dir, 'checkpoints', 'manifests'))) {
      runDir = dir;
      storeUrl = join(dir, 'checkpoints');
    } else {
      storeUrl = dir;
      // A local run's checkpoints/ folder: the run directory (its tokenizer, upsampler) is its parent.
      const parent = resolve(dir, '..');
      if ((await exists(join(parent, 'parti-job.json'))) || (await exists(join(parent, 'tokenizer', 'checkpoint.json')))) runDir = parent;
    }
  }
  const store = openStore(storeUrl);
  let temp: string | null = null;
  try {
    const steps = await listCheckpointSteps(store);
    if (steps.length === 0) throw new PartiError('checkpoint', `${ref}: no committed checkpoint in ${store.url}`);
    // The config comes from the manifest; load() then verifies the manifest again, with its hash.
    const candidates = which === 'latest' ? [...steps].reverse() : [which];
    let loaded: LoadedCheckpoint | null = null;
    let config: Config | null = null;
    const problems: string[] = [];
    for (const step of candidates) {
      try {
        const manifest = await readManifest(store, step);
        // Parsed by this version's schema (fields added since get their defaults, which may change
        // its hash): the objects are verified against the manifest's own hash.
        const cfg = parseConfig(manifest.config, `${ref}: manifest of step ${step}: config`);
        loaded = await loadCheckpoint(store, step, { configHash: manifest.configHash, select: (o) => o.name === 'params.bin' });
        config = cfg;
        break;
      } catch (err) {
        if (which !== 'latest' || !(err instanceof PartiError)) throw err;
        problems.push(err.message.split('\n')[0]!);
        log.warn({ checkpoint: ref, step }, `${problems.at(-1)}; trying an older checkpoint`);
      }
    }
    if (!loaded || !config) throw new PartiError('checkpoint', `${ref}: no checkpoint loads: ${problems.join(' | ')}`);
    const step = loaded.manifest.step;
    const paramsBytes = loaded.objects.get('params.bin');
    if (!paramsBytes) throw new PartiError('checkpoint', `${ref}: checkpoint ${step} has no params.bin (not a Parti checkpoint)`);
    const layout = partiLayout(config.model);
    if (paramsBytes.byteLength !== layout.size * 4) {
      throw new PartiError('checkpoint', `${ref}: checkpoint ${step}: params.bin has ${paramsBytes.byteLength} bytes, the config's Parti model needs ${layout.size * 4} (is it a Parti stage?)`);
    }
    const parti = new Float32Array(layout.size);
    new Uint8Array(parti.buffer).set(paramsBytes);
    // The tokenizer: the run's own, else training.tokenizerFrom (a path, or where it was published).
    const from = config.training.tokenizerFrom;
    let tokDir: string | null = runDir && (await exists(join(runDir, 'tokenizer', 'checkpoint.json'))) ? join(runDir, 'tokenizer') : null;
    if (!tokDir && from && isStoreUrl(from)) {
      temp = await mkdtemp(join(tmpdir(), 'parti-generate-tok-'));
      tokDir = await fetchPublishedState(from, temp);
    } else if (!tokDir && from) {
      tokDir = (await exists(join(from, 'tokenizer', 'checkpoint.json'))) ? join(from, 'tokenizer') : from;
    }
    const tokenizer = tokDir ? await loadTrainingState(tokDir, vqganLayout(config.model.tokenizer)) : null;
    if (!tokenizer) {
      throw new PartiError('checkpoint', `${ref}: no trained image tokenizer (${tokDir ? `${tokDir}/checkpoint.json missing` : 'no tokenizer/ beside the checkpoints and no training.tokenizerFrom'})`);
    }
    const upCfg = upsamplerConfigOf(config);
    const up = runDir ? await loadTrainingState(join(runDir, 'upsampler'), new Upsampler(upCfg, config.model.tokenizer.channels).layout) : null;
    return {
      source: ref,
      config,
      configHash: loaded.manifest.configHash,
      parti,
      partiStep: step,
      tokenizer: tokenizer.params,
      upsampler: up ? { params: up.params, config: upCfg, step: up.step } : undefined,
    };
  } finally {
    await store.close();
    if (temp) await rm(temp, { recursive: true, force: true });
  }
}
