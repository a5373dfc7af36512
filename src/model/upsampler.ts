import * as tf from '@tensorflow/tfjs';
import type { UpsamplerConfig } from '../config/upsampler-schema.ts';
import { linear } from './ops.ts';
import { LayoutBuilder, param, type ParamLayout, type ParamTensors } from './param-layout.ts';
import { flatGradients, type GradientOptions, type GradientResult, type Trainable } from './trainable.ts';

/** A batch of the upsampler stage: original (high-resolution) images. */
export interface UpsamplerBatch {
  ids: readonly number[];
  /** [B * S * S * channels] bytes at the training size S. */
  images: Uint8Array;
}

/**
 * The k x k neighbourhoods of x [B, H, W, C] ('same' zero padding) as columns:
 * [k*k*C, B*H*W], rows ordered dy, dx, c (the HWIO filter's flattening). Built channel-major
 * (one transpose of x, then contiguous slices and a concat on axis 0) because transposing the
 * k*k times larger row-major im2col matrix is slow on wasm.
 */
function im2colT(x: tf.Tensor4D, k: number): tf.Tensor2D {
  const [B, H, W, C] = x.shape;
  const r = (k - 1) / 2;
  const xt = tf.pad(tf.transpose(x, [3, 0, 1, 2]), [
    [0, 0],
    [0, 0],
    [r, r],
    [r, r],
  ]);
  const rows: tf.Tensor[] = [];
  for (let dy = 0; dy < k; dy++) for (let dx = 0; dx < k; dx++) rows.push(tf.reshape(tf.slice(xt, [0, 0, dy, dx], [C, B, H, W]), [C, B * H * W]));
  return tf.concat(rows, 0) as tf.Tensor2D;
}

type ConvFn = (x: tf.Tensor4D, w4: tf.Tensor4D) => tf.Tensor4D;

/**
 * Conv2D ('same', odd k, stride 1) with a gradient that avoids the kernels wasm lacks or runs
 * slowly: the input gradient is a tf.conv2d of dy with the filter rotated 180 degrees and its
 * channels swapped (wasm's Conv2DBackpropInput measured ~10x slower than Conv2D), and the
 * filter gradient is im2col(x)^T dy as one NN matmul (wasm has no Conv2DBackpropFilter).
 */
const convSame = tf.customGrad(((x: tf.Tensor4D, w4: tf.Tensor4D, save: tf.GradSaveFunc) => {
  save([x, w4]);
  return {
    value: tf.conv2d(x, w4, 1, 'same'),
    gradFunc: (dy: tf.Tensor4D, [sx, sw]: tf.Tensor[]) => {
      const xs = sx as tf.Tensor4D;
      const ws = sw as tf.Tensor4D;
      const [k, , cin, cout] = ws.shape;
      const flipped = tf.transpose(tf.reverse(ws, [0, 1]), [0, 1, 3, 2]) as tf.Tensor4D;
      const dx = tf.conv2d(dy, flipped, 1, 'same');
      const dw = tf.reshape(tf.matMul(im2colT(xs, k), tf.reshape(dy, [-1, cout]) as tf.Tensor2D), [k, k, cin, cout]);
      return [dx, dw];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as ConvFn;

/**
 * 'same'-padded stride-1 convolution x [B, H, W, Cin] with w [k*k*Cin, Cout] (rows ordered
 * dy, dx, cin: the HWIO filter flattened) and bias b [Cout].
 *
 * This is the one place that works around the wasm backend's convolution gaps: wasm registers
 * Conv2D and Conv2DBackpropInput but not Conv2DBackpropFilter, so tf.conv2d's own gradient
 * fails there. `convSame` supplies both gradients from fast kernels (see there). Measured on
 * [8, 32, 32, 16] x 3x3x16x64: a pure im2col convolution (slices, concat, matmul) took 4x the
 * forward time of tf.conv2d and 25x its input-gradient time.
 */
export function conv2dSame(x: tf.Tensor4D, w: tf.Tensor, b: tf.Tensor, k: number): tf.Tensor4D {
  const [B, H, W, C] = x.shape;
  const cout = w.shape[1]!;
  if (k === 1) return tf.reshape(linear(tf.reshape(x, [B * H * W, C]), w, b), [B, H, W, cout]);
  return tf.add(convSame(x, tf.reshape(w, [k, k, C, cout]) as tf.Tensor4D), b) as tf.Tensor4D;
}

/** Pixel shuffle [B, H, W, r*r*C] -> [B, H*r, W*r, C] (tf.depthToSpace's channel order), by reshape and transpose. */
export function pixelShuffle(x: tf.Tensor4D, r: number): tf.Tensor4D {
  const [B, H, W, D] = x.shape;
  const C = D / (r * r);
  return tf.reshape(tf.transpose(tf.reshape(x, [B, H, W, r, r, C]), [0, 1, 3, 2, 4, 5]), [B, H * r, W * r, C]);
}

/** Box-filter downsampling of square images by an integer factor, on the host (deterministic). */
export function downsample(images: Uint8Array, B: number, size: number, channels: number, factor: number): Uint8Array {
  const s = size / factor;
  const out = new Uint8Array(B * s * s * channels);
  const n = factor * factor;
  for (let b = 0; b < B; b++)
    for (let y = 0; y < s; y++)
      for (let x = 0; x < s; x++)
        for (let c = 0; c < channels; c++) {
          let acc = 0;
          for (let dy = 0; dy < factor; dy++)
            for (let dx = 0; dx < factor; dx++) acc += images[((b * size + y * factor + dy) * size + x * factor + dx) * channels + c]!;
          out[((b * s + y) * s + x) * channels + c] = Math.round(acc / n);
        }
  return out;
}

/**
 * Parti's super-resolution stage at our scale: a WDSR-A network (Yu et al., 2018). The image,
 * scaled to [-1, 1], goes through a 3x3 head convolution, `blocks` residual blocks
 * (x + residualScale * conv3x3(ReLU(conv3x3(x) to filters*expansion channels)) back to filters),
 * a 3x3 tail convolution to scale^2 * channels and a pixel shuffle; a 5x5 convolution of the input,
 * pixel-shuffled the same way, is added as the global skip. Everything runs at the low
 * resolution until the shuffles. No text input.
 *
 * Loss per image (summed over images): l2 * mean squared error on the [-1, 1] scale, the
 * tokenizer's reconstruction loss (`model.tokenizer.losses.l2`).
 *
 * Parameter names: `up.head.{w,b}`, `up.block.{i}.{w1,b1,w2,b2}`, `up.tail.{w,b}`, `up.skip.{w,b}`.
 */
export class Upsampler implements Trainable<UpsamplerBatch> {
  readonly layout: ParamLayout;

  constructor(
    readonly config: UpsamplerConfig,
    readonly channels: number,
    /** Weight of the squared error (the tokenizer's `losses.l2`). */
    readonly l2Weight = 1,
  ) {
    this.layout = upsamplerLayout(config, channels);
  }

  /**
   * Fresh parameters: the layout's random init, with the skip convolution set to copy each input
   * pixel into its scale x scale block, so that an untrained upsampler is nearest-neighbour
   * enlargement and training learns the residual detail.
   */
  initialize(seed: number): Float32Array {
    const params = this.layout.initialize(seed);
    const w = this.layout.get('up.skip.w');
    const C = this.channels;
    const r2 = this.config.scale * this.config.scale;
    const cols = r2 * C;
    const center = 12; // tap (2, 2) of the 5x5 kernel
    for (let c = 0; c < C; c++) for (let s = 0; s < r2; s++) params[w.offset + (center * C + c) * cols + s * C + c] = 1;
    return params;
  }

  /** Low-resolution images in [0, 1], [B, h, w, C] -> high-resolution images in about [0, 1]. */
  forward(p: ParamTensors, lr: tf.Tensor4D): tf.Tensor4D {
    const c = this.config;
    const x = tf.sub(tf.mul(lr, 2), 1) as tf.Tensor4D;
    let h = conv2dSame(x, param(p, 'up.head.w'), param(p, 'up.head.b'), 3);
    for (let i = 0; i < c.blocks; i++) {
      const a = tf.relu(conv2dSame(h, param(p, `up.block.${i}.w1`), param(p, `up.block.${i}.b1`), 3)) as tf.Tensor4D;
      const r = conv2dSame(a, param(p, `up.block.${i}.w2`), param(p, `up.block.${i}.b2`), 3);
      h = tf.add(h, c.residualScale === 1 ? r : tf.mul(r, c.residualScale)) as tf.Tensor4D;
    }
    const body = pixelShuffle(conv2dSame(h, param(p, 'up.tail.w'), param(p, 'up.tail.b'), 3), c.scale);
    const skip = pixelShuffle(conv2dSame(x, param(p, 'up.skip.w'), param(p, 'up.skip.b'), 5), c.scale);
    return tf.div(tf.add(tf.add(body, skip), 1), 2) as tf.Tensor4D;
  }

  /** Sum over images of l2 * mean squared error ([-1, 1] scale) against the originals. */
  loss(p: ParamTensors, hr: Uint8Array, B: number, size: number): tf.Scalar {
    const C = this.channels;
    const s = size / this.config.scale;
    const lr = downsample(hr, B, size, C, this.config.scale);
    const input = tf.div(tf.tensor4d(lr, [B, s, s, C], 'int32'), 255) as tf.Tensor4D;
    const target = tf.div(tf.tensor4d(hr, [B, size, size, C], 'int32'), 255);
    const out = this.forward(p, input);
    const se = tf.sum(tf.mul(tf.square(tf.sub(out, target)), 4));
    return tf.mul(tf.div(se, size * size * C), this.l2Weight) as tf.Scalar;
  }

  computeGradients(params: Float32Array, batch: UpsamplerBatch, opts: GradientOptions): GradientResult {
    void opts;
    const B = batch.ids.length;
    const size = Math.round(Math.sqrt(batch.images.length / (B * this.channels)));
    const { loss, grads } = flatGradients(this.layout, params, (p) => this.loss(p, batch.images, B, size));
    return { loss, grads, samples: B, tokens: B * size * size, metrics: {}, aux: {} };
  }

  /** Enlarges B square images [B * s * s * C] bytes to [B * (s*scale)^2 * C] bytes. */
  upsample(params: Float32Array, images: Uint8Array, B: number, size: number): Uint8Array {
    const C = this.channels;
    const p = this.layout.toTensors(params);
    try {
      const out = tf.tidy(() => {
        const x = tf.div(tf.tensor4d(images, [B, size, size, C], 'int32'), 255) as tf.Tensor4D;
        return tf.round(tf.mul(tf.clipByValue(this.forward(p, x), 0, 1), 255));
      });
      const data = out.dataSync();
      out.dispose();
      return Uint8Array.from(data);
    } finally {
      for (const t of p.values()) t.dispose();
    }
  }
}

/** The upsampler's parameter layout (no tensors allocated). He init for the ReLU convolutions. */
export function upsamplerLayout(c: UpsamplerConfig, channels: number): ParamLayout {
  const b = new LayoutBuilder();
  const F = c.filters;
  const E = F * c.expansion;
  const out = c.scale * c.scale * channels;
  const he = (fanIn: number) => ({ kind: 'normal', std: Math.sqrt(2 / fanIn) }) as const;
  const z = { kind: 'zeros' } as const;
  b.add('up.head.w', [9 * channels, F], he(9 * channels));
  b.add('up.head.b', [F], z);
  for (let i = 0; i < c.blocks; i++) {
    b.add(`up.block.${i}.w1`, [9 * F, E], he(9 * F));
    b.add(`up.block.${i}.b1`, [E], z);
    // Small last layer of each residual branch: the body starts near the identity.
    b.add(`up.block.${i}.w2`, [9 * E, F], { kind: 'normal', std: 0.1 * Math.sqrt(1 / (9 * E)) });
    b.add(`up.block.${i}.b2`, [F], z);
  }
  b.add('up.tail.w', [9 * F, out], { kind: 'normal', std: 1e-3 });
  b.add('up.tail.b', [out], z);
  b.add('up.skip.w', [25 * channels, out], z);
  b.add('up.skip.b', [out], z);
  return b.build();
}
