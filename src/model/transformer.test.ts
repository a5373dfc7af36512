import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from './backend.ts';
import { batchMatmul, crossEntropy, embed, gelu, layerNorm, linear, splitHeadBlocks, sumRows, transpose2d } from './ops.ts';
import { LayoutBuilder } from './param-layout.ts';
import { addBlockParams, block, causalBias, dropout, EVAL_CONTEXT, type ForwardContext } from './transformer.ts';
import { PartiModel } from './parti.ts';
import { loadConfig } from '../config/load.ts';
import { SequentialRandom } from './rng.ts';

before(async () => {
  await initBackend('wasm');
});

function randomArray(n: number, seed: number, scale = 1): Float32Array {
  const r = new SequentialRandom(seed);
  return Float32Array.from({ length: n }, () => r.normal() * scale);
}

/**
 * Compares tfjs's gradient of f with central finite differences at a few coordinates of each
 * input. float32 forward passes: eps 3e-3 and a 2% tolerance.
 */
function checkGradients(name: string, f: (...xs: tf.Tensor[]) => tf.Scalar, inputs: tf.Tensor[], probes = 6): void {
  const grads = tf.grads(f)(inputs).map((g) => g.dataSync());
  inputs.forEach((x, k) => {
    const base = x.dataSync();
    for (let p = 0; p < probes; p++) {
      const i = Math.floor(((p + 0.5) / probes) * base.length);
      const at = (delta: number) => {
        const v = Float32Array.from(base);
        v[i] = v[i]! + delta;
        const xs = inputs.map((y, j) => (j === k ? tf.tensor(v, y.shape) : y));
        return f(...xs).dataSync()[0]!;
      };
      const eps = 3e-3;
      const numeric = (at(eps) - at(-eps)) / (2 * eps);
      const analytic = grads[k]![i]!;
      assert.ok(
        Math.abs(numeric - analytic) <= 2e-2 * Math.max(1, Math.abs(numeric)),
        `${name}: input ${k} element ${i}: analytic ${analytic} vs numeric ${numeric}`,
      );
    }
  });
}

test('layer output shapes', () => {
  tf.tidy(() => {
    const x = tf.tensor2d(randomArray(6 * 8, 1), [6, 8]);
    assert.deepEqual(linear(x, tf.zeros([8, 5]), tf.zeros([5])).shape, [6, 5]);
    assert.deepEqual(layerNorm(x, tf.ones([8]), tf.zeros([8])).shape, [6, 8]);
    assert.deepEqual(embed(tf.tensor1d([0, 3, 2], 'int32'), tf.zeros([4, 8])).shape, [3, 8]);
    assert.deepEqual(batchMatmul(tf.zeros([3, 4, 5]), tf.zeros([3, 5, 2])).shape, [3, 4, 2]);
    assert.deepEqual(crossEntropy(tf.zeros([6, 7]) as tf.Tensor2D, tf.tensor1d([0, 1, 2, 3, 4, 5], 'int32')).shape, [6]);
    // A decoder block: B=2, T=3, D=8, 2 heads, cross-attending to 4 memory rows of width 6.
    const b = new LayoutBuilder();
    addBlockParams(b, 'blk', { layers: 1, dModel: 8, heads: 2, mlpRatio: 4, dropout: 0 }, 6);
    const layout = b.build();
    const p = layout.toTensors(layout.initialize(1));
    const mem = tf.tensor2d(randomArray(2 * 4 * 6, 2), [8, 6]);
    const xkv = {
      kT: tf.reshape(tf.transpose(tf.reshape(linear(mem, p.get('blk.xattn.wkv')!).slice([0, 0], [8, 8]), [2, 4, 2, 4]), [0, 2, 3, 1]), [4, 4, 4]) as tf.Tensor3D,
      v: tf.zeros([4, 4, 4]) as tf.Tensor3D,
    };
    const r = block(p, 'blk', x, { B: 2, T: 3, H: 2, dropout: 0, ctx: EVAL_CONTEXT, selfBias: causalBias(3), cross: xkv, returnCrossAttention: true });
    assert.deepEqual(r.y.shape, [6, 8]);
    assert.deepEqual(r.selfKV.kT.shape, [4, 4, 3]);
    assert.deepEqual(r.crossProbs!.shape, [2, 2, 3, 4]);
    for (const t of p.values()) t.dispose();
  });
});

test('gradients of small layers match finite differences', () => {
  tf.tidy(() => {
    const x = tf.tensor2d(randomArray(4 * 3, 3), [4, 3]);
    const w = tf.tensor2d(randomArray(3 * 5, 4), [3, 5]);
    const bias = tf.tensor1d(randomArray(5, 5));
    const target = tf.tensor2d(randomArray(4 * 5, 6), [4, 5]);
    const sq = (y: tf.Tensor) => tf.sum(tf.mul(y, target)) as tf.Scalar;
    checkGradients('linear', (a, b, c) => sq(linear(a!, b!, c!)), [x, w, bias]);
    checkGradients('layerNorm', (a, g, b) => sq(tf.mul(layerNorm(tf.matMul(a!, w), g!, b!), 1)), [x, tf.tensor1d(randomArray(5, 7)), tf.tensor1d(randomArray(5, 8))]);
    checkGradients('gelu', (a) => tf.sum(tf.mul(gelu(a!), x)) as tf.Scalar, [tf.tensor2d(randomArray(12, 9), [4, 3])]);
    const a3 = tf.tensor3d(randomArray(2 * 3 * 4, 10), [2, 3, 4]);
    const b3 = tf.tensor3d(randomArray(2 * 4 * 2, 11), [2, 4, 2]);
    const t3 = tf.tensor3d(randomArray(2 * 3 * 2, 12), [2, 3, 2]);
    checkGradients('batchMatmul', (a, b) => tf.sum(tf.mul(batchMatmul(a!, b!), t3)) as tf.Scalar, [a3, b3]);
    const table = tf.tensor2d(randomArray(6 * 3, 13), [6, 3]);
    const ids = tf.tensor1d([1, 4, 4, 0], 'int32');
    checkGradients('embed', (t) => tf.sum(tf.mul(embed(ids, t!), x)) as tf.Scalar, [table]);
    checkGradients('crossEntropy', (l) => tf.sum(crossEntropy(l as tf.Tensor2D, tf.tensor1d([0, 2, 4, 1], 'int32'))) as tf.Scalar, [tf.tensor2d(randomArray(20, 14), [4, 5])]);
  });
});

test('gradient of a whole attention block matches finite differences', () => {
  const b = new LayoutBuilder();
  addBlockParams(b, 'blk', { layers: 1, dModel: 4, heads: 2, mlpRatio: 2, dropout: 0 });
  const layout = b.build();
  const flat = layout.initialize(2).map((v) => v * 10);
  tf.tidy(() => {
    const p = layout.toTensors(flat);
    const x = tf.tensor2d(randomArray(2 * 3 * 4, 15), [6, 4]);
    const target = tf.tensor2d(randomArray(6 * 4, 16), [6, 4]);
    const names = ['blk.attn.wqkv', 'blk.attn.wo', 'blk.mlp.w1', 'blk.ln2.g'];
    checkGradients(
      'block',
      (...ws) => {
        const m = new Map(p);
        names.forEach((n, i) => m.set(n, ws[i]!));
        const y = block(m, 'blk', ws[names.length]!, { B: 2, T: 3, H: 2, dropout: 0, ctx: EVAL_CONTEXT, selfBias: causalBias(3) }).y;
        return tf.sum(tf.mul(y, target)) as tf.Scalar;
      },
      [...names.map((n) => p.get(n)!), x],
      4,
    );
  });
});

function tinyModel() {
  const cfg = loadConfig('configs/tiny.yaml').model;
  cfg.text = { ...cfg.text, layers: 1, dModel: 32, heads: 2, maxLength: 8 };
  cfg.image = { ...cfg.image, layers: 2, dModel: 32, heads: 2 };
  cfg.tokenizer = { ...cfg.tokenizer, imageSize: 8, patchSize: 2, codebookSize: 16 };
  const model = new PartiModel(cfg);
  // A wide init so every position's influence shows in float32.
  const params = model.layout.initialize(3).map((v) => v * 10);
  return { model, params };
}

test('the decoder never sees the future: changing image token t changes no output before t', () => {
  const { model, params } = tinyModel();
  const T = model.imageTokens; // 16
  const B = 1;
  const p = model.layout.toTensors(params);
  const run = (tokens: Int32Array) =>
    tf.tidy(() => {
      const { memory, bias } = model.encode(p, tf.tensor1d([257, 97, 98, 258, 256, 256, 256, 256], 'int32'), [1, 1, 1, 1, 0, 0, 0, 0], B, EVAL_CONTEXT);
      const cross = model.crossKeysValues(p, memory, B);
      const inputs = tf.tensor1d(model.shiftRight(tokens, B), 'int32');
      return model.decode(p, inputs, B, T, cross, bias, EVAL_CONTEXT).logits.dataSync() as Float32Array;
    });
  const tokens = Int32Array.from({ length: T }, (_, i) => (i * 5) % 16);
  const base = run(tokens);
  const V = model.codes;
  for (const t of [3, 9, 14]) {
    const changed = tokens.slice();
    changed[t] = (changed[t]! + 7) % 16;
    const out = run(changed);
    // Token t is the input at position t + 1: outputs 0..t are unchanged, t + 1 changes.
    for (let pos = 0; pos <= t; pos++) {
      for (let v = 0; v < V; v++) assert.equal(out[pos * V + v], base[pos * V + v], `position ${pos} saw token ${t}`);
    }
    let diff = 0;
    for (let v = 0; v < V; v++) diff += Math.abs(out[(t + 1) * V + v]! - base[(t + 1) * V + v]!);
    assert.ok(diff > 1e-4, `position ${t + 1} must depend on token ${t}`);
  }
  for (const x of p.values()) x.dispose();
});

test('incremental decoding with a key/value cache matches the full forward pass', () => {
  const { model, params } = tinyModel();
  const T = model.imageTokens;
  const B = 2;
  const p = model.layout.toTensors(params);
  const tokens = Int32Array.from({ length: B * T }, (_, i) => (i * 7) % 16);
  const textIds = tf.tensor1d([257, 97, 258, 256, 256, 256, 256, 256, 257, 98, 99, 258, 256, 256, 256, 256], 'int32');
  const textMask = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0];
  tf.tidy(() => {
    const { memory, bias } = model.encode(p, textIds, textMask, B, EVAL_CONTEXT);
    const cross = model.crossKeysValues(p, memory, B);
    const inputs = model.shiftRight(tokens, B);
    const full = model.decode(p, tf.tensor1d(inputs, 'int32'), B, T, cross, bias, EVAL_CONTEXT).logits.arraySync();
    let past;
    const V = model.codes;
    for (let t = 0; t < T; t++) {
      const step = model.decode(p, tf.tensor1d([inputs[t]!, inputs[T + t]!], 'int32'), B, 1, cross, bias, EVAL_CONTEXT, { start: t, past });
      past = step.selfKV;
      const rows = step.logits.arraySync();
      for (let b = 0; b < B; b++)
        for (let v = 0; v < V; v++) assert.ok(Math.abs(rows[b]![v]! - full[b * T + t]![v]!) < 1e-3, `b ${b} t ${t} v ${v}`);
    }
  });
  for (const x of p.values()) x.dispose();
});

test('dropout masks depend on (seed, step, sample id), not on batch composition', () => {
  tf.tidy(() => {
    const ones = tf.ones([2 * 3, 4]);
    const ctx = (ids: number[], step = 5): ForwardContext => ({ training: true, seed: 9, step, sampleIds: ids });
    const both = dropout(ones, 0.5, ctx([10, 11]), 'site').arraySync() as number[][];
    const alone = dropout(tf.ones([3, 4]), 0.5, ctx([11]), 'site').arraySync() as number[][];
    assert.deepEqual(both.slice(3), alone);
    const other = dropout(ones, 0.5, ctx([10, 11], 6), 'site').arraySync();
    assert.notDeepEqual(other, both);
    assert.ok(both.flat().every((v) => v === 0 || v === 2));
  });
});

test('the wasm fast kernels give the values and gradients of plain tfjs ops', () => {
  tf.tidy(() => {
    const close = (name: string, a: tf.Tensor, b: tf.Tensor, tol = 1e-5) => {
      assert.deepEqual(a.shape, b.shape, `${name}: shape`);
      const d = tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!;
      const m = Math.max(1, tf.max(tf.abs(b)).dataSync()[0]!);
      assert.ok(d <= tol * m, `${name}: differs by ${d}`);
    };
    // Batched product (one XNNPACK product per batch entry) and its gradient.
    const a = tf.tensor3d(randomArray(5 * 7 * 9, 31), [5, 7, 9]);
    const b = tf.tensor3d(randomArray(5 * 9 * 3, 32), [5, 9, 3]);
    const wb = tf.tensor3d(randomArray(5 * 7 * 3, 33), [5, 7, 3]);
    close('batchMatmul', batchMatmul(a, b), tf.matMul(a, b));
    const gFast = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(batchMatmul(x, y), wb)))([a, b]);
    const gRef = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(tf.matMul(x as tf.Tensor3D, y as tf.Tensor3D), wb)))([a, b]);
    gFast.forEach((g, i) => close(`batchMatmul grad ${i}`, g, gRef[i]!));
    // Transpose and row sums (odd sizes cross the 32-wide tiles).
    const m = tf.tensor2d(randomArray(37 * 70, 34), [37, 70]);
    close('transpose2d', transpose2d(m), tf.transpose(m));
    close('sumRows', sumRows(m), tf.sum(m, 0));
    // Head splits of q|k|v (keys transposed) and their gradient, with one output unused.
    const [B, T, H, dh] = [3, 5, 2, 4];
    const qkv = tf.tensor2d(randomArray(B * T * 3 * H * dh, 35), [B * T, 3 * H * dh]);
    const ref = (x: tf.Tensor) =>
      tf.split(x, 3, 1).map((blk, p) => {
        const x4 = tf.reshape(blk, [B, T, H, dh]);
        return p === 1 ? tf.reshape(tf.transpose(x4, [0, 2, 3, 1]), [B * H, dh, T]) : tf.reshape(tf.transpose(x4, [0, 2, 1, 3]), [B * H, T, dh]);
      });
    const fast = splitHeadBlocks(qkv, B, T, H, [false, true, false]);
    ref(qkv).forEach((r, p) => close(`split ${p}`, fast[p]!, r, 0));
    const w1 = tf.tensor3d(randomArray(B * H * dh * T, 36), [B * H, dh, T]);
    const w2 = tf.tensor3d(randomArray(B * H * T * dh, 37), [B * H, T, dh]);
    const loss = (parts: tf.Tensor[]) => tf.add(tf.sum(tf.mul(parts[1]!, w1)), tf.sum(tf.mul(parts[2]!, w2)));
    close('split grad', tf.grad((x: tf.Tensor) => loss(splitHeadBlocks(x, B, T, H, [false, true, false])))(qkv), tf.grad((x: tf.Tensor) => loss(ref(x)))(qkv), 0);
    // Linear (bias inside the product) and the embedding's scatter-add gradient.
    const x = tf.tensor2d(randomArray(6 * 8, 38), [6, 8]);
    const wt = tf.tensor2d(randomArray(8 * 5, 39), [8, 5]);
    const bias = tf.tensor1d(randomArray(5, 40));
    const wy = tf.tensor2d(randomArray(6 * 5, 41), [6, 5]);
    const lin = tf.grads((p: tf.Tensor, q: tf.Tensor, r: tf.Tensor) => tf.sum(tf.mul(linear(p, q, r), wy)))([x, wt, bias]);
    const linRef = tf.grads((p: tf.Tensor, q: tf.Tensor, r: tf.Tensor) => tf.sum(tf.mul(tf.add(tf.matMul(p as tf.Tensor2D, q as tf.Tensor2D), r), wy)))([x, wt, bias]);
    lin.forEach((g, i) => close(`linear grad ${i}`, g, linRef[i]!));
    const ids = tf.tensor1d([3, 0, 3, 6, 1, 3], 'int32');
    const table = tf.tensor2d(randomArray(7 * 5, 42), [7, 5]);
    const gEmbed = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(embed(ids, t), wy)))(table);
    close('embed grad', gEmbed, tf.matMul(tf.transpose(tf.cast(tf.oneHot(ids, 7), 'float32')), wy));
  });
});
