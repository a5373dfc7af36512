import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { PartiError } from '../errors.ts';
import { SeededRandom } from '../data/seeded-random.ts';
import { crossEntropy, gelu, linear } from '../model/ops.ts';
import { SequentialRandom } from '../model/rng.ts';
import { labelSchemeFromJSON, type LabelScheme, type LabelSchemeJson } from './label-scheme.ts';
import { tracer } from '../observability/log.ts';

const trace = tracer('eval');

/**
 * The evaluation probe: a small image classifier that predicts what a caption says (see
 * label-scheme.ts) from the image alone, and whose penultimate layer is the feature space of FID.
 *
 * Architecture (written with ../model/ops.ts so its matmuls and GELU stay on wasm's fast kernels):
 * the image in an 8x8 grid of non-overlapping patches, each patch embedded by one shared linear
 * layer + GELU (a strided convolution without conv kernels, whose gradients wasm lacks), the
 * embeddings flattened (so position is kept), two dense layers + GELU (the second is the feature
 * layer), and one linear layer holding every head's logits.
 */
export interface ProbeShape {
  imageSize: number;
  /** Patches per side (imageSize must be a multiple). */
  grid: number;
  /** Width of the patch embedding. */
  patchDim: number;
  hidden: number;
  /** Width of the penultimate (feature) layer. */
  features: number;
}

/** Options of trainProbe. All but the data have defaults. */
export interface ProbeTrainOptions {
  /** Passes over the training images (default 12). */
  epochs?: number;
  /** Images per step (default 64). */
  batchSize?: number;
  /** Adam learning rate (default 2e-3, halved for the last third of the epochs). */
  lr?: number;
  /** Seeds initialization, shuffling and the noise augmentation (default 0). */
  seed?: number;
  /** Standard deviation of Gaussian pixel noise added in training, in [0, 1] pixel units (default 0.03). */
  noise?: number;
  /** Width of the feature layer (default 64). */
  features?: number;
  /** Called after each epoch with its mean loss. */
  onEpoch?: (epoch: number, loss: number) => void;
}

/** Labelled images: RGB bytes, imageSize^2 * 3 each, and one class index per head. */
export interface LabelledImages {
  images: readonly Uint8Array[];
  labels: readonly (readonly number[])[];
}

/** What the probe says about a batch of images. */
export interface ProbePrediction {
  /** [image][head] predicted class. */
  classes: number[][];
  /** Feature layer, [images * features] row-major. */
  features: Float32Array;
}

const probeJsonSchema = z.object({
  format: z.literal('parti-probe/1'),
  shape: z.object({
    imageSize: z.number().int(),
    grid: z.number().int(),
    patchDim: z.number().int(),
    hidden: z.number().int(),
    features: z.number().int(),
  }),
  scheme: z.union([z.object({ kind: z.literal('shapes') }), z.object({ kind: z.literal('phrase'), phrases: z.array(z.string()) })]),
  /** Distinct captions of the images it was trained on (the held-out check uses them). */
  trainCaptions: z.array(z.string()),
  params: z.number().int(),
  /** Free-form facts about its training (data URL, samples, accuracy on held-out real images). */
  info: z.record(z.string(), z.unknown()),
});

interface ParamSpec {
  name: string;
  shape: number[];
}

function paramSpecs(s: ProbeShape, outputs: number): ParamSpec[] {
  const patchIn = (s.imageSize / s.grid) ** 2 * 3;
  return [
    { name: 'patch.w', shape: [patchIn, s.patchDim] },
    { name: 'patch.b', shape: [s.patchDim] },
    { name: 'hidden.w', shape: [s.grid * s.grid * s.patchDim, s.hidden] },
    { name: 'hidden.b', shape: [s.hidden] },
    { name: 'features.w', shape: [s.hidden, s.features] },
    { name: 'features.b', shape: [s.features] },
    { name: 'heads.w', shape: [s.features, outputs] },
    { name: 'heads.b', shape: [outputs] },
  ];
}

/** The probe's shape for an image size: 8x8 patches (or 4x4 below 32 px, or 1 patch per pixel for odd sizes). */
export function probeShapeFor(imageSize: number, features = 64): ProbeShape {
  const grid = imageSize % 8 === 0 ? 8 : imageSize % 4 === 0 ? 4 : imageSize;
  return { imageSize, grid, patchDim: 32, hidden: 256, features };
}

export class Probe {
  readonly outputs: number;
  private readonly specs: ParamSpec[];
  /** Parameters, uploaded on first use. */
  private tensors: Map<string, tf.Tensor> | null = null;

  constructor(
    readonly shape: ProbeShape,
    readonly scheme: LabelScheme,
    /** All parameters, concatenated in spec order. */
    readonly params: Float32Array,
    readonly trainCaptions: readonly string[],
    readonly info: Record<string, unknown> = {},
  ) {
    this.outputs = scheme.heads.reduce((n, h) => n + h.classes.length, 0);
    this.specs = paramSpecs(shape, this.outputs);
    const total = this.specs.reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
    if (params.length !== total) throw new PartiError('checkpoint', `probe: ${params.length} parameters, the shape needs ${total}`);
  }

  /** A freshly initialized probe (He-scaled normal weights, zero biases), deterministic from the seed. */
  static init(shape: ProbeShape, scheme: LabelScheme, seed: number): Probe {
    const outputs = scheme.heads.reduce((n, h) => n + h.classes.length, 0);
    const specs = paramSpecs(shape, outputs);
    const total = specs.reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
    const params = new Float32Array(total);
    const rng = new SequentialRandom(seed ^ 0x70b3);
    let o = 0;
    for (const s of specs) {
      const n = s.shape.reduce((a, b) => a * b, 1);
      if (s.shape.length === 2) {
        const std = Math.sqrt(2 / s.shape[0]!);
        for (let i = 0; i < n; i++) params[o + i] = rng.normal() * std;
      }
      o += n;
    }
    return new Probe(shape, scheme, params, []);
  }

  /** Image bytes -> patch rows [B * grid^2, patch^2 * 3] in [-0.5, 0.5], plus optional noise. */
  patchify(images: readonly Uint8Array[], noise = 0, rng?: SequentialRandom): Float32Array {
    const { imageSize: S, grid: G } = this.shape;
    const P = S / G;
    const row = P * P * 3;
    const out = new Float32Array(images.length * G * G * row);
    images.forEach((img, b) => {
      if (img.length !== S * S * 3) throw new PartiError('data', `probe: image ${b} has ${img.length} bytes, expected ${S}x${S}x3 = ${S * S * 3}`);
      for (let gy = 0; gy < G; gy++)
        for (let gx = 0; gx < G; gx++) {
          let o = ((b * G + gy) * G + gx) * row;
          for (let y = 0; y < P; y++)
            for (let x = 0; x < P; x++) {
              const p = ((gy * P + y) * S + gx * P + x) * 3;
              for (let c = 0; c < 3; c++) out[o++] = img[p + c]! / 255 - 0.5 + (noise > 0 ? rng!.normal() * noise : 0);
            }
        }
    });
    return out;
  }

  private forward(p: ReadonlyMap<string, tf.Tensor>, patches: tf.Tensor2D, B: number): { features: tf.Tensor2D; logits: tf.Tensor2D } {
    const { grid: G, patchDim } = this.shape;
    const e = gelu(linear(patches, p.get('patch.w')!, p.get('patch.b')!));
    const h = gelu(linear(tf.reshape(e, [B, G * G * patchDim]), p.get('hidden.w')!, p.get('hidden.b')!));
    const features = gelu(linear(h, p.get('features.w')!, p.get('features.b')!)) as tf.Tensor2D;
    return { features, logits: linear(features, p.get('heads.w')!, p.get('heads.b')!) };
  }

  /** The parameters as tensors by name (the caller disposes them). */
  uploadParams(): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    let o = 0;
    for (const s of this.specs) {
      const n = s.shape.reduce((a, b) => a * b, 1);
      out.set(s.name, tf.tensor(this.params.subarray(o, o + n), s.shape, 'float32'));
      o += n;
    }
    return out;
  }

  /** Sum over heads of the mean cross-entropy of a batch (labels [B * heads]), for training. */
  batchLoss(p: ReadonlyMap<string, tf.Tensor>, patches: tf.Tensor2D, B: number, labels: Int32Array): tf.Scalar {
    const { logits } = this.forward(p, patches, B);
    let start = 0;
    let total: tf.Scalar = tf.scalar(0);
    this.scheme.heads.forEach((h, k) => {
      const part = tf.slice(logits, [0, start], [B, h.classes.length]) as tf.Tensor2D;
      const t = new Int32Array(B);
      for (let b = 0; b < B; b++) t[b] = labels[b * this.scheme.heads.length + k]!;
      total = tf.add(total, tf.mean(crossEntropy(part, tf.tensor1d(t, 'int32'))));
      start += h.classes.length;
    });
    return total;
  }

  /** Predicted classes per head and feature vectors of images, `chunk` at a time. */
  predict(images: readonly Uint8Array[], chunk = 256): ProbePrediction {
    this.tensors ??= this.uploadParams();
    const p = this.tensors;
    const F = this.shape.features;
    const classes: number[][] = [];
    const features = new Float32Array(images.length * F);
    for (let s = 0; s < images.length; s += chunk) {
      const part = images.slice(s, s + chunk);
      const B = part.length;
      const rows = this.patchify(part);
      const [feat, logits] = tf.tidy(() => {
        const patchIn = rows.length / (B * this.shape.grid * this.shape.grid);
        const out = this.forward(p, tf.tensor2d(rows, [B * this.shape.grid * this.shape.grid, patchIn]), B);
        return [out.features, out.logits];
      });
      features.set(feat!.dataSync() as Float32Array, s * F);
      const l = logits!.dataSync() as Float32Array;
      tf.dispose([feat!, logits!]);
      for (let b = 0; b < B; b++) {
        const row: number[] = [];
        let start = 0;
        for (const h of this.scheme.heads) {
          let best = 0;
          for (let c = 1; c < h.classes.length; c++) if (l[b * this.outputs + start + c]! > l[b * this.outputs + start + best]!) best = c;
          row.push(best);
          start += h.classes.length;
        }
        classes.push(row);
      }
    }
    return { classes, features };
  }

  /** Frees the uploaded parameters. */
  dispose(): void {
    if (this.tensors) for (const t of this.tensors.values()) t.dispose();
    this.tensors = null;
  }

  /** Writes probe.json and probe.bin into `dir`. */
  async save(dir: string): Promise<void> {
    await mkdir(dir, { recursive: true });
    const json = {
      format: 'parti-probe/1' as const,
      shape: this.shape,
      scheme: this.scheme.toJSON(),
      trainCaptions: [...this.trainCaptions],
      params: this.params.length,
      info: this.info,
    };
    await writeFile(join(dir, 'probe.bin'), Buffer.from(this.params.buffer, this.params.byteOffset, this.params.byteLength));
    await writeFile(join(dir, 'probe.json'), `${JSON.stringify(json, null, 2)}\n`);
  }

  /** Reads a probe saved by `save`; a missing or foreign one is a PartiError('checkpoint'). */
  static async load(dir: string): Promise<Probe> {
    let raw: unknown;
    try {
      raw = JSON.parse(await readFile(join(dir, 'probe.json'), 'utf8'));
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no probe.json (make one with parti eval train-probe)' : (err as Error).message;
      throw new PartiError('checkpoint', `${dir}: not a probe (${why})`);
    }
    const parsed = probeJsonSchema.safeParse(raw);
    if (!parsed.success) throw new PartiError('checkpoint', `${dir}/probe.json: not a parti probe (${parsed.error.issues[0]?.message ?? 'invalid'})`);
    const bin = await readFile(join(dir, 'probe.bin')).catch(() => {
      throw new PartiError('checkpoint', `${dir}: probe.bin missing`);
    });
    if (bin.byteLength !== parsed.data.params * 4) throw new PartiError('checkpoint', `${dir}/probe.bin: ${bin.byteLength} bytes, expected ${parsed.data.params * 4}`);
    const params = new Float32Array(bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength));
    return new Probe(parsed.data.shape, labelSchemeFromJSON(parsed.data.scheme as LabelSchemeJson), params, parsed.data.trainCaptions, parsed.data.info);
  }
}

/**
 * Trains a probe on labelled images with Adam (deterministic for a seed on one backend) and
 * returns it. Images whose label row is missing are the caller's to drop first.
 */
export function trainProbe(scheme: LabelScheme, data: LabelledImages, imageSize: number, opts: ProbeTrainOptions = {}): Probe {
  const n = data.images.length;
  if (n === 0) throw new PartiError('data', 'probe: no labelled images to train on');
  const epochs = opts.epochs ?? 12;
  const batch = Math.min(opts.batchSize ?? 64, n);
  const seed = opts.seed ?? 0;
  const noise = opts.noise ?? 0.03;
  const shape = probeShapeFor(imageSize, opts.features ?? 64);
  const probe = Probe.init(shape, scheme, seed);
  const H = scheme.heads.length;
  const specs = paramSpecs(shape, probe.outputs);
  const init = probe.uploadParams();
  const vars = new Map<string, tf.Variable>();
  for (const s of specs) {
    vars.set(s.name, tf.variable(init.get(s.name)!, true));
    init.get(s.name)!.dispose();
  }
  const lr = opts.lr ?? 2e-3;
  const optimizer = tf.train.adam(lr);
  const order = Array.from({ length: n }, (_, i) => i);
  const shuffler = new SeededRandom(seed + 1);
  const noiseRng = new SequentialRandom(seed + 2);
  const G2 = shape.grid * shape.grid;
  const patchIn = (shape.imageSize / shape.grid) ** 2 * 3;
  try {
    for (let epoch = 0; epoch < epochs; epoch++) {
      if (epoch === Math.floor((epochs * 2) / 3)) (optimizer as unknown as { learningRate: number }).learningRate = lr / 2;
      shuffler.shuffle(order);
      let sum = 0;
      let steps = 0;
      for (let s = 0; s + batch <= n; s += batch) {
        const idx = order.slice(s, s + batch);
        const rows = probe.patchify(
          idx.map((i) => data.images[i]!),
          noise,
          noiseRng,
        );
        const labels = new Int32Array(batch * H);
        idx.forEach((i, b) => labels.set(data.labels[i]!, b * H));
        const cost = optimizer.minimize(
          () => probe.batchLoss(vars, tf.tensor2d(rows, [batch * G2, patchIn]), batch, labels),
          true,
          [...vars.values()],
        );
        sum += cost!.dataSync()[0]!;
        cost!.dispose();
        steps++;
      }
      trace('probe epoch', { epoch, loss: sum / Math.max(1, steps) });
      opts.onEpoch?.(epoch, sum / Math.max(1, steps));
    }
    let o = 0;
    for (const s of specs) {
      const v = vars.get(s.name)!.dataSync() as Float32Array;
      probe.params.set(v, o);
      o += v.length;
    }
  } finally {
    for (const v of vars.values()) v.dispose();
    optimizer.dispose();
  }
  return probe;
}
