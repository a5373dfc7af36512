import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from './backend.ts';
import { loadConfig } from '../config/load.ts';
import { codebookStats, DeadCodeReseeder, l2Normalize, VitVqgan } from './vit-vqgan.ts';
import { SequentialRandom } from './rng.ts';
import { stopGradient } from './ops.ts';
import { EVAL_CONTEXT } from './transformer.ts';

before(async () => {
  await initBackend('wasm');
});

function smallTokenizer(overrides: Record<string, unknown> = {}) {
  const cfg = loadConfig('configs/tiny.yaml').model.tokenizer;
  return new VitVqgan({
    ...cfg,
    imageSize: 8,
    patchSize: 4,
    encoder: { layers: 1, dModel: 16, heads: 2, mlpRatio: 2, dropout: 0 },
    decoder: { layers: 1, dModel: 16, heads: 2, mlpRatio: 2, dropout: 0 },
    codebookSize: 8,
    codeDim: 4,
    ...overrides,
  });
}

function images(n: number, seed: number): Uint8Array {
  const r = new SequentialRandom(seed);
  return Uint8Array.from({ length: n * 8 * 8 * 3 }, () => Math.floor(r.next() * 256));
}

test('patchify and unpatchify are inverse', () => {
  const vq = smallTokenizer();
  const img = images(2, 1);
  const patches = vq.patchify(img, 2);
  assert.equal(patches.length, 2 * 4 * 48);
  // Patch 1 of image 0 is the top-right 4x4 block: its first pixel is (row 0, col 4).
  assert.equal(patches[48], Math.fround(img[4 * 3]! / 255));
  assert.deepEqual(vq.unpatchify(patches, 2), img);
});

test('the quantizer picks the nearest l2-normalized code', () => {
  const vq = smallTokenizer();
  const params = vq.layout.initialize(4);
  const p = vq.layout.toTensors(params);
  tf.tidy(() => {
    const z = l2Normalize(tf.tensor2d(Float32Array.from({ length: 20 * 4 }, (_, i) => Math.sin(i * 1.7)), [20, 4]));
    const { ids, q } = vq.quantize(p, z);
    const cb = l2Normalize(p.get('vq.codebook')!).arraySync();
    const zs = z.arraySync();
    const got = ids.arraySync();
    zs.forEach((row, i) => {
      const dist = cb.map((c) => c.reduce((s, v, j) => s + (v - row[j]!) ** 2, 0));
      const best = dist.indexOf(Math.min(...dist));
      assert.equal(got[i], best, `row ${i}`);
    });
    const qs = q.arraySync();
    qs.forEach((row, i) => row.forEach((v, j) => assert.ok(Math.abs(v - cb[got[i]!]![j]!) < 1e-6)));
  });
  for (const t of p.values()) t.dispose();
});

test('straight-through: the decoder input gradient reaches the encoder output unchanged', () => {
  const vq = smallTokenizer();
  const p = vq.layout.toTensors(vq.layout.initialize(6));
  tf.tidy(() => {
    const zRaw = tf.tensor2d(Float32Array.from({ length: 8 * 4 }, (_, i) => Math.cos(i)), [8, 4]);
    const weights = tf.tensor2d(Float32Array.from({ length: 8 * 4 }, (_, i) => (i % 5) - 2), [8, 4]);
    const g = tf.grad((z: tf.Tensor) => {
      const { q } = vq.quantize(p, z as tf.Tensor2D);
      const zq = tf.add(z, stopGradient(tf.sub(q, z)));
      return tf.sum(tf.mul(zq, weights)) as tf.Scalar;
    })(zRaw);
    assert.deepEqual(g.arraySync(), weights.arraySync());
  });
  for (const t of p.values()) t.dispose();
});

test("encoderScope 'patch': a patch's lookup vector depends on its own pixels only; 'image' mixes in place and context", () => {
  // One 8x8 image of 4 patches: patch 1 (top right) is a copy of patch 0 (top left); a second
  // image differs from the first only in patch 3.
  const img = images(2, 7);
  const px = (b: number, y: number, x: number) => (b * 64 + y * 8 + x) * 3;
  for (let y = 0; y < 4; y++) img.copyWithin(px(0, y, 4), px(0, y, 0), px(0, y, 4));
  img.copyWithin(px(1, 0, 0), px(0, 0, 0), px(1, 0, 0));
  for (let y = 4; y < 8; y++) for (let x = 4; x < 8; x++) img[px(1, y, x)] = 255 - img[px(1, y, x)]!;
  const latents = (scope: 'image' | 'patch') => {
    const vq = smallTokenizer({ encoderScope: scope });
    assert.equal(vq.layout.entries.some((e) => e.name === 'vq.encoder.pos'), scope === 'image');
    const p = vq.layout.toTensors(vq.layout.initialize(3));
    try {
      return tf.tidy(() => vq.encodeLatents(p, tf.tensor2d(vq.patchify(img, 2), [8, vq.patchDim]), 2, EVAL_CONTEXT).arraySync());
    } finally {
      for (const t of p.values()) t.dispose();
    }
  };
  const maxDiff = (a: number[], b: number[]) => Math.max(...a.map((v, i) => Math.abs(v - b[i]!)));
  const patch = latents('patch');
  assert.ok(maxDiff(patch[0]!, patch[1]!) < 1e-6, 'equal patches at two places: equal vectors');
  for (const i of [0, 1, 2]) assert.ok(maxDiff(patch[i]!, patch[4 + i]!) < 1e-6, `patch ${i} unchanged by patch 3`);
  assert.ok(maxDiff(patch[3]!, patch[7]!) > 1e-3, 'the changed patch itself moves');
  const image = latents('image');
  assert.ok(maxDiff(image[0]!, image[1]!) > 1e-3, "'image': the same patch at another place gets another vector");
  assert.ok(maxDiff(image[0]!, image[4]!) > 1e-3, "'image': another patch of the image moves this one");
});

test('codebook usage and perplexity', () => {
  assert.deepEqual(codebookStats(new Float32Array([5, 5, 0, 0])), { usage: 0.5, perplexity: 2 });
  const uniform = codebookStats(new Float32Array([3, 3, 3, 3]));
  assert.equal(uniform.usage, 1);
  assert.ok(Math.abs(uniform.perplexity - 4) < 1e-12);
});

test('dead codes are re-seeded from encoder outputs, deterministically', () => {
  const run = () => {
    const r = new DeadCodeReseeder(4, 2, 3);
    const params = new Float32Array(10).fill(9); // codebook at offset 2
    const outputs = Float32Array.from([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
    const counts = new Float32Array([1, 0, 0, 1]);
    const n0 = r.update(params, 2, 1, 7, counts, outputs);
    const n1 = r.update(params, 2, 2, 7, counts, outputs);
    const n2 = r.update(params, 2, 3, 7, counts, outputs); // codes 1 and 2 unused since step 0
    return { n: [n0, n1, n2], params };
  };
  const a = run();
  assert.deepEqual(a.n, [0, 0, 2]);
  assert.deepEqual([...a.params.subarray(0, 4)], [9, 9, 9, 9]);
  for (const k of [1, 2]) {
    const row = [...a.params.subarray(2 + k * 2, 4 + k * 2)].map((v) => Math.round(v * 10));
    assert.ok([[1, 2], [3, 4], [5, 6]].some((r) => r[0] === row[0] && r[1] === row[1]), `code ${k} got an encoder output`);
  }
  assert.deepEqual([...a.params.subarray(8, 10)], [9, 9], 'a used code is kept');
  assert.deepEqual(run().params, a.params);
});

test('a training step runs with every optional loss, and encode/decode keep shapes', () => {
  const vq = smallTokenizer({ losses: { l2: 1, logitLaplace: 0.5, adversarial: { weight: 0.1, startStep: 1 }, perceptual: { weight: 0, network: null } } });
  const params = vq.layout.initialize(7);
  const batch = { ids: [0, 1, 2], images: images(3, 8) };
  const before = vq.computeGradients(params, batch, { step: 0, seed: 0 });
  assert.equal(before.metrics.generator, undefined, 'no adversarial loss before startStep');
  const discOffset = vq.layout.get('vq.disc.w1').offset;
  assert.ok(before.grads.subarray(discOffset).every((g) => g === 0));
  const after = vq.computeGradients(params, batch, { step: 1, seed: 0 });
  assert.ok(Number.isFinite(after.loss) && after.metrics.generator! > 0 && after.metrics.logitLaplace !== undefined);
  assert.ok(after.grads.subarray(discOffset).some((g) => g !== 0), 'the discriminator learns after startStep');
  assert.equal(after.aux.codeCounts!.reduce((a, b) => a + b, 0), 3 * vq.tokens);
  const tokens = vq.encode(params, batch.images, 3);
  assert.equal(tokens.length, 3 * vq.tokens);
  assert.ok(tokens.every((t) => t >= 0 && t < 8));
  assert.equal(vq.decode(params, tokens, 3).length, batch.images.length);
});
