import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PNG } from 'pngjs';
import { attentionHeatmapPng } from './attention-heatmap.ts';
import { PartiError } from '../errors.ts';

test('an attention heatmap is a PNG of the grid, scaled, darkest at the minimum and brightest at the maximum', () => {
  const png = PNG.sync.read(attentionHeatmapPng([0, 0.5, 1, 0.25, 0.75, 0.1], 2, 3, 4));
  assert.deepEqual([png.width, png.height], [12, 8]);
  const px = (x: number, y: number) => [...png.data.subarray((y * 12 + x) * 4, (y * 12 + x) * 4 + 4)];
  assert.deepEqual(px(0, 0), [68, 1, 84, 255]); // the minimum: viridis' first stop
  assert.deepEqual(px(8, 0), [253, 231, 37, 255]); // the maximum (row 0, column 2): its last stop
  assert.deepEqual(px(3, 3), px(0, 0), 'a cell is scale x scale pixels');
  const brightness = (p: number[]) => p[0]! + p[1]! + p[2]!;
  assert.ok(brightness(px(4, 0)) > brightness(px(0, 4)), '0.5 is brighter than 0.25');
});

test('a flat or non-finite map still renders; a size mismatch is an error', () => {
  const flat = PNG.sync.read(attentionHeatmapPng([3, 3, 3, 3], 2, 2, 1));
  assert.deepEqual([...flat.data.subarray(0, 4)], [68, 1, 84, 255]);
  PNG.sync.read(attentionHeatmapPng([Number.NaN, 1, 2, Infinity], 2, 2, 1));
  assert.throws(() => attentionHeatmapPng([1, 2, 3], 2, 2), (e: unknown) => e instanceof PartiError && /3 weights do not fill a 2x2 grid/.test(e.message));
});
