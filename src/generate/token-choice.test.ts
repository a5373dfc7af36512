import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseToken, guidedLogits, samplerUniform } from './token-choice.ts';

const ALL = { temperature: 1, topK: 0, topP: 1 };

test('samplerUniform is a pure function of (seed, prompt, sample, token) in [0, 1)', () => {
  assert.equal(samplerUniform(7, 1, 2, 3), samplerUniform(7, 1, 2, 3));
  const seen = new Set<number>();
  const keys: [number, number, number, number][] = [
    [7, 1, 2, 3],
    [8, 1, 2, 3],
    [7, 2, 2, 3],
    [7, 1, 3, 3],
    [7, 1, 2, 4],
  ];
  for (const [a, b, c, d] of keys) {
    const u = samplerUniform(a, b, c, d);
    assert.ok(u >= 0 && u < 1);
    seen.add(u);
  }
  assert.equal(seen.size, 5);
});

test('draws follow the softmax of the logits', () => {
  // p = [0.25, 0.75]
  let ones = 0;
  const n = 4000;
  for (let t = 0; t < n; t++) ones += chooseToken(Float64Array.from([0, Math.log(3)]), ALL, samplerUniform(1, 0, 0, t));
  assert.ok(Math.abs(ones / n - 0.75) < 0.03, `${ones / n}`);
});

test('temperature sharpens and flattens', () => {
  let hot = 0;
  let cold = 0;
  for (let t = 0; t < 2000; t++) {
    const u = samplerUniform(2, 0, 0, t);
    hot += chooseToken(Float64Array.from([0, Math.log(3)]), { ...ALL, temperature: 100 }, u);
    cold += chooseToken(Float64Array.from([0, Math.log(3)]), { ...ALL, temperature: 0.05 }, u);
  }
  assert.ok(Math.abs(hot / 2000 - 0.5) < 0.05, `hot ${hot / 2000}`);
  assert.ok(cold / 2000 > 0.99, `cold ${cold / 2000}`);
});

test('top-k keeps the k most likely codes, ties to the smaller code', () => {
  const logits = [0.1, 2, 0.5, 2, -1, 1.5];
  const picked = new Set<number>();
  for (let t = 0; t < 500; t++) picked.add(chooseToken(Float64Array.from(logits), { ...ALL, topK: 2 }, samplerUniform(3, 0, 0, t)));
  assert.deepEqual([...picked].sort(), [1, 3]);
  for (let t = 0; t < 50; t++) assert.equal(chooseToken(Float64Array.from(logits), { ...ALL, topK: 1 }, samplerUniform(3, 0, 0, t)), 1);
});

test('top-p keeps the smallest set of codes reaching p', () => {
  // probabilities 0.5, 0.3, 0.15, 0.05
  const logits = [0.5, 0.3, 0.15, 0.05].map(Math.log);
  const picked = new Set<number>();
  for (let t = 0; t < 500; t++) picked.add(chooseToken(Float64Array.from(logits), { ...ALL, topP: 0.75 }, samplerUniform(4, 0, 0, t)));
  assert.deepEqual([...picked].sort(), [0, 1]);
  for (let t = 0; t < 50; t++) assert.equal(chooseToken(Float64Array.from(logits), { ...ALL, topP: 0.01 }, samplerUniform(4, 0, 0, t)), 0);
  // The kept codes are drawn in proportion: 0.5 : 0.3.
  let ones = 0;
  for (let t = 0; t < 4000; t++) ones += chooseToken(Float64Array.from(logits), { ...ALL, topP: 0.75 }, samplerUniform(5, 0, 0, t));
  assert.ok(Math.abs(ones / 4000 - 0.375) < 0.03, `${ones / 4000}`);
});

test('classifier-free guidance: uncond + scale * (cond - uncond)', () => {
  const out = guidedLogits([1, 2, 3], [0.5, 2, 4], 3, new Float64Array(3));
  assert.deepEqual([...out], [2, 2, 1]);
  assert.deepEqual([...guidedLogits([1, 2], null, 3, new Float64Array(2))], [1, 2]);
});
