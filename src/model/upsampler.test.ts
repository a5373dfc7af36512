import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from './backend.ts';
import { conv2dSame, downsample, pixelShuffle, Upsampler } from './upsampler.ts';
import { upsamplerSchema } from '../config/upsampler-schema.ts';
import { createOptimizer } from './optimizer.ts';
import { shapesSample } from '../data/shapes.ts';

await initBackend('wasm');

function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
}

/** A plain JavaScript 'same' convolution, the reference. */
function naiveConv(x: number[][][][], w: number[][], b: number[], k: number): number[][][][] {
  const r = (k - 1) / 2;
  const C = x[0]![0]![0]!.length;
  return x.map((img) =>
    img.map((row, y) =>
      row.map((_, xx) =>
        b.map((bo, o) => {
          let acc = bo;
          for (let dy = 0; dy < k; dy++)
            for (let dx = 0; dx < k; dx++)
              for (let c = 0; c < C; c++) acc += (img[y + dy - r]?.[xx + dx - r]?.[c] ?? 0) * w[(dy * k + dx) * C + c]![o]!;
          return acc;
        }),
      ),
    ),
  );
}

test('conv2dSame computes the same-padded convolution (3x3 and 5x5, non-square)', () => {
  for (const k of [3, 5]) {
    tf.tidy(() => {
      const x = tf.randomNormal([2, 6, 5, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
      const w = tf.randomNormal([k * k * 3, 4], 0, 1, 'float32', 2);
      const b = tf.randomNormal([4], 0, 1, 'float32', 3);
      const ref = naiveConv(x.arraySync(), w.arraySync() as number[][], b.arraySync() as number[], k);
      assert.ok(maxAbsDiff(conv2dSame(x, w, b, k), tf.tensor(ref)) < 1e-4, `k=${k}`);
    });
  }
});

test('pixelShuffle matches tf.depthToSpace', () => {
  tf.tidy(() => {
    const x = tf.randomNormal([2, 3, 4, 4 * 3], 0, 1, 'float32', 4) as tf.Tensor4D;
    assert.equal(maxAbsDiff(pixelShuffle(x, 2), tf.depthToSpace(x, 2)), 0);
  });
});

test('conv2dSame gradients (input and filter) match finite differences on wasm', () => {
  for (const k of [3, 5]) {
    tf.tidy(() => {
      const x = tf.randomNormal([2, 5, 4, 2], 0, 1, 'float32', 5) as tf.Tensor4D;
      const w = tf.randomNormal([k * k * 2, 3], 0, 1, 'float32', 6);
      const b = tf.zeros([3]);
      const probe = tf.randomNormal([2, 5, 4, 3], 0, 1, 'float32', 7);
      const f = (x: tf.Tensor, w: tf.Tensor) => tf.sum(tf.mul(tf.square(conv2dSame(x as tf.Tensor4D, w, b, k)), probe));
      const [gx, gw] = tf.grads(f)([x, w]);
      const eps = 1e-2;
      const check = (g: tf.Tensor, t: tf.Tensor, which: 0 | 1, index: number) => {
        const flat = t.dataSync().slice();
        const at = (d: number) => {
          const v = flat.slice();
          v[index] = v[index]! + d;
          const moved = tf.tensor(v, t.shape);
          return (which === 0 ? f(moved, w) : f(x, moved)).dataSync()[0]!;
        };
        const fd = (at(eps) - at(-eps)) / (2 * eps);
        const an = g.dataSync()[index]!;
        assert.ok(Math.abs(an - fd) < 2e-2 * Math.max(1, Math.abs(fd)), `k=${k} ${which ? 'filter' : 'input'}[${index}]: ${an} vs ${fd}`);
      };
      for (const i of [0, 7, 21, 38]) check(gx!, x, 0, i);
      for (const i of [0, 5, 17, k * k * 6 - 1]) check(gw!, w, 1, i);
    });
  }
});

test('downsample averages blocks', () => {
  const img = Uint8Array.from([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150]);
  assert.deepEqual([...downsample(img, 1, 4, 1, 2)], [25, 45, 105, 125]);
});

const config = upsamplerSchema.parse({ scale: 2, filters: 8, blocks: 2, expansion: 2 });

test('an untrained upsampler enlarges by nearest neighbour', () => {
  const up = new Upsampler(config, 3);
  const params = up.initialize(0);
  const img = shapesSample(3, { seed: 0, imageSize: 8 }).image;
  const out = up.upsample(params, img, 1, 8);
  assert.equal(out.length, 16 * 16 * 3);
  let worst = 0;
  for (let y = 0; y < 16; y++)
    for (let x = 0; x < 16; x++)
      for (let c = 0; c < 3; c++) worst = Math.max(worst, Math.abs(out[(y * 16 + x) * 3 + c]! - img[((y >> 1) * 8 + (x >> 1)) * 3 + c]!));
  // The residual body starts small, not zero.
  assert.ok(worst <= 8, `worst pixel difference ${worst}`);
});

test('training the upsampler on (downsampled, original) shapes lowers the loss', () => {
  const up = new Upsampler(config, 3);
  const params = up.initialize(1);
  const opt = createOptimizer({ type: 'adamw', lr: 3e-3, beta1: 0.9, beta2: 0.98, eps: 1e-8, weightDecay: 0 }, up.layout);
  const B = 4;
  const images = new Uint8Array(B * 16 * 16 * 3);
  for (let i = 0; i < B; i++) images.set(shapesSample(i, { seed: 0, imageSize: 16 }).image, i * 16 * 16 * 3);
  const batch = { ids: [0, 1, 2, 3], images };
  const losses: number[] = [];
  for (let step = 0; step < 25; step++) {
    const r = up.computeGradients(params, batch, { step, seed: 0 });
    losses.push(r.loss / B);
    opt.update(params, r.grads, { lr: 3e-3, gradScale: 1 / B });
  }
  assert.ok(losses.every(Number.isFinite));
  assert.ok(losses.at(-1)! < 0.8 * losses[0]!, `loss ${losses[0]} -> ${losses.at(-1)}`);
});
