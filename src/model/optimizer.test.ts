import { test } from 'node:test';
import assert from 'node:assert/strict';
import { optimizerSchema, scheduleSchema } from '../config/training-schema.ts';
import { clipScale, createOptimizer, gradientNorm, learningRate } from './optimizer.ts';
import { LayoutBuilder } from './param-layout.ts';

function layout() {
  const b = new LayoutBuilder();
  b.add('w', [3, 4], { kind: 'normal', std: 0.5 });
  b.add('b', [4], { kind: 'zeros' });
  b.add('v', [5, 2], { kind: 'normal', std: 0.5 });
  return b.build();
}

test('schedules: warm-up then constant, linear, cosine and rsqrt decay', () => {
  const s = (decay: string) => scheduleSchema.parse({ warmupSteps: 10, decay, minLrRatio: 0.1 });
  assert.equal(learningRate(0, 110, 1, s('cosine')), 0.1);
  assert.equal(learningRate(9, 110, 1, s('cosine')), 1);
  assert.equal(learningRate(10, 110, 1, s('cosine')), 1);
  assert.ok(Math.abs(learningRate(60, 110, 1, s('cosine')) - 0.55) < 1e-12);
  assert.ok(Math.abs(learningRate(110, 110, 1, s('cosine')) - 0.1) < 1e-12);
  assert.ok(Math.abs(learningRate(60, 110, 1, s('linear')) - 0.55) < 1e-12);
  assert.equal(learningRate(100, 110, 2, s('constant')), 2);
  assert.ok(Math.abs(learningRate(39, 110, 1, s('rsqrt')) - 0.5) < 1e-12);
});

test('global norm in float64, non-finite detection, clip factor', () => {
  assert.deepEqual(gradientNorm(new Float32Array([3, 4])), { norm: 5, finite: true });
  assert.equal(gradientNorm(new Float32Array([1, Number.NaN])).finite, false);
  assert.equal(gradientNorm(new Float32Array([1, Number.POSITIVE_INFINITY])).finite, false);
  assert.equal(clipScale(5, 1), 0.2);
  assert.equal(clipScale(0.5, 1), 1);
  assert.equal(clipScale(5, 0), 1);
});

test('AdamW: first step moves each weight by lr against the gradient sign, plus decoupled decay', () => {
  const l = layout();
  const opt = createOptimizer(optimizerSchema.parse({ type: 'adamw', lr: 0.1, weightDecay: 0.5 }), l);
  const params = new Float32Array(l.size).fill(1);
  const grads = Float32Array.from({ length: l.size }, (_, i) => (i % 2 ? 2 : -3));
  opt.update(params, grads, { lr: 0.1 });
  // m/(sqrt(v)+eps) = sign(g) on step 1; decay only on matrices (w, v), not on the bias b.
  const bias = l.get('b');
  for (let i = 0; i < l.size; i++) {
    const decay = i >= bias.offset && i < bias.offset + bias.size ? 0 : 0.5;
    const expected = 1 - 0.1 * (Math.sign(grads[i]!) * (1 / (1 + 1e-8 / Math.abs(grads[i]!))) + decay);
    assert.ok(Math.abs(params[i]! - expected) < 1e-6, `param ${i}: ${params[i]} vs ${expected}`);
  }
});

for (const type of ['adamw', 'adafactor'] as const) {
  test(`${type}: sharded updates over shardRanges equal one full update, and state round-trips`, () => {
    const l = layout();
    const cfg = optimizerSchema.parse({ type, lr: 0.05, beta1: 0.9, weightDecay: 0.01 });
    const init = l.initialize(1);
    const grads = [1, 2, 3].map((k) => Float32Array.from({ length: l.size }, (_, i) => Math.sin(i * k + 0.3)));
    const full = init.slice();
    const fullOpt = createOptimizer(cfg, l);
    for (const g of grads) fullOpt.update(full, g, { lr: 0.05, gradScale: 0.5 });
    const sharded = init.slice();
    const ranges = l.shardRanges(2);
    assert.deepEqual(ranges.flat()[0], 0);
    assert.equal(ranges[1]![1], l.size);
    const opts = ranges.map((r) => createOptimizer(cfg, l, r));
    for (const g of grads) opts.forEach((o, r) => o.update(sharded, g.subarray(ranges[r]![0], ranges[r]![1]), { lr: 0.05, gradScale: 0.5 }));
    assert.deepEqual(sharded, full);
    // Export, import into a fresh optimizer, continue: same as continuing the original.
    const copy = createOptimizer(cfg, l);
    copy.importState(structuredClone(fullOpt.exportState()));
    const a = full.slice();
    const b = full.slice();
    fullOpt.update(a, grads[0]!, { lr: 0.05 });
    copy.update(b, grads[0]!, { lr: 0.05 });
    assert.deepEqual(a, b);
  });
}

test('adafactor minimizes a quadratic', () => {
  const l = layout();
  const opt = createOptimizer(optimizerSchema.parse({ type: 'adafactor', lr: 0.05 }), l);
  const params = l.initialize(2).map((v) => v + 1);
  const loss = () => params.reduce((s, v) => s + v * v, 0);
  const start = loss();
  for (let i = 0; i < 100; i++) opt.update(params, params.map((v) => 2 * v), { lr: 0.05 });
  assert.ok(loss() < start * 0.05, `loss ${loss()} from ${start}`);
});
