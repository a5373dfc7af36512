import { PNG } from 'pngjs';

/** Square RGB(A) images as bytes, all of one size. */
export interface ImageSet {
  images: readonly Uint8Array[];
  /** Side in pixels. */
  size: number;
  /** Bytes per pixel (1 gray, 3 RGB, 4 RGBA). */
  channels: number;
}

/** Layout of a grid PNG. */
export interface GridOptions {
  /** Images per row (default: ceil(sqrt(n))). */
  columns?: number;
  /** Nearest-neighbour enlargement (default 1). */
  scale?: number;
  /** White pixels between images (default 2 * scale). */
  gap?: number;
}

function pixel(set: ImageSet, img: Uint8Array, x: number, y: number): [number, number, number] {
  const o = (y * set.size + x) * set.channels;
  if (set.channels < 3) return [img[o]!, img[o]!, img[o]!];
  return [img[o]!, img[o + 1]!, img[o + 2]!];
}

/** One image as a PNG, enlarged `scale` times (nearest neighbour). */
export function imagePng(set: ImageSet, index: number, scale = 1): Buffer {
  return gridPng({ ...set, images: [set.images[index]!] }, { columns: 1, scale, gap: 0 });
}

/** The images side by side in rows of `columns`, on white, as one PNG. */
export function gridPng(set: ImageSet, opts: GridOptions = {}): Buffer {
  const n = set.images.length;
  const scale = opts.scale ?? 1;
  const columns = Math.max(1, Math.min(n, opts.columns ?? Math.ceil(Math.sqrt(n))));
  const rows = Math.max(1, Math.ceil(n / columns));
  const gap = opts.gap ?? 2 * scale;
  const cell = set.size * scale;
  const width = columns * cell + (columns - 1) * gap;
  const height = rows * cell + (rows - 1) * gap;
  const png = new PNG({ width, height });
  png.data.fill(255);
  for (let i = 0; i < n; i++) {
    const ox = (i % columns) * (cell + gap);
    const oy = Math.floor(i / columns) * (cell + gap);
    const img = set.images[i]!;
    for (let y = 0; y < cell; y++)
      for (let x = 0; x < cell; x++) {
        const [r, g, b] = pixel(set, img, Math.floor(x / scale), Math.floor(y / scale));
        const o = ((oy + y) * width + ox + x) * 4;
        png.data[o] = r;
        png.data[o + 1] = g;
        png.data[o + 2] = b;
        png.data[o + 3] = 255;
      }
  }
  return PNG.sync.write(png);
}
