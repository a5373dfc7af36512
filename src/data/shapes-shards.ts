import sharp from 'sharp';
import type { ObjectStore } from '../storage/object-store.ts';
import { shapesSample, type ShapesSplit } from './shapes.ts';
import { ShardSetWriter } from './shard-writer.ts';
import type { ShardIndex } from './shard-index.ts';

/** Options of writeShapesSet. */
export interface WriteShapesOptions {
  samples: number;
  seed: number;
  imageSize: number;
  /** Samples per shard. */
  shardSize: number;
  split: ShapesSplit;
  /** Called after each sample, for progress bars. */
  onSample?: (written: number) => void;
}

/** Encodes raw RGB as PNG (lossless, so decoding gives back the generator's exact bytes). */
export async function encodePng(rgb: Uint8Array, size: number): Promise<Buffer> {
  return sharp(rgb, { raw: { width: size, height: size, channels: 3 } }).png({ compressionLevel: 6 }).toBuffer();
}

/**
 * Writes the shapes set as shards: `train-NNNNNN.tar` / `heldout-NNNNNN.tar` plus the index, each
 * sample as KEY.png, KEY.txt (caption) and KEY.json (the attributes a probe predicts). Same
 * options, same bytes.
 */
export async function writeShapesSet(store: ObjectStore, options: WriteShapesOptions): Promise<{ url: string; index: ShardIndex }> {
  const prefix = options.split === 'train' ? 'train' : 'heldout';
  const writer = new ShardSetWriter(store, {
    prefix,
    shardSize: options.shardSize,
    meta: { generator: 'parti-shapes', seed: options.seed, imageSize: options.imageSize, split: options.split, samples: options.samples },
  });
  for (let i = 0; i < options.samples; i++) {
    const s = shapesSample(i, { seed: options.seed, imageSize: options.imageSize, split: options.split });
    await writer.add({
      key: s.key,
      files: [
        { ext: 'png', data: await encodePng(s.image, options.imageSize) },
        { ext: 'txt', data: Buffer.from(s.caption, 'utf8') },
        { ext: 'json', data: Buffer.from(JSON.stringify(s.attributes)) },
      ],
    });
    options.onSample?.(i + 1);
  }
  const { url, index } = await writer.finish();
  return { url, index };
}
