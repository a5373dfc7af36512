import { test } from 'node:test';
import assert from 'node:assert/strict';
import { shapesSample } from '../data/shapes.ts';
import { chooseLabelScheme, labelSchemeFromJSON, PhraseLabelScheme, ShapesLabelScheme } from './label-scheme.ts';
import { agreement, describeLabels } from './prompt-agreement.ts';

const shapes = new ShapesLabelScheme();
const names = (c: string) => describeLabels(shapes, shapes.labelsOf(c)!);

test('shapes: a single object names its cell and no second object', () => {
  assert.deepEqual(names('a red circle at the top left'), { color1: 'red', shape1: 'circle', color2: 'none', shape2: 'none', where: 'top left' });
  assert.deepEqual(names('a white cross in the center'), { color1: 'white', shape1: 'cross', color2: 'none', shape2: 'none', where: 'center' });
  assert.equal(names('a blue square at the top').where, 'top');
});

test('shapes: both phrasings of a pair give the same labels (upper or left object first)', () => {
  assert.deepEqual(shapes.labelsOf('a red circle above a blue square'), shapes.labelsOf('a blue square below a red circle'));
  assert.deepEqual(shapes.labelsOf('a green cross left of a yellow triangle'), shapes.labelsOf('a yellow triangle right of a green cross'));
  assert.deepEqual(names('a blue square below a red circle'), { color1: 'red', shape1: 'circle', color2: 'blue', shape2: 'square', where: 'above' });
});

test('shapes: every caption the generator writes is labelled, others are not', () => {
  for (const split of ['train', 'heldOut'] as const) {
    for (let i = 0; i < 300; i++) assert.ok(shapes.labelsOf(shapesSample(i, { seed: 5, imageSize: 16, split }).caption), `${split} ${i}`);
  }
  for (const bad of ['', 'a red circle', 'a pink circle at the top', 'a red blob above a blue square', 'two red circles']) assert.equal(shapes.labelsOf(bad), null, bad);
});

test('chooseLabelScheme: shapes captions, a fixed phrase set, or an error', () => {
  assert.equal(chooseLabelScheme(['a red circle at the top', 'a blue square above a red cross'], 'x').kind, 'shapes');
  const phrase = chooseLabelScheme(['a cat', 'a dog', 'a cat'], 'x');
  assert.equal(phrase.kind, 'phrase');
  assert.deepEqual(phrase.heads[0]!.classes, ['a cat', 'a dog']);
  assert.deepEqual(phrase.labelsOf('a dog'), [1]);
  assert.equal(phrase.labelsOf('a bird'), null);
  assert.throws(() => chooseLabelScheme([], 'x'), /no samples/);
  assert.throws(() => chooseLabelScheme(Array.from({ length: 1001 }, (_, i) => `caption ${i}`), 'src'), /src: .*1001 distinct/);
  const back = labelSchemeFromJSON(phrase.toJSON());
  assert.ok(back instanceof PhraseLabelScheme);
  assert.deepEqual(back.heads, phrase.heads);
});

test('agreement: per head, per attribute (all its heads) and whole prompt', () => {
  const t = shapes.labelsOf('a red circle above a blue square')!;
  const wrongColor2 = [...t];
  wrongColor2[2] = shapes.heads[2]!.classes.indexOf('green');
  const wrongWhere = [...t];
  wrongWhere[4] = shapes.heads[4]!.classes.indexOf('left of');
  const a = agreement(shapes, [t, wrongColor2, wrongWhere, t], [t, t, t, t]);
  assert.equal(a.images, 4);
  assert.equal(a.heads.color2, 0.75);
  assert.equal(a.attributes.color, 0.75);
  assert.equal(a.attributes.shape, 1);
  assert.equal(a.attributes.position, 0.75);
  assert.equal(a.whole, 0.5);
});
