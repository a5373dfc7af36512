import { PartiError } from '../errors.ts';
import type { SampleRef } from '../data/epoch-plan.ts';
import { ShardSampleReader } from '../data/sample-reader.ts';
import { openShardSet, readShardIndex } from '../data/shard-index.ts';
import { parseShardSetUrl } from '../data/shard-url.ts';
import { openStore } from '../storage/open-store.ts';

/** Images and captions read from a shard set, in shard order. */
export interface EvalSamples {
  /** The shard set URL read. */
  url: string;
  captions: string[];
  /** RGB bytes, imageSize^2 * 3 each. */
  images: Uint8Array[];
  imageSize: number;
  /** Samples skipped as bad (by the reader's reasons). */
  skipped: number;
}

/** The two shard sets of an evaluation data set. */
export interface EvalDataUrls {
  train: string;
  heldOut: string;
}

/**
 * Resolves `--data`: a folder written by `parti data synth` or `parti data import` holding
 * `train.index.json` and `heldout.index.json` (each set named by its index's shards), or a shard
 * set URL of the training images with `heldOut` naming the held-out set.
 */
export async function resolveEvalData(data: string, heldOut?: string): Promise<EvalDataUrls> {
  const parsed = parseShardSetUrl(data);
  if (!parsed.isFolder) {
    if (!heldOut) throw new PartiError('usage', `--held-out: required when --data names shards (${data}) rather than a folder with train and heldout sets`);
    return { train: data, heldOut };
  }
  const store = openStore(parsed.storeUrl);
  try {
    const setUrl = async (prefix: string): Promise<string | null> => {
      const index = await readShardIndex(store, `${prefix}.index.json`);
      if (!index || index.shards.length === 0) return null;
      // `train-{000000,000001}.tar` keeps the index name (train.index.json) that the reader derives.
      const ids = index.shards.map((s) => {
        if (!s.name.startsWith(`${prefix}-`) || !s.name.endsWith('.tar')) throw new PartiError('data', `${data}/${prefix}.index.json: shard ${s.name} is not named ${prefix}-N.tar`);
        return s.name.slice(prefix.length + 1, -4);
      });
      const braces = ids.length === 1 ? `${ids[0]}..${ids[0]}` : ids.join(',');
      return `${parsed.storeUrl.replace(/\/$/, '')}/${prefix}-{${braces}}.tar`;
    };
    const train = await setUrl('train');
    if (!train) throw new PartiError('data', `${data}: no train.index.json (write the set with parti data synth, or name the shards)`);
    const held = heldOut ?? (await setUrl('heldout'));
    if (!held) throw new PartiError('data', `${data}: no heldout.index.json and no --held-out (parti data synth writes a held-out split)`);
    return { train, heldOut: held };
  } finally {
    await store.close();
  }
}

/**
 * Reads the first `limit` samples of a shard set (all when absent), decoded to `imageSize`;
 * images of another size are skipped as bad samples.
 */
export async function readEvalSamples(url: string, imageSize: number, limit = Infinity): Promise<EvalSamples> {
  const set = await openShardSet(url);
  const reader = new ShardSampleReader(set, { imageSize, policy: 'skip', cacheShards: 2 });
  const captions: string[] = [];
  const images: Uint8Array[] = [];
  let skipped = 0;
  try {
    for (let shard = 0; shard < set.shards.length && images.length < limit; shard++) {
      const count = Math.min(set.shards[shard]!.samples, limit - images.length);
      const refs: SampleRef[] = Array.from({ length: count }, (_, ordinal) => ({ epoch: 0, shard, ordinal }));
      const { samples, skipped: bad } = await reader.read(refs);
      skipped += bad.length;
      for (const s of samples) {
        captions.push(s.caption);
        images.push(s.image);
      }
    }
  } finally {
    await reader.close();
    await set.store.close();
  }
  if (images.length === 0) throw new PartiError('data', `${url}: no readable ${imageSize}x${imageSize} samples (${skipped} skipped as bad)`);
  return { url, captions, images, imageSize, skipped };
}
