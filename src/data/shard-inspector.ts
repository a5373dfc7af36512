import type { Logger } from 'pino';
import type { ObjectStore } from '../storage/object-store.ts';
import { openStore, type OpenStoreOptions } from '../storage/open-store.ts';
import { StorageError } from '../storage/storage-error.ts';
import { ShardSampleReader } from './sample-reader.ts';
import { emptyBadCounts, groupSamples, nonZeroBadCounts, type BadCounts, type BadReason } from './sample-format.ts';
import { indexJson, openShardSet, readShardIndex, type ShardIndex, type ShardInfo, type ShardSet } from './shard-index.ts';
import { parseShardSetUrl } from './shard-url.ts';
import { parseTar } from './tar-format.ts';

/** What `parti data inspect` reports. */
export interface InspectReport {
  url: string;
  shards: number;
  /** Samples the index lists (or the scan found, without an index). */
  samples: number;
  /** Samples that read and decode cleanly. */
  good: number;
  bytes: number;
  /** Skipped samples by reason, as the training reader would count them (only non-zero reasons). */
  bad: Partial<BadCounts>;
  /** Whether an index was found beside the shards (false: built by scanning). */
  indexed: boolean;
  /** Set when --write-index wrote one. */
  indexWritten?: string;
}

/** Options of inspectShards. */
export interface InspectOptions {
  /** Decoded images must be this size (0: any). */
  imageSize?: number;
  maxCaptionBytes?: number;
  /** Write `<prefix>.index.json` from a scan when there is none (or replace it with the scan). */
  writeIndex?: boolean;
  storeOptions?: OpenStoreOptions;
  store?: ObjectStore;
  readTimeoutMs?: number;
  /** Called after each shard, for progress bars. */
  onShard?: (done: number, total: number) => void;
  log?: Logger;
}

/**
 * Scans shards to count their samples (key groups) and sizes. A shard that cannot be read or is not
 * a tar is listed with 0 samples and reported in `failures` (its sample count is unknown).
 */
export async function scanShards(store: ObjectStore, names: readonly string[]): Promise<{ shards: ShardInfo[]; failures: { name: string; reason: BadReason }[] }> {
  const shards: ShardInfo[] = [];
  const failures: { name: string; reason: BadReason }[] = [];
  for (const name of names) {
    let bytes: Buffer;
    try {
      bytes = await store.get(name);
    } catch (err) {
      if (!(err instanceof StorageError)) throw err;
      shards.push({ name, samples: 0, bytes: 0 });
      failures.push({ name, reason: err.reason === 'not-found' ? 'shard-not-found' : err.reason === 'denied' ? 'shard-denied' : err.reason === 'timeout' ? 'shard-timeout' : 'shard-unreadable' });
      continue;
    }
    const tar = parseTar(bytes);
    if (tar.notATar) failures.push({ name, reason: 'not-a-tar' });
    shards.push({ name, samples: groupSamples(tar.entries).length, bytes: bytes.length });
  }
  return { shards, failures };
}

/**
 * Reads every sample of a shard set the way training would (same reader, same checks, same
 * counting) and reports counts. Works without an index by scanning the shards.
 */
export async function inspectShards(url: string, options: InspectOptions = {}): Promise<InspectReport> {
  const parsed = parseShardSetUrl(url);
  const store = options.store ?? openStore(parsed.storeUrl, options.storeOptions);
  try {
    let set: ShardSet;
    let failures: { name: string; reason: BadReason }[] = [];
    let indexed = true;
    let indexWritten: string | undefined;
    const existing = parsed.isFolder ? null : await readShardIndex(store, parsed.indexName);
    if (existing && !options.writeIndex) {
      set = await openShardSet(url, { store });
    } else if (parsed.isFolder && !options.writeIndex) {
      try {
        set = await openShardSet(url, { store });
      } catch {
        ({ set, failures } = await scannedSet(url, store, null));
        indexed = false;
      }
    } else {
      ({ set, failures } = await scannedSet(url, store, parsed.isFolder ? null : parsed.names));
      indexed = false;
      if (options.writeIndex) {
        const index: ShardIndex = { format: 'parti-shards', version: 1, shards: set.shards, meta: existing?.meta ?? {} };
        await store.put(parsed.indexName, Buffer.from(indexJson(index)), { contentType: 'application/json' });
        indexWritten = `${store.url}/${parsed.indexName}`;
      }
    }
    const reader = new ShardSampleReader(set, {
      imageSize: options.imageSize ?? 0,
      maxCaptionBytes: options.maxCaptionBytes ?? 4096,
      readTimeoutMs: options.readTimeoutMs,
      cacheShards: 2,
      log: options.log,
    });
    const bad = emptyBadCounts();
    let good = 0;
    for (let shard = 0; shard < set.shards.length; shard++) {
      const n = set.shards[shard]!.samples;
      for (let start = 0; start < n; start += 256) {
        const refs = [];
        for (let ordinal = start; ordinal < Math.min(n, start + 256); ordinal++) refs.push({ epoch: 0, shard, ordinal });
        const result = await reader.read(refs);
        good += result.samples.length;
      }
      options.onShard?.(shard + 1, set.shards.length);
    }
    for (const [reason, count] of Object.entries(reader.stats.bad)) bad[reason as keyof BadCounts] += count;
    // Without an index a broken shard's sample count is unknown: it counts once.
    for (const f of failures) bad[f.reason]++;
    await reader.close();
    return { url, shards: set.shards.length, samples: set.samples, good, bytes: set.bytes, bad: nonZeroBadCounts(bad), indexed, ...(indexWritten ? { indexWritten } : {}) };
  } finally {
    if (!options.store) await store.close();
  }
}

async function scannedSet(url: string, store: ObjectStore, names: string[] | null): Promise<{ set: ShardSet; failures: { name: string; reason: BadReason }[] }> {
  const shardNames = names ?? (await store.list('')).map((o) => o.key).filter((k) => !k.includes('/') && k.endsWith('.tar'));
  const { shards, failures } = await scanShards(store, shardNames);
  const set: ShardSet = {
    url,
    store,
    shards,
    meta: {},
    samples: shards.reduce((n, s) => n + s.samples, 0),
    bytes: shards.reduce((n, s) => n + s.bytes, 0),
  };
  return { set, failures };
}
