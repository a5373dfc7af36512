import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SequentialRandom } from '../model/rng.ts';
import { fid, fitGaussian, frechetDistance, symmetricEigen } from './frechet-distance.ts';

/** n correlated feature rows of width d: a random linear mix of normals plus an offset. */
function features(n: number, d: number, seed: number): Float64Array {
  const rng = new SequentialRandom(seed);
  const mix = Array.from({ length: d * d }, () => rng.normal() / Math.sqrt(d));
  const out = new Float64Array(n * d);
  const z = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < d; k++) z[k] = rng.normal();
    for (let j = 0; j < d; j++) {
      let v = 0.5 + j * 0.01;
      for (let k = 0; k < d; k++) v += mix[j * d + k]! * z[k]!;
      out[i * d + j] = v;
    }
  }
  return out;
}

test('symmetricEigen: V diag(values) V^T rebuilds the matrix, V is orthonormal', () => {
  const d = 6;
  const x = features(40, d, 1);
  const { cov } = fitGaussian(x, d);
  const { values, vectors } = symmetricEigen(cov, d);
  for (let i = 0; i < d; i++)
    for (let j = 0; j < d; j++) {
      let rebuilt = 0;
      let dot = 0;
      for (let k = 0; k < d; k++) {
        rebuilt += vectors[i * d + k]! * values[k]! * vectors[j * d + k]!;
        dot += vectors[k * d + i]! * vectors[k * d + j]!;
      }
      assert.ok(Math.abs(rebuilt - cov[i * d + j]!) < 1e-10, `rebuilt[${i},${j}]`);
      assert.ok(Math.abs(dot - (i === j ? 1 : 0)) < 1e-10, `V^T V [${i},${j}]`);
    }
});

test('FID of a set with itself is 0', () => {
  for (const d of [1, 8, 64]) {
    const x = features(300, d, d);
    const g = fitGaussian(x, d);
    let trace = 0;
    for (let j = 0; j < d; j++) trace += g.cov[j * d + j]!;
    assert.ok(fid(x, x, d) < 1e-8 * trace, `d=${d}: ${fid(x, x, d)} (trace ${trace})`);
  }
});

test('FID rises with the amount of noise added to one set', () => {
  const d = 16;
  const x = features(400, d, 7);
  const rng = new SequentialRandom(99);
  const noise = Array.from({ length: x.length }, () => rng.normal());
  const values = [0, 0.1, 0.3, 1, 3].map((s) => fid(x, x.map((v, i) => v + s * noise[i]!), d));
  assert.ok(values[0]! < 1e-9);
  for (let i = 1; i < values.length; i++) assert.ok(values[i]! > values[i - 1]!, `noise levels: ${values.join(', ')}`);
});

test('FID of two Gaussians that differ only in mean is the squared mean distance; it is symmetric', () => {
  const d = 5;
  const x = features(200, d, 3);
  const shift = [1, -2, 0, 0.5, 3];
  const y = x.map((v, i) => v + shift[i % d]!);
  const expected = shift.reduce((s, v) => s + v * v, 0);
  assert.ok(Math.abs(fid(x, y, d) - expected) < 1e-8 * expected);
  const z = features(200, d, 4);
  const a = frechetDistance(fitGaussian(x, d), fitGaussian(z, d));
  const b = frechetDistance(fitGaussian(z, d), fitGaussian(x, d));
  assert.ok(Math.abs(a - b) < 1e-8 * Math.max(1, a));
});

test('FID needs two rows', () => {
  assert.throws(() => fid([1, 2], [1, 2, 3, 4], 2), /at least 2 feature rows/);
});
