import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pino from 'pino';
import sharp from 'sharp';
import { tarArchive } from './tar-format.ts';
import { inspectShards } from './shard-inspector.ts';
import { openShardSet } from './shard-index.ts';

test('inspect --write-index: shards made by another tool get an index, then open as a set', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'parti-inspect-'));
  try {
    const png = await sharp(Buffer.alloc(16 * 16 * 3, 9), { raw: { width: 16, height: 16, channels: 3 } }).png().toBuffer();
    for (let s = 0; s < 3; s++) {
      const files = Array.from({ length: s + 2 }, (_, i) => [
        { name: `s${s}k${i}.png`, data: png },
        { name: `s${s}k${i}.txt`, data: Buffer.from(`caption ${s} ${i}`) },
      ]).flat();
      await writeFile(path.join(dir, `ext-${s}.tar`), tarArchive(files));
    }
    const url = `${pathToFileURL(dir).href}/ext-{0..2}.tar`;
    await assert.rejects(openShardSet(url), /no shard index/);
    const quiet = pino({ level: 'silent' });
    const scanned = await inspectShards(url, { log: quiet });
    assert.equal(scanned.indexed, false);
    assert.equal(scanned.samples, 9);
    const written = await inspectShards(url, { writeIndex: true, imageSize: 16, log: quiet });
    assert.equal(written.indexWritten, `${pathToFileURL(dir).href}/ext.index.json`);
    assert.equal(written.good, 9);
    const set = await openShardSet(url);
    assert.deepEqual(set.shards.map((s) => s.samples), [2, 3, 4]);
    const again = await inspectShards(url, { imageSize: 32, log: quiet });
    assert.equal(again.indexed, true);
    assert.deepEqual(again.bad, { 'wrong-image-size': 9 });
    await set.store.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
