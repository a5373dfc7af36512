import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PNG } from 'pngjs';
import { parsePrompts, promptFolderName } from './prompt-file.ts';
import { gridPng } from './image-grid.ts';

test('a TSV with a Prompt column (PartiPrompts) gives that column', () => {
  const tsv = '\uFEFFPrompt\tCategory\tChallenge\r\nA red circle\tShapes\tBasic\r\n\r\n"quoted"\tX\tY\n';
  assert.deepEqual(parsePrompts(tsv), { prompts: ['A red circle', '"quoted"'], format: 'tsv' });
  assert.deepEqual(parsePrompts('Category\tprompt\nA\ta b\n').prompts, ['a b']);
});

test('plain text: one prompt per line, blank lines skipped', () => {
  assert.deepEqual(parsePrompts('a red circle\n\n  a blue square  \n'), { prompts: ['a red circle', 'a blue square'], format: 'lines' });
  assert.throws(() => parsePrompts('\n\n', 'p.txt'), /--prompts: p.txt has no prompts/);
  assert.throws(() => parsePrompts('Prompt\tCategory\n', 'p.tsv'), /Prompt column but no rows/);
});

test('prompt folder names sort in file order and are file-name safe', () => {
  assert.equal(promptFolderName(7, 'A red circle, above a blue square!'), '0007-a-red-circle-above-a-blue-square');
  assert.equal(promptFolderName(0, ''), '0000');
  assert.equal(promptFolderName(1, '🦄 ../..'), '0001');
  assert.equal(promptFolderName(2, 'Crème brûlée').startsWith('0002-creme-brulee'), true);
});

test('grid PNG: images in rows of ceil(sqrt(n)) columns with white gaps', () => {
  const red = new Uint8Array(2 * 2 * 3);
  for (let i = 0; i < 4; i++) red[i * 3] = 255;
  const blue = new Uint8Array(2 * 2 * 3);
  for (let i = 0; i < 4; i++) blue[i * 3 + 2] = 255;
  const png = PNG.sync.read(gridPng({ images: [red, blue, red], size: 2, channels: 3 }, { scale: 2, gap: 1 }));
  assert.equal(png.width, 2 * 4 + 1);
  assert.equal(png.height, 2 * 4 + 1);
  const at = (x: number, y: number) => [...png.data.subarray((y * png.width + x) * 4, (y * png.width + x) * 4 + 3)];
  assert.deepEqual(at(0, 0), [255, 0, 0]);
  assert.deepEqual(at(4, 0), [255, 255, 255]);
  assert.deepEqual(at(5, 3), [0, 0, 255]);
  assert.deepEqual(at(0, 5), [255, 0, 0]);
  assert.deepEqual(at(5, 5), [255, 255, 255]);
});
