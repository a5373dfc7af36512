import * as tf from '@tensorflow/tfjs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { ImageTokenizerConfig } from '../config/model-schema.ts';
import { PartiError } from '../errors.ts';
import { linear, matmul, oneHot, stopGradient } from './ops.ts';
import { LayoutBuilder, param, type ParamLayout, type ParamTensors } from './param-layout.ts';
import { hashInts } from './rng.ts';
import { flatGradients, type GradientOptions, type GradientResult, type Trainable } from './trainable.ts';
import { addPositions, addStackParams, encoderStack, EVAL_CONTEXT, INIT_STD, type ForwardContext } from './transformer.ts';

/** A batch of images for the tokenizer stage. */
export interface ImageBatch {
  /** Sample identities (index in the data set). */
  ids: readonly number[];
  /** [B * H * W * C] RGB(A) bytes, row-major, as the data set gives them. */
  images: Uint8Array;
}

/** Logit-Laplace keeps pixels away from 0 and 1 by this margin (as in DALL-E's dVAE). */
const LAPLACE_EPS = 0.1;

/**
 * The ViT-VQGAN image tokenizer: image patches -> ViT encoder -> linear projection to a
 * low-dimensional lookup space -> l2-normalized nearest code in an l2-normalized codebook ->
 * straight-through estimator -> ViT decoder -> pixels.
 *
 * Loss per image: l2 * mean squared pixel error (pixels in [-1, 1]) [+ logitLaplace * NLL]
 * + ||sg(z) - q||^2 (codebook) + beta * ||z - sg(q)||^2 (commitment)
 * [+ adversarial * generator loss of a small patch discriminator, after startStep]
 * [+ perceptual * feature distance in a user-named tfjs network].
 *
 * Parameter names: `vq.encoder.patch.{w,b}`, `vq.encoder.pos` (not with encoderScope 'patch'), `vq.encoder.{i}.*`,
 * `vq.encoder.ln.*`, `vq.encoder.proj.{w,b}`, `vq.codebook`, `vq.decoder.proj.{w,b}`,
 * `vq.decoder.pos`, `vq.decoder.{i}.*`, `vq.decoder.ln.*`, `vq.decoder.out.{w,b}`, and
 * `vq.disc.*` when the adversarial loss is on.
 */
export class VitVqgan implements Trainable<ImageBatch> {
  readonly layout: ParamLayout;
  /** Patches (= image tokens) per side and in all. */
  readonly grid: number;
  readonly tokens: number;
  readonly patchDim: number;
  /** Decoder output values per patch: patchDim, or 2 * patchDim with logit-Laplace (mean, log-scale). */
  readonly outDim: number;
  private perceptual: tf.LayersModel | null = null;

  constructor(readonly config: ImageTokenizerConfig) {
    this.grid = config.imageSize / config.patchSize;
    this.tokens = this.grid * this.grid;
    this.patchDim = config.patchSize * config.patchSize * config.channels;
    this.outDim = config.losses.logitLaplace > 0 ? 2 * this.patchDim : this.patchDim;
    this.layout = vqganLayout(config);
  }

  /** Loads the perceptual-loss network, if the config names one. Call once before training. */
  async prepare(): Promise<void> {
    const perc = this.config.losses.perceptual;
    if (perc.weight > 0 && !this.perceptual) {
      if (!perc.network) {
        throw new PartiError('config', 'model.tokenizer.losses.perceptual.network: required when perceptual.weight > 0');
      }
      this.perceptual = await loadLayersModelFromFile(perc.network);
    }
  }

  /** Bytes [B*H*W*C] -> patches [B*N, P*P*C] in [0, 1]. */
  patchify(images: Uint8Array, B: number): Float32Array {
    const { imageSize: S, patchSize: P, channels: C } = this.config;
    const g = this.grid;
    const out = new Float32Array(B * this.tokens * this.patchDim);
    let o = 0;
    for (let b = 0; b < B; b++)
      for (let gy = 0; gy < g; gy++)
        for (let gx = 0; gx < g; gx++)
          for (let y = 0; y < P; y++) {
            const row = ((b * S + gy * P + y) * S + gx * P) * C;
            for (let i = 0; i < P * C; i++) out[o++] = images[row + i]! / 255;
          }
    return out;
  }

  /** Patches [B*N, P*P*C] in [0, 1] -> bytes [B*H*W*C]. */
  unpatchify(patches: Float32Array, B: number): Uint8Array {
    const { imageSize: S, patchSize: P, channels: C } = this.config;
    const g = this.grid;
    const out = new Uint8Array(B * S * S * C);
    let o = 0;
    for (let b = 0; b < B; b++)
      for (let gy = 0; gy < g; gy++)
        for (let gx = 0; gx < g; gx++)
          for (let y = 0; y < P; y++) {
            const row = ((b * S + gy * P + y) * S + gx * P) * C;
            for (let i = 0; i < P * C; i++) out[row + i] = Math.round(Math.min(1, Math.max(0, patches[o++]!)) * 255);
          }
    return out;
  }

  /** Encoder: patches [B*N, patchDim] (in [0,1]) -> l2-normalized lookup vectors z [B*N, codeDim]. */
  encodeLatents(p: ParamTensors, patches: tf.Tensor, B: number, ctx: ForwardContext): tf.Tensor2D {
    const c = this.config;
    const x = linear(tf.sub(tf.mul(patches, 2), 1), param(p, 'vq.encoder.patch.w'), param(p, 'vq.encoder.patch.b'));
    // encoderScope 'patch': every patch is a sequence of its own (B*N sequences of length 1), so
    // attention sees only the patch itself and no position is added.
    const h =
      c.encoderScope === 'patch'
        ? encoderStack(p, 'vq.encoder', { ...c.encoder }, x, B * this.tokens, 1, ctx)
        : encoderStack(p, 'vq.encoder', { ...c.encoder }, addPositions(x, param(p, 'vq.encoder.pos'), B, this.tokens), B, this.tokens, ctx);
    const z = linear(h, param(p, 'vq.encoder.proj.w'), param(p, 'vq.encoder.proj.b'));
    return l2Normalize(z);
  }

  /** Nearest l2-normalized code for each row of z: ids [B*N] and the code vectors [B*N, codeDim]. */
  quantize(p: ParamTensors, z: tf.Tensor2D): { ids: tf.Tensor1D; q: tf.Tensor2D } {
    const codebook = l2Normalize(param(p, 'vq.codebook'));
    // Cosine similarity; the transpose feeds no gradient (argmax), so it costs one copy.
    const sims = matmul(stopGradient(z), tf.transpose(stopGradient(codebook)));
    const ids = tf.argMax(sims, 1) as tf.Tensor1D;
    const q = matmul(oneHot(ids, this.config.codebookSize), codebook);
    return { ids, q };
  }

  /** Decoder: quantized codes [B*N, codeDim] -> raw outputs [B*N, outDim]. */
  decodeLatents(p: ParamTensors, zq: tf.Tensor, B: number, ctx: ForwardContext): tf.Tensor2D {
    const c = this.config;
    const x = linear(zq, param(p, 'vq.decoder.proj.w'), param(p, 'vq.decoder.proj.b'));
    const h = encoderStack(p, 'vq.decoder', { ...c.decoder }, addPositions(x, param(p, 'vq.decoder.pos'), B, this.tokens), B, this.tokens, ctx);
    return linear(h, param(p, 'vq.decoder.out.w'), param(p, 'vq.decoder.out.b'));
  }

  /** Raw decoder outputs -> pixels [B*N, patchDim] in about [0, 1]. */
  pixels(out: tf.Tensor2D): tf.Tensor2D {
    if (this.outDim === this.patchDim) return tf.div(tf.add(out, 1), 2) as tf.Tensor2D;
    const mu = tf.slice(out, [0, 0], [-1, this.patchDim]);
    return tf.div(tf.sub(tf.sigmoid(mu), LAPLACE_EPS), 1 - 2 * LAPLACE_EPS) as tf.Tensor2D;
  }

  private discriminator(p: ParamTensors, patchPixels: tf.Tensor, frozen: boolean): tf.Tensor {
    const w = (n: string) => (frozen ? stopGradient(param(p, n)) : param(p, n));
    let h: tf.Tensor = tf.leakyRelu(linear(tf.sub(tf.mul(patchPixels, 2), 1), w('vq.disc.w1'), w('vq.disc.b1')), 0.2);
    h = tf.leakyRelu(linear(h, w('vq.disc.w2'), w('vq.disc.b2')), 0.2);
    return linear(h, w('vq.disc.w3'), w('vq.disc.b3'));
  }

  private toImages(patchPixels: tf.Tensor, B: number): tf.Tensor4D {
    const { imageSize: S, patchSize: P, channels: C } = this.config;
    const g = this.grid;
    return tf.reshape(tf.transpose(tf.reshape(patchPixels, [B, g, g, P, P, C]), [0, 1, 3, 2, 4, 5]), [B, S, S, C]);
  }

  /**
   * The training loss (a scalar sum over images) and, through `keep`, the pieces to report:
   * `codeIds`, `z`, and per-term sums.
   */
  loss(p: ParamTensors, patches: Float32Array, B: number, step: number, ctx: ForwardContext, keep: (n: string, t: tf.Tensor) => void): tf.Scalar {
    const c = this.config;
    const N = this.tokens;
    const target = tf.tensor2d(patches, [B * N, this.patchDim]);
    const z = this.encodeLatents(p, target, B, ctx);
    const { ids, q } = this.quantize(p, z);
    keep('codeIds', ids);
    keep('z', z);
    // Per-sample means over tokens of the squared distances, summed over samples.
    const perSample = (rows: tf.Tensor, width: number) => tf.div(tf.sum(rows), N * width);
    const codebookLoss = tf.mul(perSample(tf.square(tf.sub(stopGradient(z), q)), 1), 1);
    const commitLoss = perSample(tf.square(tf.sub(z, stopGradient(q))), 1);
    // Warm-up (quantizeFromStep): the decoder reads z itself and no commitment pulls z onto the
    // codes, so the encoder is free to learn colour; the codebook follows z meanwhile. After it,
    // the straight-through estimator.
    const warm = step < (c.quantizeFromStep ?? 0);
    const zq = warm ? z : tf.add(z, stopGradient(tf.sub(q, z)));
    const out = this.decodeLatents(p, zq, B, ctx);
    const recon = this.pixels(out);
    // Squared error on the [-1, 1] scale: 4x the [0, 1] scale.
    const l2 = tf.div(tf.sum(tf.mul(tf.square(tf.sub(recon, target)), 4)), N * this.patchDim);
    keep('l2', l2);
    keep('codebook', codebookLoss);
    let total: tf.Tensor = tf.add(tf.add(tf.mul(l2, c.losses.l2), codebookLoss), tf.mul(commitLoss, warm ? 0 : c.beta));
    if (c.losses.logitLaplace > 0) {
      const mu = tf.slice(out, [0, 0], [-1, this.patchDim]);
      const logB = tf.slice(out, [0, this.patchDim], [-1, this.patchDim]);
      const x = tf.add(tf.mul(target, 1 - 2 * LAPLACE_EPS), LAPLACE_EPS);
      const logitX = tf.log(tf.div(x, tf.sub(1, x)));
      const nll = tf.add(
        tf.add(logB, tf.log(tf.mul(tf.mul(x, tf.sub(1, x)), 2))),
        tf.mul(tf.abs(tf.sub(logitX, mu)), tf.exp(tf.neg(logB))),
      );
      const ll = tf.div(tf.sum(nll), N * this.patchDim);
      keep('logitLaplace', ll);
      total = tf.add(total, tf.mul(ll, c.losses.logitLaplace));
    }
    const adv = c.losses.adversarial;
    if (adv.weight > 0 && step >= adv.startStep) {
      // Generator: non-saturating loss through a frozen discriminator.
      const gen = tf.div(tf.sum(tf.softplus(tf.neg(this.discriminator(p, recon, true)))), N);
      // Discriminator: its own loss on real patches and on (detached) reconstructions. Its
      // parameters get gradient only from this term, the generator's only from the others.
      const real = this.discriminator(p, target, false);
      const fake = this.discriminator(p, stopGradient(recon), false);
      const disc = tf.div(tf.add(tf.sum(tf.softplus(tf.neg(real))), tf.sum(tf.softplus(fake))), N);
      keep('generator', gen);
      keep('discriminator', disc);
      total = tf.add(total, tf.add(tf.mul(gen, adv.weight), disc));
    }
    if (c.losses.perceptual.weight > 0) {
      if (!this.perceptual) throw new PartiError('illegal-state', 'perceptual network not loaded: call VitVqgan.prepare() first');
      const fr = this.perceptual.apply(this.toImages(recon, B)) as tf.Tensor;
      const ft = stopGradient(this.perceptual.apply(this.toImages(target, B)) as tf.Tensor);
      const perc = tf.div(tf.sum(tf.square(tf.sub(fr, ft))), fr.size / B);
      keep('perceptual', perc);
      total = tf.add(total, tf.mul(perc, c.losses.perceptual.weight));
    }
    return total as tf.Scalar;
  }

  computeGradients(params: Float32Array, batch: ImageBatch, opts: GradientOptions): GradientResult {
    const B = batch.ids.length;
    const patches = this.patchify(batch.images, B);
    const ctx = { training: true, seed: opts.seed, step: opts.step, sampleIds: batch.ids };
    const { loss, grads, kept } = flatGradients(this.layout, params, (p, keep) => this.loss(p, patches, B, opts.step, ctx, keep));
    const codeCounts = new Float32Array(this.config.codebookSize);
    for (const id of kept.get('codeIds')!) codeCounts[id]!++;
    const metrics: Record<string, number> = {};
    for (const k of ['l2', 'codebook', 'logitLaplace', 'generator', 'discriminator', 'perceptual']) {
      const v = kept.get(k);
      if (v) metrics[k] = v[0]!;
    }
    return {
      loss,
      grads,
      samples: B,
      tokens: B * this.tokens,
      metrics,
      // codeCounts is a sum (all-reduce it); encoderOutputs are this batch's z rows (not a sum:
      // a cluster takes one rank's) for re-seeding dead codes.
      aux: { codeCounts, encoderOutputs: kept.get('z') as Float32Array },
    };
  }

  /** Images -> image tokens [B*N] (int32). */
  encode(params: Float32Array, images: Uint8Array, B: number): Int32Array {
    const patches = this.patchify(images, B);
    const p = this.layout.toTensors(params);
    try {
      const ids = tf.tidy(() => this.quantize(p, this.encodeLatents(p, tf.tensor2d(patches, [B * this.tokens, this.patchDim]), B, EVAL_CONTEXT)).ids);
      const out = ids.dataSync() as Int32Array;
      ids.dispose();
      return Int32Array.from(out);
    } finally {
      for (const t of p.values()) t.dispose();
    }
  }

  /** Image tokens [B*N] -> images [B*H*W*C] bytes. */
  decode(params: Float32Array, tokens: Int32Array, B: number): Uint8Array {
    const p = this.layout.toTensors(params);
    try {
      const px = tf.tidy(() => {
        const codebook = l2Normalize(param(p, 'vq.codebook'));
        const q = matmul(oneHot(tf.tensor1d(tokens, 'int32'), this.config.codebookSize), codebook);
        return this.pixels(this.decodeLatents(p, q, B, EVAL_CONTEXT));
      });
      const data = px.dataSync() as Float32Array;
      px.dispose();
      return this.unpatchify(data, B);
    } finally {
      for (const t of p.values()) t.dispose();
    }
  }
}

/** Row-wise l2 normalization. */
export function l2Normalize(x: tf.Tensor): tf.Tensor2D {
  return tf.mul(x, tf.rsqrt(tf.add(tf.sum(tf.square(x), -1, true), 1e-12))) as tf.Tensor2D;
}

/** Codebook usage of a batch (or window) from per-code counts. */
export function codebookStats(counts: Float32Array): { usage: number; perplexity: number } {
  let total = 0;
  let used = 0;
  for (const c of counts) {
    total += c;
    if (c > 0) used++;
  }
  let entropy = 0;
  for (const c of counts) if (c > 0) entropy -= (c / total) * Math.log(c / total);
  return { usage: used / counts.length, perplexity: Math.exp(entropy) };
}

/**
 * Tracks when each code was last chosen and re-seeds codes unused for `deadSteps` steps with
 * recent encoder outputs. Deterministic: which output a dead code gets is a hash of (seed, step,
 * code). Its state (`lastUsed`) belongs in checkpoints.
 */
export class DeadCodeReseeder {
  readonly lastUsed: Int32Array;
  constructor(
    readonly codebookSize: number,
    readonly codeDim: number,
    readonly deadSteps: number,
  ) {
    this.lastUsed = new Int32Array(codebookSize);
  }

  /**
   * Records this step's usage and re-seeds dead codes in `params` (the `vq.codebook` entry at
   * `offset`). Returns how many codes were re-seeded.
   */
  update(params: Float32Array, offset: number, step: number, seed: number, counts: Float32Array, encoderOutputs: Float32Array): number {
    for (let k = 0; k < this.codebookSize; k++) if (counts[k]! > 0) this.lastUsed[k] = step;
    if (this.deadSteps <= 0 || encoderOutputs.length === 0) return 0;
    const rows = encoderOutputs.length / this.codeDim;
    let reseeded = 0;
    for (let k = 0; k < this.codebookSize; k++) {
      if (step - this.lastUsed[k]! < this.deadSteps) continue;
      const r = hashInts(seed, step, k) % rows;
      params.set(encoderOutputs.subarray(r * this.codeDim, (r + 1) * this.codeDim), offset + k * this.codeDim);
      this.lastUsed[k] = step;
      reseeded++;
    }
    return reseeded;
  }
}

/** The tokenizer's parameter layout (no tensors allocated). */
export function vqganLayout(c: ImageTokenizerConfig): ParamLayout {
  const b = new LayoutBuilder();
  const w = { kind: 'normal', std: INIT_STD } as const;
  const z = { kind: 'zeros' } as const;
  const tokens = (c.imageSize / c.patchSize) ** 2;
  const patchDim = c.patchSize * c.patchSize * c.channels;
  const outDim = c.losses.logitLaplace > 0 ? 2 * patchDim : patchDim;
  const de = c.encoder.dModel;
  const dd = c.decoder.dModel;
  b.add('vq.encoder.patch.w', [patchDim, de], w);
  b.add('vq.encoder.patch.b', [de], z);
  if (c.encoderScope !== 'patch') b.add('vq.encoder.pos', [tokens, de], w, { decay: false, embedding: true });
  addStackParams(b, 'vq.encoder', c.encoder);
  b.add('vq.encoder.proj.w', [de, c.codeDim], w);
  b.add('vq.encoder.proj.b', [c.codeDim], z);
  b.add('vq.codebook', [c.codebookSize, c.codeDim], { kind: 'normal', std: 1 }, { decay: false, embedding: true });
  b.add('vq.decoder.proj.w', [c.codeDim, dd], w);
  b.add('vq.decoder.proj.b', [dd], z);
  b.add('vq.decoder.pos', [tokens, dd], w, { decay: false, embedding: true });
  addStackParams(b, 'vq.decoder', c.decoder);
  b.add('vq.decoder.out.w', [dd, outDim], w);
  b.add('vq.decoder.out.b', [outDim], z);
  if (c.losses.adversarial.weight > 0) {
    const h = Math.max(32, Math.min(256, dd));
    b.add('vq.disc.w1', [patchDim, h], w);
    b.add('vq.disc.b1', [h], z);
    b.add('vq.disc.w2', [h, h], w);
    b.add('vq.disc.b2', [h], z);
    b.add('vq.disc.w3', [h, 1], w);
    b.add('vq.disc.b3', [1], z);
  }
  return b.build();
}

/** Loads a tfjs layers model (model.json + weight files) from the local disk. */
async function loadLayersModelFromFile(path: string): Promise<tf.LayersModel> {
  const file = path.replace(/^file:\/\//, '');
  let json: { modelTopology: object; weightsManifest: { paths: string[]; weights: tf.io.WeightsManifestEntry[] }[] };
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new PartiError('config', `model.tokenizer.losses.perceptual.network: cannot read ${file} (${(err as Error).message})`);
  }
  const specs: tf.io.WeightsManifestEntry[] = [];
  const buffers: Uint8Array[] = [];
  for (const group of json.weightsManifest) {
    specs.push(...group.weights);
    for (const p of group.paths) buffers.push(await readFile(join(dirname(file), p)));
  }
  const total = buffers.reduce((n, b) => n + b.length, 0);
  const data = new Uint8Array(total);
  let o = 0;
  for (const b of buffers) {
    data.set(b, o);
    o += b.length;
  }
  const model = await tf.loadLayersModel(tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs: specs, weightData: data.buffer }));
  model.trainable = false;
  return model;
}
