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

test('conv2dSame matches tf.conv2d with same padding (3x3 and 5x5)', () => {
  for (const k of [3, 5]) {
    tf.tidy(() => {
      const x = tf.randomNormal([2, 6, 5, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
      const f = tf.randomNormal([k, k, 3, 4], 0, 1, 'float32', 2) as tf.Tensor4D;
      const b = tf.randomNormal([4], 0, 1, 'float32', 3);
      const ours = conv2dSame(x, tf.reshape(f, [k * k * 3, 4]), b, k);
      const ref = tf.add(tf.conv2d(x, f, 1, 'same'), b);
      assert.ok(maxAbsDiff(ours, ref) < 1e-4, `k=${k}`);
    });
  }
});

test('pixelShuffle matches tf.depthToSpace', () => {
  tf.tidy(() => {
    const x = tf.randomNormal([2, 3, 4, 4 * 3], 0, 1, 'float32', 4) as tf.Tensor4D;
    assert.equal(maxAbsDiff(pixelShuffle(x, 2), tf.depthToSpace(x, 2)), 0);
  });
});

test('conv2dSame trains on wasm (gradient wrt the filter, which tf.conv2d lacks there)', () => {
  const g = tf.tidy(() => {
    const x = tf.randomNormal([1, 4, 4, 2], 0, 1, 'float32', 5) as tf.Tensor4D;
    const w = tf.randomNormal([18, 3], 0, 1, 'float32', 6);
    const b = tf.zeros([3]);
    const f = (w: tf.Tensor) => tf.sum(tf.square(conv2dSame(x, w, b, 3)));
    const grad = tf.grad(f)(w);
    // Finite difference on one weight.
    const eps = 1e-2;
    const bump = tf.tensor2d([[eps]]);
    const wp = tf.add(w, tf.pad(bump, [[4, 13], [1, 1]]));
    const wm = tf.sub(w, tf.pad(bump, [[4, 13], [1, 1]]));
    const fd = (f(wp).dataSync()[0]! - f(wm).dataSync()[0]!) / (2 * eps);
    return [grad.arraySync() as number[][], fd] as const;
  });
  const [grad, fd] = g;
  assert.ok(Math.abs(grad[4]![1]! - fd) < 1e-2 * Math.max(1, Math.abs(fd)), `${grad[4]![1]} vs ${fd}`);
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
