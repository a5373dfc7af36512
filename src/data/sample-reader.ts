import type { Logger } from 'pino';
import { PartiError } from '../errors.ts';
import { log as rootLog } from '../observability/log.ts';
import { StorageError } from '../storage/storage-error.ts';
import type { SampleRef } from './epoch-plan.ts';
import {
  decodeSample,
  emptyBadCounts,
  groupSamples,
  type BadCounts,
  type BadReason,
  type DecodedSample,
  type RawSample,
  type SampleChecks,
  type SampleOutcome,
} from './sample-format.ts';
import type { ShardSet } from './shard-index.ts';
import { parseTar } from './tar-format.ts';
import { Semaphore } from '../storage/semaphore.ts';

/**
 * Reads the samples a rank was given (SampleRefs from the epoch plan) and decodes them.
 *
 * Running ahead: `prefetch(refs)` starts fetching shards and decoding samples for steps to come and
 * returns at once; `read(refs)` then finds them ready. Shards are fetched whole (one sequential
 * read per shard, through the ObjectStore, so file:// and s3:// are one code path), parsed once
 * and kept in a small LRU; image decoding runs in sharp's thread pool. Nothing here blocks the
 * JavaScript thread for long, so a training loop on it keeps running while data is read.
 *
 * Bad input: a sample that cannot be used is skipped and counted by reason (`stats.bad`) once, when
 * it is read, and logged with its shard and key; a shard that is missing, denied, times out or is
 * not a tar makes each of its samples skipped with that reason. With policy `fail`, `read` rejects
 * with PartiError('data') naming the shard, key and reason instead. Every fetch has a deadline.
 */

/** A decoded sample with the ref it was read for. */
export interface ReadSample extends DecodedSample {
  ref: SampleRef;
}

/** A ref that gave no sample. */
export interface SkippedSample {
  ref: SampleRef;
  /** Shard object name (or URL for synthetic sets). */
  shard: string;
  /** The sample's key when the shard could be read that far, else null. */
  key: string | null;
  reason: BadReason;
  detail: string;
}

export interface ReadResult {
  /** Good samples in the order of the refs. */
  samples: ReadSample[];
  skipped: SkippedSample[];
}

export interface SampleReaderStats {
  /** Samples returned by read(). */
  delivered: number;
  /** Refs skipped, by reason. delivered + sum(bad) = refs read. */
  bad: BadCounts;
}

/** What a worker reads through: shard sets and the in-memory synthetic set implement it. */
export interface SampleReader {
  /** Starts reading and decoding these refs in the background; returns at once. */
  prefetch(refs: readonly SampleRef[]): void;
  /** The samples of these refs (waiting for prefetched work), bad ones skipped and counted. */
  read(refs: readonly SampleRef[]): Promise<ReadResult>;
  readonly stats: SampleReaderStats;
  /**
   * Forgets prefetched samples not read yet (call it when the plan changes under the worker, e.g. a
   * new world size gives it other refs); they would otherwise wait until evicted.
   */
  discardPrefetched(): void;
  /** Drops caches; further reads fail. Does not close the store (its owner does). */
  close(): Promise<void>;
}

/** Options of a ShardSampleReader; all have defaults. */
export interface SampleReaderOptions {
  /** Images must decode to exactly this square size (default 0: any size). */
  imageSize?: number;
  /** Captions longer than this many UTF-8 bytes are bad (default 4096, as data.maxCaptionBytes). */
  maxCaptionBytes?: number;
  /** `.tokens` must hold exactly this many tokens (default 0: not checked). */
  tokenCount?: number;
  /** `skip` (default) skips and counts bad samples; `fail` makes read() reject. */
  policy?: 'skip' | 'fail';
  /** Deadline of one shard fetch, retries included, in ms (default 120000). */
  readTimeoutMs?: number;
  /** Parsed shards kept in memory (default 12; keep it above the plan's windowShards). */
  cacheShards?: number;
  /** Samples decoded at once (default 4). */
  decodeConcurrency?: number;
  /**
   * Decoded samples kept waiting for read() (default 4096); the oldest prefetches are dropped past
   * it (and decoded again if read later). At 256x256 a decoded sample is 192 KiB.
   */
  maxPrefetched?: number;
  /** Logger for bad samples (default: the process logger, child {component: 'data'}). */
  log?: Logger;
}

type LoadedShard =
  | { ok: true; samples: RawSample[]; truncated: boolean; problems: number }
  | { ok: false; reason: BadReason; detail: string };


type Resolved = { ok: true; sample: DecodedSample } | { ok: false; reason: BadReason; detail: string; key: string | null };

function storageReason(err: unknown): BadReason {
  if (err instanceof StorageError) {
    if (err.reason === 'not-found') return 'shard-not-found';
    if (err.reason === 'denied') return 'shard-denied';
    if (err.reason === 'timeout' || err.reason === 'aborted') return 'shard-timeout';
  }
  return 'shard-unreadable';
}

/** Reads samples of a ShardSet. */
export class ShardSampleReader implements SampleReader {
  readonly stats: SampleReaderStats = { delivered: 0, bad: emptyBadCounts() };
  private readonly set: ShardSet;
  private readonly checks: SampleChecks;
  private readonly policy: 'skip' | 'fail';
  private readonly readTimeoutMs: number;
  private readonly cacheShards: number;
  private readonly maxPrefetched: number;
  private readonly decodeLimit: Semaphore;
  private readonly log: Logger;
  private readonly shards = new Map<number, Promise<LoadedShard>>();
  private readonly pending = new Map<string, Promise<Resolved>>();
  private readonly loggedShards = new Set<number>();
  private closed = false;

  constructor(set: ShardSet, options: SampleReaderOptions = {}) {
    this.set = set;
    this.checks = {
      imageSize: options.imageSize ?? 0,
      maxCaptionBytes: options.maxCaptionBytes ?? 4096,
      tokenCount: options.tokenCount ?? 0,
    };
    this.policy = options.policy ?? 'skip';
    this.readTimeoutMs = options.readTimeoutMs ?? 120_000;
    this.cacheShards = Math.max(1, options.cacheShards ?? 12);
    this.maxPrefetched = Math.max(1, options.maxPrefetched ?? 4096);
    this.decodeLimit = new Semaphore(Math.max(1, options.decodeConcurrency ?? 4));
    this.log = options.log ?? rootLog.child({ component: 'data' });
  }

  private shardName(shard: number): string {
    return this.set.shards[shard]?.name ?? `#${shard}`;
  }

  private async fetchShard(shard: number): Promise<LoadedShard> {
    const name = this.set.shards[shard]!.name;
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    // The store is asked to abort, and the deadline also wins the race if a store ignores the signal.
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        controller.abort();
        reject(new StorageError(this.set.store.url, 'get', name, 'timeout', `no answer within ${this.readTimeoutMs} ms`));
      }, this.readTimeoutMs);
    });
    let bytes: Buffer;
    try {
      bytes = await Promise.race([this.set.store.get(name, { signal: controller.signal }), deadline]);
    } catch (err) {
      return { ok: false, reason: storageReason(err), detail: (err as Error).message };
    } finally {
      clearTimeout(timer);
    }
    const tar = parseTar(bytes);
    if (tar.notATar) return { ok: false, reason: 'not-a-tar', detail: `${bytes.length} bytes with no tar header` };
    return { ok: true, samples: groupSamples(tar.entries), truncated: tar.truncated, problems: tar.problems.length };
  }

  private loadShard(shard: number): Promise<LoadedShard> {
    let loaded = this.shards.get(shard);
    if (loaded) {
      // Refresh its place in the LRU.
      this.shards.delete(shard);
      this.shards.set(shard, loaded);
      return loaded;
    }
    loaded = this.fetchShard(shard);
    this.shards.set(shard, loaded);
    while (this.shards.size > this.cacheShards) this.shards.delete(this.shards.keys().next().value!);
    return loaded;
  }

  private async resolve(ref: SampleRef): Promise<Resolved> {
    if (!Number.isInteger(ref.shard) || ref.shard < 0 || ref.shard >= this.set.shards.length) {
      return { ok: false, reason: 'missing-sample', detail: `no shard #${ref.shard} in ${this.set.url}`, key: null };
    }
    const loaded = await this.loadShard(ref.shard);
    if (!loaded.ok) return { ...loaded, key: null };
    const raw = loaded.samples[ref.ordinal];
    if (!raw) {
      return loaded.truncated
        ? { ok: false, reason: 'truncated-tar', detail: `shard ends before sample ${ref.ordinal}`, key: null }
        : { ok: false, reason: 'missing-sample', detail: `shard holds ${loaded.samples.length} samples, index says more (no sample ${ref.ordinal})`, key: null };
    }
    const outcome: SampleOutcome = await this.decodeLimit.run(() => decodeSample(raw, this.checks));
    return outcome.ok ? outcome : { ...outcome, key: raw.key };
  }

  private start(ref: SampleRef): Promise<Resolved> {
    const id = `${ref.shard}:${ref.ordinal}`;
    let p = this.pending.get(id);
    if (!p) {
      p = this.resolve(ref).catch((err: unknown): Resolved => ({ ok: false, reason: 'shard-unreadable', detail: String((err as Error)?.message ?? err), key: null }));
      this.pending.set(id, p);
      while (this.pending.size > this.maxPrefetched) this.pending.delete(this.pending.keys().next().value!);
    }
    return p;
  }

  prefetch(refs: readonly SampleRef[]): void {
    if (this.closed) return;
    for (const ref of refs) void this.start(ref);
  }

  async read(refs: readonly SampleRef[]): Promise<ReadResult> {
    if (this.closed) throw new PartiError('illegal-state', 'SampleReader.read after close');
    const outcomes = await Promise.all(refs.map((ref) => this.start(ref)));
    const samples: ReadSample[] = [];
    const skipped: SkippedSample[] = [];
    refs.forEach((ref, i) => {
      this.pending.delete(`${ref.shard}:${ref.ordinal}`);
      const o = outcomes[i]!;
      if (o.ok) {
        samples.push({ ...o.sample, ref });
        return;
      }
      const shard = this.shardName(ref.shard);
      skipped.push({ ref, shard, key: o.key, reason: o.reason, detail: o.detail });
    });
    for (const s of skipped) {
      const where = `${this.set.store.url}/${s.shard}${s.key ? ` key ${s.key}` : ''}`;
      if (this.policy === 'fail') throw new PartiError('data', `${where}: bad sample (${s.reason}): ${s.detail}`);
    }
    for (const s of skipped) {
      this.stats.bad[s.reason]++;
      const shardLevel = s.key === null;
      // A broken shard is logged once, not once per sample the plan takes from it.
      if (shardLevel && this.loggedShards.has(s.ref.shard)) continue;
      if (shardLevel) this.loggedShards.add(s.ref.shard);
      this.log.warn({ shard: `${this.set.store.url}/${s.shard}`, key: s.key, reason: s.reason, ordinal: s.ref.ordinal }, `skipped bad sample: ${s.detail}`);
    }
    this.stats.delivered += samples.length;
    return { samples, skipped };
  }

  discardPrefetched(): void {
    this.pending.clear();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.shards.clear();
    this.pending.clear();
  }
}
