import { PNG } from 'pngjs';
import { PartiError } from '../errors.ts';

// Five stops of the viridis colour map (perceptually uniform, readable by colour-blind people).
const stops: readonly (readonly [number, number, number])[] = [
  [68, 1, 84],
  [59, 82, 139],
  [33, 145, 140],
  [94, 201, 98],
  [253, 231, 37],
];

function colour(t: number): [number, number, number] {
  const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const a = stops[i]!;
  const b = stops[i + 1]!;
  return [Math.round(a[0] + (b[0] - a[0]) * f), Math.round(a[1] + (b[1] - a[1]) * f), Math.round(a[2] + (b[2] - a[2]) * f)];
}

/**
 * Renders one text token's cross-attention over the image-token grid as a PNG heatmap for the
 * gallery: `weights` is row-major [rows, cols] (e.g. 8x8 image tokens), min-max normalized, each
 * cell drawn as a `scale` x `scale` block. Throws a PartiError when the sizes disagree.
 */
export function attentionHeatmapPng(weights: ArrayLike<number>, rows: number, cols: number, scale = 4): Buffer {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1 || weights.length !== rows * cols) {
    throw new PartiError('internal', `attention heatmap: ${weights.length} weights do not fill a ${rows}x${cols} grid`);
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < weights.length; i++) {
    const w = weights[i]!;
    if (Number.isFinite(w)) {
      lo = Math.min(lo, w);
      hi = Math.max(hi, w);
    }
  }
  const span = hi > lo ? hi - lo : 1;
  const png = new PNG({ width: cols * scale, height: rows * scale });
  for (let y = 0; y < rows * scale; y++) {
    for (let x = 0; x < cols * scale; x++) {
      const w = weights[Math.floor(y / scale) * cols + Math.floor(x / scale)]!;
      const [r, g, b] = colour(Number.isFinite(w) ? (w - lo) / span : 0);
      const o = (y * cols * scale + x) * 4;
      png.data[o] = r;
      png.data[o + 1] = g;
      png.data[o + 2] = b;
      png.data[o + 3] = 255;
    }
  }
  return PNG.sync.write(png);
}
