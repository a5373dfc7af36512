import type { DataConfig } from '../config/data-schema.ts';
import type { OpenStoreOptions } from '../storage/open-store.ts';
import { EpochPlan, type SampleRef } from './epoch-plan.ts';
import { emptyBadCounts } from './sample-format.ts';
import { ShardSampleReader, type ReadResult, type ReadSample, type SampleReader, type SampleReaderOptions, type SampleReaderStats } from './sample-reader.ts';
import { openShardSet, type ShardInfo, type ShardSet } from './shard-index.ts';
import { shapesSample, type ShapesSplit } from './shapes.ts';
import { PartiError } from '../errors.ts';

/**
 * The entry point for training code: a dataset from the `data` config section, whether it is the
 * in-memory shapes set (`source: synthetic`) or a shard set URL.
 *
 *   const ds = await openDataset(config.data, { imageSize: 32 });
 *   const plan = new EpochPlan(ds.shards, { seed, globalBatch });   // coordinator and workers
 *   const reader = ds.createReader();                                 // workers only
 *   reader.prefetch(nextRefs); const { samples } = await reader.read(myRefs);
 */
export interface Dataset {
  /** What the data came from, for logs (a URL or `synthetic:seed=S`). */
  source: string;
  /** Shards with their sample counts: the input of EpochPlan. Synthetic sets have virtual shards. */
  shards: ShardInfo[];
  samples: number;
  /** The config's data.windowShards, for the plan. */
  windowShards: number;
  /** Steps a worker should prefetch ahead (data.reader.prefetchSteps). */
  prefetchSteps: number;
  /** The epoch plan of this dataset: same (seed, globalBatch) gives the same plan everywhere. */
  createPlan(options: { seed: number; globalBatch: number }): EpochPlan;
  /** A new reader (one per worker). */
  createReader(options?: SampleReaderOptions): SampleReader;
  /** Releases the store. Readers made from it must not be used afterwards. */
  close(): Promise<void>;
}

export interface OpenDatasetOptions {
  /** The model's image size; images of another size are bad samples. */
  imageSize: number;
  /** `train` (default: `source`) or `heldOut` (`heldOut`; for synthetic, the held-out captions). */
  split?: ShapesSplit;
  /** Tokens per image, to check `.tokens` (0 or absent: not checked). */
  tokenCount?: number;
  /** Defaults for readers made by createReader. */
  reader?: SampleReaderOptions;
  storeOptions?: OpenStoreOptions;
}

/** Virtual shard size of the synthetic set: the plan shuffles within windows of shards. */
export const SYNTHETIC_SHARD_SIZE = 256;

/** The virtual shards of a synthetic set of `samples` samples. */
export function syntheticShards(samples: number): ShardInfo[] {
  const shards: ShardInfo[] = [];
  for (let start = 0, i = 0; start < samples; start += SYNTHETIC_SHARD_SIZE, i++) {
    shards.push({ name: `synthetic-${String(i).padStart(6, '0')}`, samples: Math.min(SYNTHETIC_SHARD_SIZE, samples - start), bytes: 0 });
  }
  return shards;
}

/** The shapes set generated on the fly: sample `ordinal` of virtual shard `shard` is index shard*256+ordinal. */
export class SyntheticSampleReader implements SampleReader {
  readonly stats: SampleReaderStats = { delivered: 0, bad: emptyBadCounts() };
  constructor(
    private readonly opts: { seed: number; imageSize: number; samples: number; split: ShapesSplit },
  ) {}

  prefetch(): void {
    // Generation is synchronous and fast (tens of microseconds at 32x32): nothing to run ahead.
  }

  async read(refs: readonly SampleRef[]): Promise<ReadResult> {
    const samples: ReadSample[] = refs.map((ref) => {
      const index = ref.shard * SYNTHETIC_SHARD_SIZE + ref.ordinal;
      if (!Number.isInteger(index) || index < 0 || index >= this.opts.samples || ref.ordinal >= SYNTHETIC_SHARD_SIZE) {
        throw new PartiError('data', `synthetic set: no sample shard ${ref.shard} ordinal ${ref.ordinal} (set has ${this.opts.samples})`);
      }
      const s = shapesSample(index, { seed: this.opts.seed, imageSize: this.opts.imageSize, split: this.opts.split });
      return {
        ref,
        key: s.key,
        caption: s.caption,
        image: s.image,
        width: this.opts.imageSize,
        height: this.opts.imageSize,
        tokens: null,
        metadata: s.attributes,
      };
    });
    this.stats.delivered += samples.length;
    return { samples, skipped: [] };
  }

  discardPrefetched(): void {}

  async close(): Promise<void> {}
}

/** Opens the dataset the data config names (see Dataset). */
export async function openDataset(config: DataConfig, options: OpenDatasetOptions): Promise<Dataset> {
  const split = options.split ?? 'train';
  const readerDefaults: SampleReaderOptions = {
    imageSize: options.imageSize,
    maxCaptionBytes: config.maxCaptionBytes,
    tokenCount: options.tokenCount ?? 0,
    policy: config.badSamplePolicy,
    readTimeoutMs: config.reader.readTimeoutMs,
    cacheShards: Math.max(config.reader.cacheShards, config.windowShards + 1),
    decodeConcurrency: config.reader.decodeConcurrency,
    ...options.reader,
  };
  const planning = {
    windowShards: config.windowShards,
    prefetchSteps: config.reader.prefetchSteps,
  };
  if (config.source === 'synthetic') {
    const { seed } = config.synthetic;
    // The held-out synthetic set is a tenth of the training set's size (at least 64 samples).
    const samples = split === 'train' ? config.synthetic.samples : Math.max(64, Math.ceil(config.synthetic.samples / 10));
    return {
      source: `synthetic:seed=${seed}:${split}`,
      shards: syntheticShards(samples),
      samples,
      ...planning,
      createPlan: (o) => new EpochPlan(syntheticShards(samples), { ...o, windowShards: config.windowShards }),
      createReader: () => new SyntheticSampleReader({ seed, imageSize: options.imageSize, samples, split }),
      close: async () => {},
    };
  }
  const url = split === 'train' ? config.source : config.heldOut;
  if (!url) throw new PartiError('config', 'data.heldOut: no held-out shard set configured');
  const set: ShardSet = await openShardSet(url, { storeOptions: options.storeOptions });
  return {
    source: url,
    shards: set.shards,
    samples: set.samples,
    ...planning,
    createPlan: (o) => new EpochPlan(set.shards, { ...o, windowShards: config.windowShards }),
    createReader: (o) => new ShardSampleReader(set, { ...readerDefaults, ...o }),
    close: () => set.store.close(),
  };
}
