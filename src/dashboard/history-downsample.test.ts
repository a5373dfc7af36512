import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { downsampleLttb } from './history-downsample.ts';

test('a series that fits is returned as it is', () => {
  assert.deepEqual(downsampleLttb([1, 2, 3], [5, 4, 3], 10), { x: [1, 2, 3], y: [5, 4, 3] });
});

test('downsampling keeps the ends, stays sorted, returns exactly `points` points drawn from the input', () => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: -1e6, max: 1e6, noNaN: true }), { minLength: 3, maxLength: 3000 }),
      fc.integer({ min: 3, max: 500 }),
      (ys, points) => {
        const xs = ys.map((_, i) => i * 2 + 1);
        const out = downsampleLttb(xs, ys, points);
        const expected = Math.min(points, ys.length);
        assert.equal(out.x.length, expected);
        assert.equal(out.y.length, expected);
        assert.equal(out.x[0], xs[0]);
        assert.equal(out.x.at(-1), xs.at(-1));
        for (let i = 0; i < out.x.length; i++) {
          if (i > 0) assert.ok(out.x[i]! > out.x[i - 1]!);
          assert.equal(out.y[i], ys[(out.x[i]! - 1) / 2]);
        }
      },
    ),
    { numRuns: 200 },
  );
});

test('a single spike in 100 000 flat points survives downsampling to 300', () => {
  const n = 100_000;
  const xs = Array.from({ length: n }, (_, i) => i + 1);
  const ys = xs.map(() => 1);
  ys[61_234] = 50;
  const out = downsampleLttb(xs, ys, 300);
  assert.equal(out.x.length, 300);
  assert.ok(out.y.includes(50));
  assert.equal(out.x[out.y.indexOf(50)], 61_235);
});
