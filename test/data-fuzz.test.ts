import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import fc from 'fast-check';
import pino from 'pino';
import { openStore } from '../src/storage/open-store.ts';
import type { ObjectStore } from '../src/storage/object-store.ts';
import { writeShapesSet } from '../src/data/shapes-shards.ts';
import { openShardSet } from '../src/data/shard-index.ts';
import { ShardSampleReader } from '../src/data/sample-reader.ts';
import { parseTar } from '../src/data/tar-format.ts';
import { splitEntryName, BAD_REASONS } from '../src/data/sample-format.ts';
import { shapesSample } from '../src/data/shapes.ts';

/**
 * Corrupts random bytes of a shard (and sometimes truncates it or replaces it with garbage), then
 * reads every sample of the set: nothing may throw or hang, every ref is either delivered or
 * skipped with one reason, and every sample whose bytes were not touched comes back exact.
 */
let dir: string;
let store: ObjectStore;
let original: Buffer;
const ranges = new Map<string, [number, number]>();
const quiet = pino({ level: 'silent' });

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'parti-fuzz-'));
  store = openStore(pathToFileURL(dir).href, { file: { fsync: false } });
  await writeShapesSet(store, { samples: 14, seed: 1, imageSize: 32, shardSize: 7, split: 'train' });
  original = await readFile(path.join(dir, 'train-000000.tar'));
  for (const e of parseTar(original).entries) {
    const { key } = splitEntryName(e.name);
    const end = e.headerOffset + 512 + Math.ceil(e.data.length / 512) * 512;
    const r = ranges.get(key);
    ranges.set(key, r ? [Math.min(r[0], e.headerOffset), Math.max(r[1], end)] : [e.headerOffset, end]);
  }
});

after(async () => {
  await store?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('fuzz: corrupted shards never crash or hang, and the counts add up', async () => {
  const url = `${pathToFileURL(dir).href}/train-{000000..000001}.tar`;
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }), { minLength: 0, maxLength: 12 }),
      fc.option(fc.nat(), { nil: null }),
      fc.boolean(),
      async (flips, cutAt, garbage) => {
        let bytes = Buffer.from(original);
        const touched: number[] = [];
        for (const f of flips) {
          const at = f.at % bytes.length;
          bytes[at]! ^= f.xor;
          touched.push(at);
        }
        const cut = cutAt === null ? bytes.length : cutAt % (bytes.length + 1);
        bytes = bytes.subarray(0, cut);
        if (garbage && flips.length > 8) bytes = Buffer.from(Array.from({ length: cut }, (_, i) => (i * 7919 + 13) & 0xff));
        await writeFile(path.join(dir, 'train-000000.tar'), bytes);
        const set = await openShardSet(url, { store });
        const reader = new ShardSampleReader(set, { imageSize: 32, readTimeoutMs: 5000, log: quiet });
        const refs = [0, 1].flatMap((shard) => Array.from({ length: 7 }, (_, ordinal) => ({ epoch: 0, shard, ordinal })));
        const { samples, skipped } = await reader.read(refs);
        assert.equal(samples.length + skipped.length, refs.length);
        const bad = Object.values(reader.stats.bad).reduce((a, b) => a + b, 0);
        assert.equal(bad, skipped.length);
        assert.equal(reader.stats.delivered, samples.length);
        for (const s of skipped) assert.ok(BAD_REASONS.includes(s.reason));
        const keys = samples.map((s) => s.key);
        assert.equal(new Set(keys).size, keys.length, 'a key delivered twice');
        const delivered = new Map(samples.map((s) => [s.key, s]));
        for (let i = 0; i < 14; i++) {
          const want = shapesSample(i, { seed: 1, imageSize: 32 });
          const inFirst = i < 7;
          const range = ranges.get(want.key);
          const intact = !inFirst || (!(garbage && flips.length > 8) && range && range[1] <= cut && !touched.some((t) => t >= range[0] && t < range[1]));
          const got = delivered.get(want.key);
          if (intact) {
            assert.ok(got, `intact sample ${want.key} was not delivered (skipped: ${JSON.stringify(skipped.map((s) => s.reason))})`);
          }
          if (got && intact) {
            assert.equal(got.caption, want.caption);
            assert.ok(Buffer.from(got.image).equals(Buffer.from(want.image)));
          }
          if (got) assert.equal(got.image.length, 32 * 32 * 3);
        }
        await reader.close();
      },
    ),
    { numRuns: 150, seed: 20261127 },
  );
});
