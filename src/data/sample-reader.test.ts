import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { openStore } from '../storage/open-store.ts';
import { EpochPlan, rankSlice } from './epoch-plan.ts';
import { ShardSampleReader } from './sample-reader.ts';
import { openShardSet } from './shard-index.ts';
import { shapesSample } from './shapes.ts';
import { writeShapesSet } from './shapes-shards.ts';
import { openDataset } from './dataset.ts';
import { dataSchema } from '../config/data-schema.ts';

test('shards: write then read round trip through the epoch plan, two ranks, exact pixels and captions', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'parti-data-'));
  const store = openStore(pathToFileURL(dir).href);
  try {
    const { url, index } = await writeShapesSet(store, { samples: 45, seed: 4, imageSize: 32, shardSize: 10, split: 'train' });
    assert.equal(url, `${pathToFileURL(dir).href}/train-{000000..000004}.tar`);
    assert.deepEqual(index.shards.map((s) => s.samples), [10, 10, 10, 10, 5]);
    const set = await openShardSet(url);
    assert.equal(set.samples, 45);
    const plan = new EpochPlan(set.shards, { seed: 9, globalBatch: 8, windowShards: 2 });
    const readers = [0, 1].map(() => new ShardSampleReader(set, { imageSize: 32, cacheShards: 3 }));
    const seen = new Map<string, number>();
    let cursor = EpochPlan.start();
    for (let step = 0; step < Math.ceil(45 / 8); step++) {
      const batch = plan.batchAt(cursor);
      // Prefetch the next step like a worker would, then read this one.
      const next = plan.batchAt(plan.advance(cursor));
      for (let rank = 0; rank < 2; rank++) {
        readers[rank]!.prefetch(rankSlice(next, 2, rank));
        const { samples, skipped } = await readers[rank]!.read(rankSlice(batch, 2, rank));
        assert.deepEqual(skipped, []);
        for (const s of samples) {
          if (s.ref.epoch !== 0) continue;
          const index = Number(s.key.slice('train-'.length));
          const want = shapesSample(index, { seed: 4, imageSize: 32 });
          assert.equal(s.caption, want.caption);
          assert.ok(Buffer.from(s.image).equals(Buffer.from(want.image)), s.key);
          assert.deepEqual(s.metadata, JSON.parse(JSON.stringify(want.attributes)));
          seen.set(s.key, (seen.get(s.key) ?? 0) + 1);
        }
      }
      cursor = plan.advance(cursor);
    }
    assert.equal(seen.size, 45);
    for (const n of seen.values()) assert.equal(n, 1);
    assert.equal(readers[0]!.stats.delivered + readers[1]!.stats.delivered, 48);
    // The same set opened through openDataset, and a subset of its shards by URL.
    const ds = await openDataset(dataSchema.parse({ source: url }), { imageSize: 32 });
    assert.equal(ds.samples, 45);
    await ds.close();
    const sub = await openShardSet(`${pathToFileURL(dir).href}/train-{000001..000002}.tar`);
    assert.deepEqual(sub.shards.map((s) => s.name), ['train-000001.tar', 'train-000002.tar']);
    await assert.rejects(openShardSet(`${pathToFileURL(dir).href}/train-{000004..000005}.tar`), /train-000005.tar is not in/);
    await assert.rejects(openShardSet(`${pathToFileURL(dir).href}/other-{0..1}.tar`), /no shard index/);
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('synthetic dataset: the same samples as the generator, planned like shards', async () => {
  const ds = await openDataset(dataSchema.parse({ source: 'synthetic', synthetic: { samples: 300, seed: 2 } }), { imageSize: 32 });
  assert.deepEqual(ds.shards.map((s) => s.samples), [256, 44]);
  const plan = ds.createPlan({ seed: 0, globalBatch: 16 });
  assert.equal(plan.windowShards, 8);
  const reader = ds.createReader();
  const { samples } = await reader.read(plan.batchAt(EpochPlan.start()));
  assert.equal(samples.length, 16);
  for (const s of samples) {
    const want = shapesSample(s.ref.shard * 256 + s.ref.ordinal, { seed: 2, imageSize: 32 });
    assert.equal(s.caption, want.caption);
  }
  const held = await openDataset(dataSchema.parse({ source: 'synthetic' }), { imageSize: 32, split: 'heldOut' });
  const h = await held.createReader().read([{ epoch: 0, shard: 0, ordinal: 3 }]);
  assert.equal(h.samples[0]!.key, 'heldout-000000003');
});

test('reader: prefetch fetches before read is called; each shard is fetched once, whole, per epoch', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'parti-data-'));
  const inner = openStore(pathToFileURL(dir).href, { file: { fsync: false } });
  try {
    const { url } = await writeShapesSet(inner, { samples: 60, seed: 1, imageSize: 32, shardSize: 10, split: 'train' });
    const gets: string[] = [];
    let announce: (() => void) | null = null;
    // The real store, recording which objects are fetched and how (full object or a range).
    const store = Object.create(inner) as typeof inner;
    store.get = async (key, o) => {
      gets.push(`${key}${o?.start !== undefined || o?.end !== undefined ? ' (range)' : ''}`);
      announce?.();
      return inner.get(key, o);
    };
    const set = await openShardSet(url, { store });
    gets.length = 0; // the index
    const plan = new EpochPlan(set.shards, { seed: 2, globalBatch: 12, windowShards: 3 });
    const reader = new ShardSampleReader(set, { imageSize: 32, cacheShards: 4 });
    const fetched = new Promise<void>((resolve, reject) => {
      announce = resolve;
      setTimeout(() => reject(new Error('prefetch did not fetch within 10 s')), 10_000).unref();
    });
    reader.prefetch(plan.batchAt(EpochPlan.start()));
    await fetched; // read() has not been called yet
    let cursor = EpochPlan.start();
    for (let s = 0; s < 5; s++) {
      if (s < 4) reader.prefetch(plan.batchAt(plan.advance(cursor))); // stay within epoch 0
      assert.equal((await reader.read(plan.batchAt(cursor))).samples.length, 12);
      cursor = plan.advance(cursor);
    }
    assert.equal(gets.length, 6, gets.join(', '));
    assert.equal(new Set(gets).size, 6);
    assert.ok(gets.every((g) => !g.includes('range')));
  } finally {
    await inner.close();
    await rm(dir, { recursive: true, force: true });
  }
});
