import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { startS3rver, type S3rverHandle } from './helpers/s3rver.ts';
import { S3Store } from '../src/storage/s3-store.ts';
import { writeShapesSet } from '../src/data/shapes-shards.ts';
import { openShardSet } from '../src/data/shard-index.ts';
import { EpochPlan, rankSlice } from '../src/data/epoch-plan.ts';
import { ShardSampleReader } from '../src/data/sample-reader.ts';
import { inspectShards } from '../src/data/shard-inspector.ts';
import { shapesSample } from '../src/data/shapes.ts';

/** The same shard code path against S3 (s3rver on 127.0.0.1, started by the test). */
let server: S3rverHandle;
const quiet = pino({ level: 'silent' });

before(async () => {
  server = await startS3rver({ bucket: 'parti-data' });
});
after(async () => {
  await server?.stop();
});

test('s3: shards written to and read from S3 through the epoch plan, a missing shard counted', { timeout: 60_000 }, async () => {
  const s3 = { endpoint: server.endpoint, credentials: server.credentials };
  const store = new S3Store(`s3://${server.bucket}/ds`, s3);
  try {
    const { url } = await writeShapesSet(store, { samples: 30, seed: 8, imageSize: 32, shardSize: 10, split: 'train' });
    assert.equal(url, `s3://${server.bucket}/ds/train-{000000..000002}.tar`);
    const set = await openShardSet(url, { storeOptions: { s3 } });
    assert.equal(set.samples, 30);
    const plan = new EpochPlan(set.shards, { seed: 1, globalBatch: 6, windowShards: 2 });
    const readers = [0, 1, 2].map(() => new ShardSampleReader(set, { imageSize: 32, log: quiet }));
    const keys = new Set<string>();
    let cursor = EpochPlan.start();
    for (let step = 0; step < 5; step++) {
      const batch = plan.batchAt(cursor);
      for (let rank = 0; rank < 3; rank++) {
        const { samples, skipped } = await readers[rank]!.read(rankSlice(batch, 3, rank));
        assert.deepEqual(skipped, []);
        for (const s of samples) {
          const want = shapesSample(Number(s.key.slice(6)), { seed: 8, imageSize: 32 });
          assert.equal(s.caption, want.caption);
          assert.ok(Buffer.from(s.image).equals(Buffer.from(want.image)));
          keys.add(s.key);
        }
      }
      cursor = plan.advance(cursor);
    }
    assert.equal(keys.size, 30);
    await set.store.close();

    await store.delete('train-000001.tar');
    const report = await inspectShards(url, { storeOptions: { s3 }, imageSize: 32, log: quiet });
    assert.deepEqual({ shards: report.shards, samples: report.samples, good: report.good, bad: report.bad }, { shards: 3, samples: 30, good: 20, bad: { 'shard-not-found': 10 } });
  } finally {
    await store.close();
  }
});
