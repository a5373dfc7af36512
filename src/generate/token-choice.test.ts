import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseBatchTokens, chooseToken, guidedLogits, SAMPLER_SITE, samplerUniform } from './token-choice.ts';

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

/** The module comment's steps 1-5, literally: sort by (w desc, code asc) with a comparator. */
function chooseTokenBySteps(z: Float64Array, s: { temperature: number; topK: number; topP: number }, u: number): number {
  const V = z.length;
  const byValue = (x: Float64Array) => (a: number, b: number) => x[b]! - x[a]! || a - b;
  const zt = z.map((x) => x * (1 / s.temperature)); // step 1, as chooseToken computes it
  let kept = Array.from({ length: V }, (_, v) => v);
  if (s.topK > 0 && s.topK < V) kept = [...kept].sort(byValue(zt)).slice(0, s.topK).sort((a, b) => a - b);
  const max = Math.max(...kept.map((v) => zt[v]!));
  const w = new Float64Array(V);
  let total = 0;
  for (const v of kept) total += w[v] = Math.exp(zt[v]! - max);
  if (s.topP < 1) {
    const ordered = [...kept].sort(byValue(w));
    let acc = 0;
    let n = 0;
    while (n < ordered.length) {
      acc += w[ordered[n]!]!;
      n++;
      if (acc >= s.topP * total) break;
    }
    kept = ordered.slice(0, n).sort((a, b) => a - b);
    total = 0;
    for (const v of kept) total += w[v]!;
  }
  let acc = 0;
  for (const v of kept) {
    acc += w[v]!;
    if (u * total < acc) return v;
  }
  return kept[kept.length - 1]!;
}

test('chooseToken draws what the module comment\'s steps draw, with many tied logits', () => {
  // Logits on a coarse grid, so that top-k and top-p cut through runs of equal values.
  const settings = [
    { temperature: 1, topK: 0, topP: 1 },
    { temperature: 1, topK: 5, topP: 1 },
    { temperature: 0.7, topK: 0, topP: 0.9 },
    { temperature: 1, topK: 0, topP: 0.5 },
    { temperature: 1.3, topK: 12, topP: 0.8 },
    { temperature: 1, topK: 1, topP: 0.3 },
  ];
  for (let r = 0; r < 60; r++) {
    const V = 8 + (r % 7) * 9;
    const z = Float64Array.from({ length: V }, (_, v) => Math.round(samplerUniform(r, v, 1, 2) * 4) - 2);
    for (const s of settings)
      for (let t = 0; t < 12; t++) {
        const u = samplerUniform(r, 0, 0, t);
        assert.equal(chooseToken(z.slice(), s, u), chooseTokenBySteps(z, s, u), `row ${r}, ${JSON.stringify(s)}, u ${u}`);
      }
  }
});

test('non-finite logits (a diverged model) are a clear error, not a silent draw', () => {
  for (const bad of [NaN, Infinity])
    for (const s of [ALL, { ...ALL, topP: 0.9 }, { ...ALL, topK: 2 }]) {
      const z = Float64Array.from([0.5, bad, 1, 2]);
      assert.throws(() => chooseToken(z, s, 0.5), { name: 'PartiError', message: /logit for code 1 is (NaN|Infinity)/ }, `${bad} ${JSON.stringify(s)}`);
    }
  // -Infinity is a code with probability 0, which is fine.
  assert.equal(chooseToken(Float64Array.from([-Infinity, 0]), ALL, 0.99), 1);
});

test('classifier-free guidance: uncond + scale * (cond - uncond)', () => {
  const out = guidedLogits([1, 2, 3], [0.5, 2, 4], 3, new Float64Array(3));
  assert.deepEqual([...out], [2, 2, 1]);
  assert.deepEqual([...guidedLogits([1, 2], null, 3, new Float64Array(2))], [1, 2]);
});

test('golden values: the draw contract parti serve reproduces in plain JavaScript', () => {
  // If these change, images of a seed change: ONNX serving and saved results must follow.
  assert.equal(SAMPLER_SITE, 1562834255);
  assert.equal(samplerUniform(0, 0, 0, 0), 0.6521988462191075);
  assert.equal(samplerUniform(42, 3, 1, 255), 0.37601702963002026);
  assert.equal(samplerUniform(2 ** 31 - 1, 7, 15, 1023), 0.47621068777516484);
  const z = Float64Array.from({ length: 16 }, (_, i) => Math.sin(i * 1.7) * 3);
  assert.deepEqual(
    [0.1, 0.5, 0.9].map((u) => chooseToken(z.slice(), { temperature: 0.8, topK: 6, topP: 0.9 }, u)),
    [1, 8, 12],
  );
});

test('chooseBatchTokens: conditional rows first, then their unconditional rows', () => {
  const V = 3;
  // Row 0 cond favours code 2, its uncond favours code 0; guidance pushes further to code 2.
  const logits = Float32Array.from([0, 0, 1, /* row 1 cond */ 5, 0, 0, /* row 0 uncond */ 1, 0, 0, /* row 1 uncond */ 0, 0, 0]);
  const rows = [
    { prompt: 0, sample: 0 },
    { prompt: 0, sample: 1 },
  ];
  const s = { cfg: 20, temperature: 1, topK: 0, topP: 1, seed: 0 };
  for (let t = 0; t < 20; t++) assert.deepEqual([...chooseBatchTokens(logits, V, rows, s, t)], [2, 0]);
  // Without guidance only the first two rows are read.
  const plain = chooseBatchTokens(logits.subarray(0, 6), V, rows, { ...s, cfg: 1, topK: 1 }, 0);
  assert.deepEqual([...plain], [2, 0]);
});
