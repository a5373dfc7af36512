import type { ObjectStore } from '../storage/object-store.ts';
import { indexJson, type ShardIndex, type ShardInfo } from './shard-index.ts';
import { tarEnd, tarEntry } from './tar-format.ts';
import { PartiError } from '../errors.ts';

/** One sample to write: its key and its files by extension (`png`, `txt`, `json`, `tokens`...). */
export interface SampleToWrite {
  key: string;
  files: { ext: string; data: Uint8Array }[];
}

/** Options of a ShardSetWriter. */
export interface ShardSetWriterOptions {
  /** Shard name prefix: shards are `${prefix}-000000.tar`, the index `${prefix}.index.json`. */
  prefix: string;
  /** Samples per shard (the last shard may hold fewer). */
  shardSize: number;
  /** Stored in the index's `meta`. */
  meta?: Record<string, unknown>;
}

/**
 * Writes a shard set into a store: samples in the order given, `shardSize` per shard, each shard
 * one put (readers see whole shards or none), the index last. The result's `url` is the set's
 * brace pattern, e.g. `file:///data/train-{000000..000009}.tar`.
 */
export class ShardSetWriter {
  private readonly store: ObjectStore;
  private readonly options: ShardSetWriterOptions;
  private pending: Buffer[] = [];
  private pendingSamples = 0;
  private readonly shards: ShardInfo[] = [];
  private readonly keys = new Set<string>();
  private finished = false;

  constructor(store: ObjectStore, options: ShardSetWriterOptions) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]*$/.test(options.prefix)) throw new PartiError('usage', `shard prefix ${JSON.stringify(options.prefix)}: letters, digits, - and _`);
    if (!Number.isInteger(options.shardSize) || options.shardSize < 1) throw new PartiError('usage', `--shard-size: must be an integer >= 1, got ${options.shardSize}`);
    this.store = store;
    this.options = options;
  }

  /** Adds a sample; writes a shard when it is full. Keys must be unique and contain no dot. */
  async add(sample: SampleToWrite): Promise<void> {
    if (this.finished) throw new PartiError('illegal-state', 'ShardSetWriter.add after finish');
    if (!sample.key || sample.key.includes('.') || this.keys.has(sample.key)) {
      throw new PartiError('data', `sample key ${JSON.stringify(sample.key)}: keys must be unique, non-empty and without dots`);
    }
    this.keys.add(sample.key);
    for (const file of sample.files) this.pending.push(tarEntry(`${sample.key}.${file.ext}`, file.data));
    this.pendingSamples++;
    if (this.pendingSamples >= this.options.shardSize) await this.flush();
  }

  /** Ends the current shard now (to mirror another set's shard boundaries); a no-op when it is empty. */
  async endShard(): Promise<void> {
    await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.pendingSamples === 0) return;
    const name = `${this.options.prefix}-${String(this.shards.length).padStart(6, '0')}.tar`;
    const body = Buffer.concat([...this.pending, tarEnd()]);
    await this.store.put(name, body, { contentType: 'application/x-tar' });
    this.shards.push({ name, samples: this.pendingSamples, bytes: body.length });
    this.pending = [];
    this.pendingSamples = 0;
  }

  /** Writes the last shard and then the index. */
  async finish(): Promise<{ index: ShardIndex; url: string; indexName: string }> {
    if (this.finished) throw new PartiError('illegal-state', 'ShardSetWriter.finish called twice');
    await this.flush();
    this.finished = true;
    const index: ShardIndex = { format: 'parti-shards', version: 1, shards: this.shards, meta: this.options.meta ?? {} };
    const indexName = `${this.options.prefix}.index.json`;
    await this.store.put(indexName, Buffer.from(indexJson(index)), { contentType: 'application/json' });
    const last = Math.max(0, this.shards.length - 1);
    const range = this.shards.length === 1 ? '000000' : `{000000..${String(last).padStart(6, '0')}}`;
    const base = this.store.url.endsWith('/') ? this.store.url.slice(0, -1) : this.store.url;
    return { index, url: `${base}/${this.options.prefix}-${range}.tar`, indexName };
  }
}
