import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { shapesSample, shapesSplitOfCaption, SHAPES_RGB, SHAPES_COLORS, SHAPES_SHAPES } from './shapes.ts';

const digest = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

test('shapes: same (seed, index, split) gives the same bytes; other seeds differ', () => {
  for (let i = 0; i < 20; i++) {
    const a = shapesSample(i, { seed: 7, imageSize: 32 });
    const b = shapesSample(i, { seed: 7, imageSize: 32 });
    assert.equal(a.caption, b.caption);
    assert.equal(digest(a.image), digest(b.image));
    assert.equal(a.image.length, 32 * 32 * 3);
  }
  const differing = Array.from({ length: 20 }, (_, i) => i).filter(
    (i) => digest(shapesSample(i, { seed: 1, imageSize: 32 }).image) !== digest(shapesSample(i, { seed: 2, imageSize: 32 }).image),
  );
  assert.ok(differing.length >= 15, `seeds 1 and 2 differ on only ${differing.length}/20 samples`);
});

test('shapes: each object is drawn in its color at its center, captions name the objects', () => {
  for (let i = 0; i < 200; i++) {
    const s = shapesSample(i, { seed: 3, imageSize: 32 });
    assert.ok(s.attributes.objects.length === (s.attributes.layout === 'single' ? 1 : 2));
    for (const o of s.attributes.objects) {
      assert.ok(SHAPES_COLORS.includes(o.color) && SHAPES_SHAPES.includes(o.shape));
      assert.ok(s.caption.includes(`a ${o.color} ${o.shape}`), s.caption);
      const x = Math.floor(o.centerX);
      const y = Math.floor(o.centerY);
      const p = (y * 32 + x) * 3;
      assert.deepEqual([s.image[p], s.image[p + 1], s.image[p + 2]], [...SHAPES_RGB[o.color]], `${s.key} ${s.caption}`);
    }
    if (s.attributes.layout === 'pair') {
      const [a, b] = s.attributes.objects as [any, any];
      const rel = s.attributes.relation;
      if (rel === 'above') assert.ok(a.row < b.row && a.col === b.col);
      if (rel === 'below') assert.ok(a.row > b.row && a.col === b.col);
      if (rel === 'left of') assert.ok(a.col < b.col && a.row === b.row);
      if (rel === 'right of') assert.ok(a.col > b.col && a.row === b.row);
    }
    assert.ok(Buffer.byteLength(s.caption) <= 46, s.caption);
  }
});

test('shapes: held-out captions never appear in training, in either phrasing', () => {
  const flip = (c: string) => {
    const m = /^(a \w+ \w+) (above|below|left of|right of) (a \w+ \w+)$/.exec(c);
    if (!m) return c;
    const inverse: Record<string, string> = { above: 'below', below: 'above', 'left of': 'right of', 'right of': 'left of' };
    return `${m[3]} ${inverse[m[2]!]} ${m[1]}`;
  };
  const train = new Set<string>();
  for (let i = 0; i < 3000; i++) {
    const s = shapesSample(i, { seed: 0, imageSize: 32 });
    assert.equal(shapesSplitOfCaption(s.caption), 'train');
    train.add(s.caption);
  }
  let held = 0;
  for (let i = 0; i < 300; i++) {
    const s = shapesSample(i, { seed: 0, imageSize: 32, split: 'heldOut' });
    assert.equal(s.attributes.split, 'heldOut');
    assert.equal(shapesSplitOfCaption(s.caption), 'heldOut');
    assert.equal(shapesSplitOfCaption(flip(s.caption)), 'heldOut');
    assert.ok(!train.has(s.caption) && !train.has(flip(s.caption)), s.caption);
    assert.ok(s.key.startsWith('heldout-'));
    held++;
  }
  assert.equal(held, 300);
});

test('shapes: rejects bad arguments', () => {
  assert.throws(() => shapesSample(-1, { seed: 0, imageSize: 32 }), RangeError);
  assert.throws(() => shapesSample(0, { seed: 0, imageSize: 3 }), RangeError);
});
