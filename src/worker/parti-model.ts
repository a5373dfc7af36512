/**
 * The real Parti model behind the worker's Trainable interface: parameters from the model
 * engineer's layout, gradients from PartiTrainable (sums over samples), samples read through the
 * data engineer's SampleReader, image tokens from the frozen, already trained ViT-VQGAN, and the
 * model engineer's optimizers over an element range (ZeRO-1 gives each rank its own range).
 */
import type { Config } from '../config/schema.ts';
import { openDataset, type Dataset } from '../data/dataset.ts';
import type { SampleReader } from '../data/sample-reader.ts';
import { initBackend } from '../model/backend.ts';
import { createOptimizer, learningRate, type Optimizer } from '../model/optimizer.ts';
import { PartiTrainable } from '../model/parti-training.ts';
import { loadTrainingState } from '../model/training-state.ts';
import { VitVqgan } from '../model/vit-vqgan.ts';
import { PartiError } from '../errors.ts';
import { prepareTokenizer } from './tokenizer-source.ts';
import type { GradientResult, OptimizerShard, OptimizerSnapshot, SampleBatch, StepContext, Trainable } from './trainable.ts';

/** Where the trained tokenizer of a run is: training.tokenizerFrom, else `<run dir>/tokenizer`. */
export { tokenizerDir, prepareTokenizer } from './tokenizer-source.ts';

class RangeOptimizer implements OptimizerShard {
  readonly slots: number;
  private readonly names: string[];
  constructor(
    private readonly opt: Optimizer,
    readonly start: number,
    readonly end: number,
    private readonly lrAt: (step: number) => number,
  ) {
    const st = opt.exportState();
    this.names = Object.keys(st.slots);
    const n = end - start;
    for (const name of this.names) {
      if (st.slots[name]!.length !== n) {
        throw new PartiError('config', `training.parti.optimizer: ${st.type} keeps factored state (${name}); only AdamW can be split into ranges (runtime.zeroStage 1 and checkpoint re-sharding)`);
      }
    }
    this.slots = this.names.length;
  }
  learningRate(step: number): number {
    return this.lrAt(step);
  }
  apply(params: Float32Array, grad: Float32Array, step: number): number {
    const lr = this.lrAt(step);
    this.opt.update(params, grad, { lr });
    return lr;
  }
  stateBytes(): number {
    return Object.values((this.opt.peekState?.() ?? this.opt.exportState()).slots).reduce((n, a) => n + a.byteLength, 0);
  }
  exportState(): OptimizerSnapshot {
    const state = new Float32Array((this.end - this.start) * this.slots);
    return { updates: this.exportStateInto(state), state };
  }
  liveState(): { updates: number; slots: readonly Float32Array[] } | undefined {
    const st = this.opt.peekState?.();
    return st && { updates: st.updates, slots: this.names.map((name) => st.slots[name]!) };
  }
  exportStateInto(target: Float32Array): number {
    // the live arrays when the optimizer lends them: one copy, straight into the snapshot buffer
    const st = this.opt.peekState?.() ?? this.opt.exportState();
    const n = this.end - this.start;
    this.names.forEach((name, k) => target.set(st.slots[name]!, k * n));
    return st.updates;
  }
  importState(snapshot: OptimizerSnapshot): void {
    const st = this.opt.exportState();
    const n = this.end - this.start;
    const slots: Record<string, Float32Array> = {};
    this.names.forEach((name, k) => (slots[name] = snapshot.state.slice(k * n, (k + 1) * n)));
    this.opt.importState({ ...st, updates: snapshot.updates, slots });
  }
}

export class PartiWorkerModel implements Trainable {
  readonly paramCount: number;
  readonly clipNorm: number;
  private readonly flat: Float32Array;
  /** Image tokens of each sample id, from the frozen tokenizer, computed once. */
  private readonly tokenCache = new Map<number, Int32Array>();

  private constructor(
    private readonly config: Config,
    readonly trainable: PartiTrainable,
    readonly vq: VitVqgan,
    readonly vqParams: Float32Array,
    private readonly dataset: Dataset,
    private readonly reader: SampleReader,
  ) {
    this.paramCount = trainable.layout.size;
    this.clipNorm = config.training.parti.clipNorm;
    // In shared memory, so that a checkpoint's upload thread can copy it while a step computes.
    const init = trainable.layout.initialize(config.training.seed);
    this.flat = new Float32Array(new SharedArrayBuffer(init.byteLength));
    this.flat.set(init);
  }

  /** Loads the backend, the trained tokenizer and the data set; parameters at their initialization. */
  static async create(config: Config, runDir: string): Promise<PartiWorkerModel> {
    await initBackend(config.runtime.backend);
    const vq = new VitVqgan(config.model.tokenizer);
    // (fetched and verified first when training.tokenizerFrom is an s3:// or file:// URL)
    const dir = await prepareTokenizer(config, runDir);
    const state = await loadTrainingState(dir, vq.layout);
    if (!state) throw new PartiError('checkpoint', `${dir}: no trained tokenizer (train the tokenizer stage first, or set training.tokenizerFrom)`);
    const dataset = await openDataset(config.data, { imageSize: config.model.tokenizer.imageSize });
    return new PartiWorkerModel(config, new PartiTrainable(config.model), vq, state.params, dataset, dataset.createReader());
  }

  params(): Float32Array {
    return this.flat;
  }

  paramsChanged(): void {}

  async computeGradients(batch: SampleBatch, ctx: StepContext): Promise<GradientResult> {
    const idOf = new Map(batch.refs.map((r, i) => [`${r.epoch}/${r.shard}/${r.ordinal}`, batch.ids[i]!]));
    const read = await this.reader.read(batch.refs);
    const grads = new Float32Array(this.paramCount);
    // bad samples the reader skipped (policy skip), by reason, for the step report
    const skipped: Record<string, number> = {};
    for (const s of read.skipped) skipped[s.reason] = (skipped[s.reason] ?? 0) + 1;
    if (read.samples.length === 0) return { lossSum: 0, grads, samples: 0, tokens: 0, skipped };
    const ids = read.samples.map((s) => idOf.get(`${s.ref.epoch}/${s.ref.shard}/${s.ref.ordinal}`)!);
    const T = this.vq.tokens;
    const missing = ids.map((id, i) => [id, i] as const).filter(([id]) => !this.tokenCache.has(id));
    if (missing.length > 0) {
      const size = read.samples[0]!.image.length;
      const images = new Uint8Array(missing.length * size);
      missing.forEach(([, i], j) => images.set(read.samples[i]!.image, j * size));
      const toks = this.vq.encode(this.vqParams, images, missing.length);
      missing.forEach(([id], j) => this.tokenCache.set(id, toks.slice(j * T, (j + 1) * T)));
    }
    const imageTokens = new Int32Array(ids.length * T);
    ids.forEach((id, i) => imageTokens.set(this.tokenCache.get(id)!, i * T));
    const b = this.trainable.makeBatch(ids, read.samples.map((s) => s.caption), imageTokens);
    const r = this.trainable.computeGradients(this.flat, b, { step: ctx.step, seed: ctx.seed });
    return { lossSum: r.loss, grads: r.grads, samples: r.samples, tokens: r.tokens, skipped };
  }

  createOptimizer(start: number, end: number): OptimizerShard {
    const stage = this.config.training.parti;
    const opt = createOptimizer(stage.optimizer, this.trainable.layout, [start, end]);
    return new RangeOptimizer(opt, start, end, (step) => learningRate(step, stage.steps, stage.optimizer.lr, stage.schedule));
  }

  shardRanges(parts: number): [number, number][] {
    return this.trainable.layout.shardRanges(parts);
  }

  dispose(): void {
    void this.reader.close();
    void this.dataset.close();
  }
}
