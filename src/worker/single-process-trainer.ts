import { appendFile, mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { PNG } from 'pngjs';
import type { Config } from '../config/schema.ts';
import type { StageConfig } from '../config/training-schema.ts';
import { configHash } from '../config/load.ts';
import { openDataset } from '../data/dataset.ts';
import { EpochPlan, type SampleRef } from '../data/epoch-plan.ts';
import type { ReadSample, SampleReader } from '../data/sample-reader.ts';
import { PartiError } from '../errors.ts';
import { log } from '../observability/log.ts';
import { initBackend } from '../model/backend.ts';
import { clipScale, createOptimizer, gradientNorm, learningRate, type Optimizer } from '../model/optimizer.ts';
import { PartiTrainable, type PartiBatch } from '../model/parti-training.ts';
import { SAMPLER_DEFAULTS, sampleImageTokens } from '../generate/sampler.ts';
import { Upsampler, type UpsamplerBatch } from '../model/upsampler.ts';
import { upsamplerSchema } from '../config/upsampler-schema.ts';
import type { GradientResult, Trainable } from '../model/trainable.ts';
import { loadTrainingState, saveTrainingState, type TrainingState } from '../model/training-state.ts';
import { codebookStats, DeadCodeReseeder, VitVqgan, type ImageBatch } from '../model/vit-vqgan.ts';
import { prepareTokenizer } from './tokenizer-source.ts';

/** The stages `parti train` runs: the tokenizer, Parti, and (when training.upsampler is set) the upsampler. */
export type StageName = 'tokenizer' | 'parti' | 'upsampler';

/** What one optimizer step did. */
export interface StepReport {
  step: number;
  /** Mean loss over the step's samples. */
  loss: number;
  lr: number;
  /** Global L2 norm of the mean gradient before clipping. */
  gradNorm: number;
  /** True when the gradient had a non-finite value and the update was skipped. */
  skipped: boolean;
  samples: number;
  tokens: number;
  /** Means over samples of the model's other loss terms. */
  metrics: Record<string, number>;
}

/**
 * One stage's optimizer steps on a flat parameter vector: gradient sums (micro-batched when the
 * stage says so), averaging, global-norm clipping and the non-finite check on the host in a fixed
 * order (float64), then the optimizer update. The cluster worker uses `applyGradients` with
 * all-reduced sums; this process uses `step` for everything.
 */
export class StageRunner<TBatch extends { ids: readonly number[] }> {
  readonly params: Float32Array;
  readonly optimizer: Optimizer;
  /** Optimizer steps completed. */
  step = 0;

  constructor(
    readonly trainable: Trainable<TBatch>,
    readonly stage: StageConfig,
    readonly opts: {
      seed: number;
      /** Steps of the whole stage (for the learning-rate schedule). */
      totalSteps: number;
      params: Float32Array;
      /** Cuts samples [start, end) out of a batch (micro-batching). */
      slice: (batch: TBatch, start: number, end: number) => TBatch;
    },
  ) {
    this.params = opts.params;
    this.optimizer = createOptimizer(stage.optimizer, trainable.layout);
  }

  /** Summed gradients of a batch, in micro-batches of at most stage.microBatchSize samples. */
  gradients(batch: TBatch): GradientResult {
    const B = batch.ids.length;
    const micro = Math.min(B, this.stage.microBatchSize ?? B);
    let total: GradientResult | null = null;
    for (let s = 0; s < B; s += micro) {
      const part = micro === B ? batch : this.opts.slice(batch, s, Math.min(B, s + micro));
      const r = this.trainable.computeGradients(this.params, part, { step: this.step, seed: this.opts.seed });
      if (!total) total = r;
      else {
        for (let i = 0; i < r.grads.length; i++) total.grads[i] += r.grads[i]!;
        total.loss += r.loss;
        total.samples += r.samples;
        total.tokens += r.tokens;
        for (const [k, v] of Object.entries(r.metrics)) total.metrics[k] = (total.metrics[k] ?? 0) + v;
        for (const [k, v] of Object.entries(r.aux)) {
          const t = total.aux[k];
          if (t && k === 'codeCounts') for (let i = 0; i < v.length; i++) t[i] += v[i]!;
          else total.aux[k] = v;
        }
      }
    }
    if (!total) throw new PartiError('internal', 'empty batch');
    return total;
  }

  /**
   * Applies summed gradients of `samples` samples: mean, clip, non-finite check, update. Advances
   * the step either way (a skipped step still consumes its data).
   */
  applyGradients(gradSum: Float32Array, samples: number): { lr: number; gradNorm: number; skipped: boolean } {
    const inv = 1 / samples;
    // Norm of the mean gradient = norm of the sum / samples.
    const { norm, finite } = gradientNorm(gradSum);
    const gradNorm = norm * inv;
    const lr = learningRate(this.step, this.opts.totalSteps, this.stage.optimizer.lr, this.stage.schedule);
    if (finite) this.optimizer.update(this.params, gradSum, { lr, gradScale: inv * clipScale(gradNorm, this.stage.clipNorm) });
    this.step++;
    return { lr, gradNorm, skipped: !finite };
  }

  /** One whole step on one process. */
  trainStep(batch: TBatch): { report: StepReport; result: GradientResult } {
    const step = this.step;
    const result = this.gradients(batch);
    const a = this.applyGradients(result.grads, result.samples);
    const metrics: Record<string, number> = {};
    for (const [k, v] of Object.entries(result.metrics)) metrics[k] = v / result.samples;
    return {
      report: { step, loss: result.loss / result.samples, ...a, samples: result.samples, tokens: result.tokens, metrics },
      result,
    };
  }
}

/** Options of `trainPipeline`. */
export interface TrainOptions {
  config: Config;
  runDir: string;
  /** Overrides the configured steps of each stage. */
  steps?: number;
  /** Only this stage (default: tokenizer unless already trained, then parti). */
  stage?: StageName;
  /** Where progress lines go (default: stderr). */
  progress?: (line: string) => void;
  /** Write a sample image after the parti stage (default true). */
  sample?: boolean;
}

/** What a pipeline run produced. */
export interface TrainResult {
  stages: { stage: StageName; steps: number; losses: number[]; checkpoint: string; skipped?: boolean }[];
  samplePng?: string;
}

function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s` : `${Math.round(s)}s`;
}

/** Dense sample identities: shard offset + ordinal (the sample's index in the set). */
function sampleIds(plan: EpochPlan, refs: readonly SampleRef[]): number[] {
  const starts: number[] = [];
  let acc = 0;
  for (const n of plan.shardSizes) {
    starts.push(acc);
    acc += n;
  }
  return refs.map((r) => starts[r.shard]! + r.ordinal);
}

/**
 * Trains in one process: the ViT-VQGAN tokenizer (unless the run directory or
 * training.tokenizerFrom already has a trained one), then Parti on the frozen tokenizer's codes,
 * then writes a sample image. The run directory holds config.json, tokenizer/ and parti/
 * checkpoints (checkpoint.json + state.bin), metrics.jsonl and sample.png. A stage with a
 * checkpoint short of its steps resumes from it.
 */
export async function trainPipeline(opts: TrainOptions): Promise<TrainResult> {
  const { config } = opts;
  const runDir = resolve(opts.runDir);
  const say = opts.progress ?? ((line: string) => process.stderr.write(`${line}\n`));
  await mkdir(runDir, { recursive: true });
  await writeFile(join(runDir, 'config.json'), JSON.stringify({ configHash: configHash(config), config }, null, 2));
  await initBackend(config.runtime.backend);
  const result: TrainResult = { stages: [] };
  const tokCfg = config.model.tokenizer;
  const vq = new VitVqgan(tokCfg);
  // training.tokenizerFrom: a local run (or tokenizer) directory, or a URL fetched and verified here
  const needsTokenizer = opts.stage === undefined || opts.stage === 'parti';
  const tokenizerDir = needsTokenizer ? await prepareTokenizer(config, runDir) : join(runDir, 'tokenizer');
  const ds = await openDataset(config.data, { imageSize: tokCfg.imageSize });
  const reader = ds.createReader();
  try {
    const stages: StageName[] = opts.stage ? [opts.stage] : ['tokenizer', 'parti', ...(config.training.upsampler ? (['upsampler'] as const) : [])];
    let vqParams: Float32Array | null = null;
    for (const stage of stages) {
      if (stage === 'tokenizer') {
        if (config.training.tokenizerFrom && !opts.stage) {
          say(`tokenizer: using the trained tokenizer in ${tokenizerDir}`);
          continue;
        }
        const r = await runTokenizerStage(config, opts, runDir, join(runDir, 'tokenizer'), vq, ds.shards, reader, say);
        result.stages.push(r.summary);
        vqParams = r.params;
      } else if (stage === 'upsampler') {
        const r = await runUpsamplerStage(config, opts, runDir, say);
        result.stages.push(r.summary);
      } else {
        if (!vqParams) {
          const s = await loadTrainingState(tokenizerDir, vq.layout);
          if (!s) throw new PartiError('checkpoint', `${tokenizerDir}: no trained tokenizer (run the tokenizer stage first)`);
          vqParams = s.params;
        }
        const r = await runPartiStage(config, opts, runDir, vq, vqParams, ds.shards, reader, say);
        result.stages.push(r.summary);
        if (opts.sample !== false) {
          result.samplePng = await writeSamplePng(config, r.trainable, r.params, vq, vqParams, join(runDir, 'sample.png'));
          say(`sample image: ${result.samplePng}`);
        }
      }
    }
  } finally {
    await reader.close();
    await ds.close();
  }
  return result;
}

interface StageSetup<TBatch extends { ids: readonly number[] }> {
  name: StageName;
  trainable: Trainable<TBatch>;
  stageCfg: StageConfig;
  dir: string;
  makeBatch: (ids: number[], samples: ReadSample[]) => Promise<TBatch>;
  slice: (batch: TBatch, start: number, end: number) => TBatch;
  /** After each step (dead-code re-seeding); returns extra metrics. */
  afterStep?: (runner: StageRunner<TBatch>, result: GradientResult, step: number) => Record<string, number>;
  extraState?: () => Record<string, Float32Array | Int32Array>;
  restoreExtra?: (extra: Record<string, Float32Array | Int32Array>) => void;
  /** Fresh parameters (default: the layout's init). */
  initialize?: (seed: number) => Float32Array;
}

async function runStage<TBatch extends { ids: readonly number[] }>(
  config: Config,
  opts: TrainOptions,
  runDir: string,
  setup: StageSetup<TBatch>,
  shards: { samples: number }[],
  reader: SampleReader,
  say: (line: string) => void,
): Promise<{ params: Float32Array; summary: TrainResult['stages'][number] }> {
  const steps = opts.steps ?? setup.stageCfg.steps;
  const seed = config.training.seed;
  const hash = configHash(config);
  const previous = await loadTrainingState(setup.dir, setup.trainable.layout);
  if (previous && previous.configHash !== hash) {
    log.warn({ dir: setup.dir, theirs: previous.configHash, ours: hash }, `${setup.name}: checkpoint was written by another config; continuing from it`);
  }
  const runner = new StageRunner(setup.trainable, setup.stageCfg, {
    seed,
    totalSteps: steps,
    params: previous ? previous.params : (setup.initialize?.(seed) ?? setup.trainable.layout.initialize(seed)),
    slice: setup.slice,
  });
  if (previous) {
    runner.optimizer.importState(previous.optimizer);
    runner.step = previous.step;
    setup.restoreExtra?.(previous.extra);
    if (previous.step >= steps) {
      say(`${setup.name}: already trained (${previous.step} steps in ${setup.dir})`);
      return { params: runner.params, summary: { stage: setup.name, steps: previous.step, losses: [], checkpoint: setup.dir, skipped: true } };
    }
    say(`${setup.name}: resuming at step ${previous.step} from ${setup.dir}`);
  }
  const plan = new EpochPlan(shards, { seed, globalBatch: setup.stageCfg.batchSize });
  const metricsFile = join(runDir, 'metrics.jsonl');
  const losses: number[] = [];
  const started = performance.now();
  const firstStep = runner.step;
  let tokensSince = 0;
  let timeSince = 0;
  const save = async () => {
    const state: TrainingState = {
      stage: setup.name,
      step: runner.step,
      configHash: hash,
      layout: setup.trainable.layout.toJSON(),
      params: runner.params,
      optimizer: runner.optimizer.exportState(),
      extra: setup.extraState?.() ?? {},
      data: plan.cursorAtStep(runner.step),
    };
    await saveTrainingState(setup.dir, state);
  };
  const logEvery = config.training.logEvery;
  while (runner.step < steps) {
    const t0 = performance.now();
    const refs = plan.batchAt(plan.cursorAtStep(runner.step));
    reader.prefetch(plan.batchAt(plan.cursorAtStep(runner.step + 1)));
    const read = await reader.read(refs);
    if (read.samples.length === 0) throw new PartiError('data', `${setup.name} step ${runner.step}: every sample of the batch was bad`);
    const ids = sampleIds(plan, read.samples.map((s) => s.ref));
    const batch = await setup.makeBatch(ids, read.samples);
    const { report, result } = runner.trainStep(batch);
    const extra = setup.afterStep?.(runner, result, report.step) ?? {};
    const ms = performance.now() - t0;
    const tokensPerSec = report.tokens / (ms / 1000);
    tokensSince += report.tokens;
    timeSince += ms;
    losses.push(report.loss);
    const line = {
      stage: setup.name,
      step: report.step,
      loss: report.loss,
      tokensPerSec,
      samplesPerSec: report.samples / (ms / 1000),
      ms,
      lr: report.lr,
      gradNorm: report.gradNorm,
      skipped: report.skipped,
      ...report.metrics,
      ...extra,
    };
    await appendFile(metricsFile, `${JSON.stringify(line)}\n`);
    const done = runner.step;
    if (done % logEvery === 0 || done === steps || done === firstStep + 1) {
      const elapsed = (performance.now() - started) / 1000;
      const eta = (elapsed / (done - firstStep)) * (steps - done);
      const rate = tokensSince / (timeSince / 1000);
      const extras = Object.entries({ ...report.metrics, ...extra })
        .map(([k, v]) => `${k} ${Number.isInteger(v) ? v : v.toFixed(4)}`)
        .join(' ');
      say(
        `${setup.name} step ${String(done).padStart(String(steps).length)}/${steps}  loss ${report.loss.toFixed(4)}  ${rate.toFixed(0)} tok/s  ETA ${formatDuration(eta)}${extras ? `  ${extras}` : ''}${report.skipped ? '  (non-finite gradient: skipped)' : ''}`,
      );
      tokensSince = 0;
      timeSince = 0;
    }
    if (config.checkpoint.everySteps > 0 && done % config.checkpoint.everySteps === 0 && done < steps) await save();
  }
  await save();
  say(`${setup.name}: ${steps} steps done, checkpoint in ${setup.dir}`);
  return { params: runner.params, summary: { stage: setup.name, steps, losses, checkpoint: setup.dir } };
}

function concatImages(samples: ReadSample[]): Uint8Array {
  const size = samples[0]!.image.length;
  const out = new Uint8Array(samples.length * size);
  samples.forEach((s, i) => out.set(s.image, i * size));
  return out;
}

async function runTokenizerStage(
  config: Config,
  opts: TrainOptions,
  runDir: string,
  dir: string,
  vq: VitVqgan,
  shards: { samples: number }[],
  reader: SampleReader,
  say: (line: string) => void,
) {
  await vq.prepare();
  const c = config.model.tokenizer;
  const reseeder = new DeadCodeReseeder(c.codebookSize, c.codeDim, c.deadCodeSteps);
  const codebookOffset = vq.layout.get('vq.codebook').offset;
  const imageBytes = c.imageSize * c.imageSize * c.channels;
  const setup: StageSetup<ImageBatch> = {
    name: 'tokenizer',
    trainable: vq,
    stageCfg: config.training.tokenizer,
    dir,
    makeBatch: async (ids, samples) => ({ ids, images: concatImages(samples) }),
    slice: (b, s, e) => ({ ids: b.ids.slice(s, e), images: b.images.subarray(s * imageBytes, e * imageBytes) }),
    afterStep: (runner, r, step) => {
      const counts = r.aux.codeCounts!;
      const stats = codebookStats(counts);
      const reseeded = reseeder.update(runner.params, codebookOffset, step, config.training.seed, counts, r.aux.encoderOutputs!);
      return { codebookUsage: stats.usage, perplexity: stats.perplexity, reseeded };
    },
    extraState: () => ({ lastUsed: reseeder.lastUsed }),
    restoreExtra: (extra) => {
      if (extra.lastUsed) reseeder.lastUsed.set(extra.lastUsed);
    },
  };
  return runStage(config, opts, runDir, setup, shards, reader, say);
}

async function runPartiStage(
  config: Config,
  opts: TrainOptions,
  runDir: string,
  vq: VitVqgan,
  vqParams: Float32Array,
  shards: { samples: number }[],
  reader: SampleReader,
  say: (line: string) => void,
) {
  const trainable = new PartiTrainable(config.model);
  const T = vq.tokens;
  const L = config.model.text.maxLength;
  // The frozen tokenizer's codes of each sample, computed once.
  const cache = new Map<number, Int32Array>();
  const setup: StageSetup<PartiBatch> = {
    name: 'parti',
    trainable,
    stageCfg: config.training.parti,
    dir: join(runDir, 'parti'),
    makeBatch: async (ids, samples) => {
      const missing = ids.map((id, i) => [id, i] as const).filter(([id]) => !cache.has(id));
      if (missing.length > 0) {
        const toks = vq.encode(vqParams, concatImages(missing.map(([, i]) => samples[i]!)), missing.length);
        missing.forEach(([id], j) => cache.set(id, toks.slice(j * T, (j + 1) * T)));
      }
      const imageTokens = new Int32Array(ids.length * T);
      ids.forEach((id, i) => imageTokens.set(cache.get(id)!, i * T));
      return trainable.makeBatch(ids, samples.map((s) => s.caption), imageTokens);
    },
    slice: (b, s, e) => ({
      ids: b.ids.slice(s, e),
      text: b.text.subarray(s * L, e * L),
      textMask: b.textMask.subarray(s * L, e * L),
      imageTokens: b.imageTokens.subarray(s * T, e * T),
    }),
  };
  const r = await runStage(config, opts, runDir, setup, shards, reader, say);
  return { ...r, trainable };
}

/**
 * The upsampler stage: the super-resolution network (model.upsampler, defaults when absent)
 * learns to restore original images of side `trainImageSize` (default tokenizer.imageSize *
 * scale) from their box-downsampled copies, on the same data source (synthetic shapes are drawn
 * at that size). Its checkpoint goes to `<run>/upsampler/`.
 */
async function runUpsamplerStage(config: Config, opts: TrainOptions, runDir: string, say: (line: string) => void) {
  const stageCfg = config.training.upsampler;
  if (!stageCfg) throw new PartiError('config', 'training.upsampler: required to train the upsampler stage (steps, batchSize, optimizer)');
  const upCfg = upsamplerSchema.parse(config.model.upsampler ?? {});
  const tok = config.model.tokenizer;
  const size = upCfg.trainImageSize ?? tok.imageSize * upCfg.scale;
  if (size % upCfg.scale !== 0) throw new PartiError('config', `model.upsampler.trainImageSize: ${size} is not a multiple of scale ${upCfg.scale}`);
  const up = new Upsampler(upCfg, tok.channels, tok.losses.l2);
  const bytes = size * size * tok.channels;
  const ds = await openDataset(config.data, { imageSize: size });
  const reader = ds.createReader();
  try {
    const setup: StageSetup<UpsamplerBatch> = {
      name: 'upsampler',
      trainable: up,
      stageCfg,
      dir: join(runDir, 'upsampler'),
      makeBatch: async (ids, samples) => ({ ids, images: concatImages(samples) }),
      slice: (b, s, e) => ({ ids: b.ids.slice(s, e), images: b.images.subarray(s * bytes, e * bytes) }),
      initialize: (seed) => up.initialize(seed),
    };
    return await runStage(config, opts, runDir, setup, ds.shards, reader, say);
  } finally {
    await reader.close();
    await ds.close();
  }
}

/** Captions of the sample image (the shapes set's vocabulary). */
export const SAMPLE_CAPTIONS = ['a red circle above a blue square', 'a green triangle at the top left', 'a yellow square in the center', 'a white cross on the right'];

/** Samples one image per caption and writes them side by side, 4x enlarged, as a PNG. */
export async function writeSamplePng(
  config: Config,
  trainable: PartiTrainable,
  params: Float32Array,
  vq: VitVqgan,
  vqParams: Float32Array,
  file: string,
  captions: readonly string[] = SAMPLE_CAPTIONS,
): Promise<string> {
  // The sampler of `parti generate`, with its default settings and the training seed.
  const runner = { model: trainable.model, tokenizer: trainable.tokenizer, params: trainable.model.layout.toTensors(params) };
  const tokens = new Int32Array(captions.length * trainable.model.imageTokens);
  try {
    const drawn = sampleImageTokens(
      runner,
      captions.map((prompt, promptIndex) => ({ prompt, promptIndex, samples: [0] })),
      { ...SAMPLER_DEFAULTS, seed: config.training.seed },
    );
    drawn.forEach((d, i) => tokens.set(d[0]!, i * trainable.model.imageTokens));
  } finally {
    for (const t of runner.params.values()) t.dispose();
  }
  const images = vq.decode(vqParams, tokens, captions.length);
  const S = config.model.tokenizer.imageSize;
  const C = config.model.tokenizer.channels;
  const scale = 4;
  const gap = 4;
  const width = captions.length * (S * scale + gap) - gap;
  const png = new PNG({ width, height: S * scale });
  png.data.fill(255);
  for (let n = 0; n < captions.length; n++)
    for (let y = 0; y < S * scale; y++)
      for (let x = 0; x < S * scale; x++) {
        const src = ((n * S + Math.floor(y / scale)) * S + Math.floor(x / scale)) * C;
        const dst = (y * width + n * (S * scale + gap) + x) * 4;
        for (let ch = 0; ch < 3; ch++) png.data[dst + ch] = images[src + Math.min(ch, C - 1)]!;
        png.data[dst + 3] = 255;
      }
  await writeFile(file, PNG.sync.write(png));
  await writeFile(`${file.replace(/\.png$/, '')}.json`, JSON.stringify({ captions }, null, 2));
  return file;
}
