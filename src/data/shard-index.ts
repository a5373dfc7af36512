import { z } from 'zod';
import type { ObjectStore } from '../storage/object-store.ts';
import { openStore, type OpenStoreOptions } from '../storage/open-store.ts';
import { PartiError } from '../errors.ts';
import { formatIssues } from '../config/load.ts';
import { parseShardSetUrl, type ShardSetUrl } from './shard-url.ts';
import { StorageError } from '../storage/storage-error.ts';

/**
 * The index beside a shard set (`train.index.json` beside `train-{000000..000009}.tar`): every
 * shard's name, sample count and byte size, so the epoch plan knows the set's shape without
 * opening a shard. Written last by the shard writer, so an index means the shards are complete.
 */
export const shardIndexSchema = z.strictObject({
  format: z.literal('parti-shards'),
  version: z.literal(1),
  shards: z.array(
    z.strictObject({
      /** Object name inside the set's folder, e.g. `train-000000.tar`. */
      name: z.string().min(1),
      /** Samples (keys) in the shard. */
      samples: z.number().int().min(0),
      /** Size of the shard object in bytes. */
      bytes: z.number().int().min(0),
    }),
  ),
  /** Free-form facts about the set (generator, seed, image size, split...). */
  meta: z.record(z.string(), z.unknown()).default({}),
});
export type ShardIndex = z.infer<typeof shardIndexSchema>;
export type ShardInfo = ShardIndex['shards'][number];

export function indexJson(index: ShardIndex): string {
  return `${JSON.stringify(index, null, 1)}\n`;
}

/** A shard set ready to plan and read: its store, shards in URL order, and the index's meta. */
export interface ShardSet {
  url: string;
  store: ObjectStore;
  shards: ShardInfo[];
  meta: Record<string, unknown>;
  /** Total samples (sum of the shards'). */
  samples: number;
  bytes: number;
}

/** Reads and validates an index object. Null when there is none. */
export async function readShardIndex(store: ObjectStore, name: string): Promise<ShardIndex | null> {
  let bytes: Buffer;
  try {
    bytes = await store.get(name);
  } catch (err) {
    if (err instanceof StorageError && err.reason === 'not-found') return null;
    throw err;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new PartiError('data', `${store.url}/${name}: index is not JSON (${(err as Error).message})`);
  }
  const parsed = shardIndexSchema.safeParse(raw);
  if (!parsed.success) throw new PartiError('data', formatIssues(`${store.url}/${name}`, parsed.error.issues));
  return parsed.data;
}

/** Options of openShardSet. */
export interface OpenShardSetOptions {
  /** Use this store instead of opening one for the URL (tests, shared clients). */
  store?: ObjectStore;
  /** Options for the store the URL names (endpoint, credentials...). */
  storeOptions?: OpenStoreOptions;
}

/**
 * Opens a shard set URL (see shard-url.ts) and its index. The shards named by the URL must all be
 * in the index (a subset is fine: `train-{000000..000004}.tar` of a 10-shard set). A folder URL
 * takes every shard of `index.json`, or of the one `*.index.json` in the folder.
 * Throws PartiError('data') naming the index when there is none: `parti data inspect URL
 * --write-index` makes one for shards written by other tools.
 */
export async function openShardSet(url: string, options: OpenShardSetOptions = {}): Promise<ShardSet> {
  const parsed: ShardSetUrl = parseShardSetUrl(url);
  const store = options.store ?? openStore(parsed.storeUrl, options.storeOptions);
  let indexName = parsed.indexName;
  if (parsed.isFolder) {
    const listed = await store.list('');
    const indexes = listed.map((o) => o.key).filter((k) => !k.includes('/') && k.endsWith('index.json'));
    if (!indexes.includes('index.json') && indexes.length === 1) indexName = indexes[0]!;
  }
  const index = await readShardIndex(store, indexName);
  if (!index) {
    throw new PartiError('data', `${store.url}/${indexName}: no shard index beside the shards (make one with: parti data inspect ${url} --write-index)`);
  }
  let shards: ShardInfo[];
  if (parsed.isFolder) {
    shards = index.shards;
  } else {
    const byName = new Map(index.shards.map((s) => [s.name, s]));
    shards = parsed.names.map((name) => {
      const info = byName.get(name);
      if (!info) throw new PartiError('data', `${url}: shard ${name} is not in ${store.url}/${indexName}`);
      return info;
    });
  }
  return {
    url,
    store,
    shards,
    meta: index.meta,
    samples: shards.reduce((n, s) => n + s.samples, 0),
    bytes: shards.reduce((n, s) => n + s.bytes, 0),
  };
}
