import * as tf from '@tensorflow/tfjs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { BOS_ID, EOS_ID, PAD_ID } from '../model/text-tokenizer.ts';
import { EVAL_CONTEXT } from '../model/transformer.ts';
import { encodeForRows, encodeTexts, type PartiRunner } from './sampler.ts';

/**
 * Cross-attention of one generated image: for every decoder layer, the attention of each image
 * token (query) over the text tokens (keys), averaged over heads.
 */
export interface CrossAttentionMaps {
  /** Text token ids of the prompt [L] and which are real (not PAD). */
  textIds: Int32Array;
  textMask: Uint8Array;
  /** Image tokens per side (the map is grid x grid). */
  grid: number;
  /** One [imageTokens * L] array per layer, row t = image token t. */
  perLayer: Float32Array[];
  /** Mean over layers, [imageTokens * L]. */
  mean: Float32Array;
}

/**
 * Recomputes the cross-attention of generated images in one teacher-forced decoder pass (the
 * decoder is causal, so row t equals what the sampler saw when it drew token t).
 */
export function crossAttentionMaps(runner: PartiRunner, prompt: string, images: readonly Int32Array[]): CrossAttentionMaps[] {
  const { model, params: p } = runner;
  const T = model.imageTokens;
  const L = runner.tokenizer.maxLength;
  const B = images.length;
  if (B === 0) return [];
  const inputs = new Int32Array(B * T);
  images.forEach((tok, b) => {
    inputs[b * T] = model.bosId;
    inputs.set(tok.subarray(0, T - 1), b * T + 1);
  });
  const { ids, mask } = encodeTexts(runner.tokenizer, [prompt]);
  const { cross, bias } = encodeForRows(runner, [prompt], images.map(() => 0));
  let layers: tf.Tensor[] = [];
  try {
    layers = tf.tidy(() => {
      const r = model.decode(p, tf.tensor1d(inputs, 'int32'), B, T, cross, bias, EVAL_CONTEXT, { returnCrossAttention: true });
      // [B, H, T, L] -> mean over heads [B, T, L]
      return r.crossAttention.map((a) => tf.mean(a, 1));
    });
    const data = layers.map((t) => t.dataSync() as Float32Array);
    const grid = Math.round(Math.sqrt(T));
    return images.map((_, b) => {
      const perLayer = data.map((d) => d.slice(b * T * L, (b + 1) * T * L));
      const mean = new Float32Array(T * L);
      for (const l of perLayer) for (let i = 0; i < mean.length; i++) mean[i] += l[i]! / perLayer.length;
      return { textIds: ids, textMask: mask, grid, perLayer, mean };
    });
  } finally {
    tf.dispose([bias, ...cross.flatMap((c) => [c.kT, c.v]), ...layers]);
  }
}

/** A file-name-safe label of a byte-level text token: `a`, `_` (space), `x2c`, `bos`, `eos`. */
export function textTokenLabel(id: number): string {
  if (id === BOS_ID) return 'bos';
  if (id === EOS_ID) return 'eos';
  if (id === PAD_ID) return 'pad';
  if (id === 0x20) return '_';
  const c = String.fromCharCode(id);
  return /^[A-Za-z0-9]$/.test(c) ? c : `x${id.toString(16).padStart(2, '0')}`;
}

// Five stops of viridis (perceptually uniform; readable by colour-blind people).
const VIRIDIS: readonly (readonly [number, number, number])[] = [
  [68, 1, 84],
  [59, 82, 139],
  [33, 145, 140],
  [94, 201, 98],
  [253, 231, 37],
];

function viridis(x: number): [number, number, number] {
  const f = Math.min(1, Math.max(0, x)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(f));
  const a = VIRIDIS[i]!;
  const b = VIRIDIS[i + 1]!;
  const w = f - i;
  return [0, 1, 2].map((c) => Math.round(a[c]! + (b[c]! - a[c]!) * w)) as [number, number, number];
}

/**
 * A heat map of `weights` [grid * grid] (min-max normalized, viridis) over the image: each image
 * token's cell is `cell` pixels wide, blended 60/40 with the image in gray so the shapes show
 * through. `image` is [size * size * channels] bytes.
 */
export function heatmapPng(weights: ArrayLike<number>, grid: number, image: Uint8Array, size: number, channels: number, cell: number): Buffer {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < grid * grid; i++) {
    lo = Math.min(lo, weights[i]!);
    hi = Math.max(hi, weights[i]!);
  }
  const span = hi > lo ? hi - lo : 1;
  const W = grid * cell;
  const png = new PNG({ width: W, height: W });
  for (let y = 0; y < W; y++)
    for (let x = 0; x < W; x++) {
      const g = Math.floor((y * grid) / W) * grid + Math.floor((x * grid) / W);
      const heat = viridis((weights[g]! - lo) / span);
      const src = (Math.floor((y * size) / W) * size + Math.floor((x * size) / W)) * channels;
      const gray = channels >= 3 ? (image[src]! + image[src + 1]! + image[src + 2]!) / 3 : image[src]!;
      const o = (y * W + x) * 4;
      for (let c = 0; c < 3; c++) png.data[o + c] = Math.round(0.6 * heat[c]! + 0.4 * gray);
      png.data[o + 3] = 255;
    }
  return PNG.sync.write(png);
}

/** Column l of a [T * L] map: one text token's attention over the image tokens. */
function column(map: Float32Array, l: number, T: number, L: number): Float32Array {
  const out = new Float32Array(T);
  for (let t = 0; t < T; t++) out[t] = map[t * L + l]!;
  return out;
}

/**
 * Writes one heat map per real text token into `dir` (`NN-label.png`, averaged over heads and
 * layers; with `perLayer` also `NN-label.layerK.png`) and `tokens.json` naming them. Returns the
 * files written.
 */
export async function writeAttentionMaps(
  dir: string,
  maps: CrossAttentionMaps,
  image: Uint8Array,
  size: number,
  channels: number,
  opts: { perLayer?: boolean; cell?: number } = {},
): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const T = maps.grid * maps.grid;
  const L = maps.textIds.length;
  const cell = opts.cell ?? Math.max(8, Math.ceil((size * 4) / maps.grid));
  const files: string[] = [];
  const index: { position: number; id: number; label: string; file: string; layers?: string[] }[] = [];
  for (let l = 0; l < L; l++) {
    if (!maps.textMask[l]) continue;
    const id = maps.textIds[l]!;
    const name = `${String(l).padStart(2, '0')}-${textTokenLabel(id)}`;
    const file = `${name}.png`;
    await writeFile(join(dir, file), heatmapPng(column(maps.mean, l, T, L), maps.grid, image, size, channels, cell));
    files.push(join(dir, file));
    const entry: (typeof index)[number] = { position: l, id, label: textTokenLabel(id), file };
    if (opts.perLayer) {
      entry.layers = [];
      for (let k = 0; k < maps.perLayer.length; k++) {
        const lf = `${name}.layer${k}.png`;
        await writeFile(join(dir, lf), heatmapPng(column(maps.perLayer[k]!, l, T, L), maps.grid, image, size, channels, cell));
        files.push(join(dir, lf));
        entry.layers.push(lf);
      }
    }
    index.push(entry);
  }
  await writeFile(join(dir, 'tokens.json'), JSON.stringify({ grid: maps.grid, layers: maps.perLayer.length, tokens: index }, null, 2));
  return files;
}
