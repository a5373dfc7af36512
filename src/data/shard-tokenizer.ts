import type { Logger } from 'pino';
import type { ObjectStore } from '../storage/object-store.ts';
import { log as rootLog } from '../observability/log.ts';
import { decodeSample, emptyBadCounts, encodeTokens, groupSamples, nonZeroBadCounts, type BadCounts, type RawSample } from './sample-format.ts';
import type { ShardSet } from './shard-index.ts';
import { ShardSetWriter } from './shard-writer.ts';
import { parseTar } from './tar-format.ts';
import { StorageError } from '../storage/storage-error.ts';

/**
 * `parti data tokenize`: copies a shard set, adding `KEY.tokens` (the frozen image tokenizer's
 * tokens) to every good sample, so the Parti stage need not re-encode images every epoch. The
 * output keeps the input's shard boundaries; bad samples are left out and counted.
 */

/** Images [B*S*S*3] RGB bytes -> B*tokensPerImage token ids. The model's VitVqgan.encode fits it. */
export type ImageEncoder = (images: Uint8Array, count: number) => Int32Array | Promise<Int32Array>;

export interface TokenizeOptions {
  imageSize: number;
  tokensPerImage: number;
  encode: ImageEncoder;
  /** Images per encode call (default 32). */
  batchSize?: number;
  maxCaptionBytes?: number;
  onShard?: (done: number, total: number) => void;
  log?: Logger;
}

export interface TokenizeReport {
  url: string;
  samples: number;
  bad: Partial<BadCounts>;
}

export async function tokenizeShards(input: ShardSet, out: ObjectStore, prefix: string, options: TokenizeOptions): Promise<TokenizeReport> {
  const log = options.log ?? rootLog.child({ component: 'data' });
  const batchSize = options.batchSize ?? 32;
  const writer = new ShardSetWriter(out, {
    prefix,
    shardSize: Number.MAX_SAFE_INTEGER,
    meta: { ...input.meta, tokens: { imageSize: options.imageSize, tokensPerImage: options.tokensPerImage, from: input.url } },
  });
  const bad = emptyBadCounts();
  let samples = 0;
  for (let s = 0; s < input.shards.length; s++) {
    const name = input.shards[s]!.name;
    let bytes: Buffer;
    try {
      bytes = await input.store.get(name);
    } catch (err) {
      if (!(err instanceof StorageError)) throw err;
      bad[err.reason === 'not-found' ? 'shard-not-found' : err.reason === 'denied' ? 'shard-denied' : 'shard-unreadable'] += input.shards[s]!.samples;
      log.warn({ shard: `${input.store.url}/${name}`, reason: err.reason }, 'tokenize: shard skipped');
      continue;
    }
    const tar = parseTar(bytes);
    if (tar.notATar) {
      bad['not-a-tar'] += input.shards[s]!.samples;
      continue;
    }
    const raws = groupSamples(tar.entries);
    const good: { raw: RawSample; image: Uint8Array }[] = [];
    for (const raw of raws) {
      const o = await decodeSample(raw, { imageSize: options.imageSize, maxCaptionBytes: options.maxCaptionBytes ?? 4096, tokenCount: 0 });
      if (!o.ok) {
        bad[o.reason]++;
        log.warn({ shard: `${input.store.url}/${name}`, key: raw.key, reason: o.reason }, `tokenize: skipped bad sample: ${o.detail}`);
        continue;
      }
      good.push({ raw, image: o.sample.image });
    }
    const pixels = options.imageSize * options.imageSize * 3;
    for (let b = 0; b < good.length; b += batchSize) {
      const chunk = good.slice(b, b + batchSize);
      const images = new Uint8Array(chunk.length * pixels);
      chunk.forEach((g, i) => images.set(g.image, i * pixels));
      const tokens = await options.encode(images, chunk.length);
      if (tokens.length !== chunk.length * options.tokensPerImage) {
        throw new Error(`tokenize: encoder returned ${tokens.length} tokens for ${chunk.length} images of ${options.tokensPerImage}`);
      }
      for (let i = 0; i < chunk.length; i++) {
        const { raw } = chunk[i]!;
        const files = [...raw.files.entries()].filter(([ext]) => ext !== 'tokens').map(([ext, data]) => ({ ext, data }));
        files.push({ ext: 'tokens', data: encodeTokens(tokens.subarray(i * options.tokensPerImage, (i + 1) * options.tokensPerImage)) });
        await writer.add({ key: raw.key, files });
        samples++;
      }
    }
    await writer.endShard();
    options.onShard?.(s + 1, input.shards.length);
  }
  const { url } = await writer.finish();
  return { url, samples, bad: nonZeroBadCounts(bad) };
}
