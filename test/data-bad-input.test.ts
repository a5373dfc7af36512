import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import pino from 'pino';
import sharp from 'sharp';
import { openStore } from '../src/storage/open-store.ts';
import type { ObjectStore } from '../src/storage/object-store.ts';
import { StorageError } from '../src/storage/storage-error.ts';
import { ShardSampleReader } from '../src/data/sample-reader.ts';
import { openShardSet, indexJson, type ShardIndex } from '../src/data/shard-index.ts';
import { tarArchive } from '../src/data/tar-format.ts';
import { encodeTokens } from '../src/data/sample-format.ts';
import { inspectShards } from '../src/data/shard-inspector.ts';
import { PartiError } from '../src/errors.ts';

const png = (size: number) => sharp(Buffer.alloc(size * size * 3, 90), { raw: { width: size, height: size, channels: 3 } }).png().toBuffer();
const txt = (s: string) => Buffer.from(s, 'utf8');

/** A store that behaves like `inner` except for objects it was told to stall on or deny. */
class FaultyStore implements ObjectStore {
  constructor(
    private readonly inner: ObjectStore,
    private readonly faults: Record<string, 'stall' | 'deny'>,
  ) {}
  get url() {
    return this.inner.url;
  }
  async get(key: string, o?: { signal?: AbortSignal }) {
    const fault = this.faults[key];
    if (fault === 'deny') throw new StorageError(this.url, 'get', key, 'denied', 'HTTP 403 AccessDenied');
    if (fault === 'stall') return new Promise<Buffer>(() => {}); // never answers and ignores the signal
    return this.inner.get(key, o);
  }
  getStream: ObjectStore['getStream'] = (k, o) => this.inner.getStream(k, o);
  put: ObjectStore['put'] = (k, b, o) => this.inner.put(k, b, o);
  head: ObjectStore['head'] = (k) => this.inner.head(k);
  list: ObjectStore['list'] = (p) => this.inner.list(p);
  delete: ObjectStore['delete'] = (k) => this.inner.delete(k);
  cleanupIncomplete: ObjectStore['cleanupIncomplete'] = (p, d) => this.inner.cleanupIncomplete(p, d);
  close: ObjectStore['close'] = () => this.inner.close();
}

test('bad input: every kind is skipped, counted by reason and logged with shard and key; policy fail stops with the message', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'parti-bad-'));
  try {
    const good = await png(32);
    // Shard 0: one sample of each sample-level problem, between good ones.
    const shard0 = tarArchive([
      { name: 'g1.png', data: good }, { name: 'g1.txt', data: txt('a red circle') },
      { name: 'nocap.png', data: good },
      { name: 'noimg.txt', data: txt('lonely caption') },
      { name: 'empty.png', data: Buffer.alloc(0) }, { name: 'empty.txt', data: txt('x') },
      { name: 'junk.png', data: Buffer.from('definitely not a png') }, { name: 'junk.txt', data: txt('x') },
      { name: 'small.png', data: await png(16) }, { name: 'small.txt', data: txt('x') },
      { name: 'latin.png', data: good }, { name: 'latin.txt', data: Buffer.from([0x63, 0x61, 0xff, 0xfe]) },
      { name: 'long.png', data: good }, { name: 'long.txt', data: txt('y'.repeat(300)) },
      { name: 'meta.png', data: good }, { name: 'meta.txt', data: txt('x'), }, { name: 'meta.json', data: txt('{"broken":') },
      { name: 'tok.png', data: good }, { name: 'tok.txt', data: txt('x') }, { name: 'tok.tokens', data: Buffer.alloc(5) },
      { name: 'g1.jpg', data: good }, { name: 'g1.txt', data: txt('again') },
      { name: 'g2.png', data: good }, { name: 'g2.txt', data: txt('a blue square') }, { name: 'g2.tokens', data: encodeTokens([1, 2, 3, 4]) },
      { name: 'g3.webp', data: await sharp(Buffer.alloc(32 * 32 * 3, 200), { raw: { width: 32, height: 32, channels: 3 } }).webp({ lossless: true }).toBuffer() },
      { name: 'g3.txt', data: txt('a webp') },
      { name: 'g4.jpeg', data: await sharp(Buffer.alloc(32 * 32 * 3, 100), { raw: { width: 32, height: 32, channels: 3 } }).jpeg().toBuffer() },
      { name: 'g4.txt', data: txt('a jpeg') },
    ]);
    const shards: Record<string, Buffer> = {
      'set-000000.tar': shard0,
      'set-000002.tar': Buffer.from('<html>not a tar</html>'),
      'set-000003.tar': tarArchive([{ name: 'a.png', data: good }, { name: 'a.txt', data: txt('x') }, { name: 'b.png', data: good }, { name: 'b.txt', data: txt('y') }]).subarray(0, 512 * 3 + 200),
    };
    for (const [name, data] of Object.entries(shards)) await writeFile(path.join(dir, name), data);
    const counts = [15, 3, 4, 2, 2, 2];
    const index: ShardIndex = {
      format: 'parti-shards',
      version: 1,
      shards: counts.map((samples, i) => ({ name: `set-00000${i}.tar`, samples, bytes: shards[`set-00000${i}.tar`]?.length ?? 100 })),
      meta: {},
    };
    await writeFile(path.join(dir, 'set.index.json'), indexJson(index));
    const fileStore = openStore(pathToFileURL(dir).href);
    const store = new FaultyStore(fileStore, { 'set-000004.tar': 'stall', 'set-000005.tar': 'deny' });
    const set = await openShardSet(`${pathToFileURL(dir).href}/set-{000000..000005}.tar`, { store });
    const lines: Record<string, unknown>[] = [];
    const logger = pino({ level: 'warn' }, new Writable({ write: (c, _e, cb) => (lines.push(JSON.parse(String(c))), cb()) }));
    const reader = new ShardSampleReader(set, { imageSize: 32, maxCaptionBytes: 200, tokenCount: 4, readTimeoutMs: 300, log: logger });
    const refs = counts.flatMap((n, shard) => Array.from({ length: n }, (_, ordinal) => ({ epoch: 0, shard, ordinal })));
    reader.prefetch(refs.slice(0, 10));
    const { samples, skipped } = await reader.read(refs);
    assert.deepEqual(samples.map((s) => [s.key, s.caption]), [['g1', 'a red circle'], ['g2', 'a blue square'], ['g3', 'a webp'], ['g4', 'a jpeg'], ['a', 'x']]);
    assert.equal(samples[2]!.image[0], 200);
    assert.ok(Math.abs(samples[3]!.image[0]! - 100) <= 2);
    assert.deepEqual([...samples[1]!.tokens!], [1, 2, 3, 4]);
    const byReason = Object.fromEntries(Object.entries(reader.stats.bad).filter(([, n]) => n > 0));
    assert.deepEqual(byReason, {
      'missing-caption': 1,
      'missing-image': 1,
      'empty-image': 1,
      'undecodable-image': 1,
      'wrong-image-size': 1,
      'caption-not-utf8': 1,
      'caption-too-long': 1,
      'bad-metadata': 1,
      'bad-tokens': 1,
      'duplicate-key': 1,
      'missing-sample': 1, // shard 0's index says 15, it holds 14 keys
      'shard-not-found': 3,
      'not-a-tar': 4,
      'truncated-tar': 1, // the cut fell before b
      'shard-timeout': 2,
      'shard-denied': 2,
    });
    assert.equal(samples.length + skipped.length, refs.length);
    assert.equal(reader.stats.delivered, 5);
    // Logged with shard and key; a broken shard once, not once per sample.
    const logged = lines.map((l) => [l.shard, l.key, l.reason]);
    assert.ok(logged.some(([s, k, r]) => String(s).endsWith('/set-000000.tar') && k === 'junk' && r === 'undecodable-image'));
    assert.equal(lines.filter((l) => l.reason === 'not-a-tar').length, 1);
    await reader.close();

    // Policy fail: the first bad sample stops reading with a message naming shard, key and reason.
    const strict = new ShardSampleReader(set, { imageSize: 32, policy: 'fail', log: logger });
    await assert.rejects(strict.read(refs.slice(0, 3)), (err: unknown) => {
      assert.ok(err instanceof PartiError && err.code === 'data');
      assert.match(err.message, /set-000000\.tar key nocap: bad sample \(missing-caption\)/);
      return true;
    });

    // inspect counts the same way.
    const report = await inspectShards(`${pathToFileURL(dir).href}/set-{000000..000003}.tar`, { imageSize: 32, maxCaptionBytes: 200, log: logger });
    assert.equal(report.shards, 4);
    assert.equal(report.samples, 24);
    assert.equal(report.good, 5);
    assert.equal(report.bad['not-a-tar'], 4);
    assert.equal(report.bad['shard-not-found'], 3);
    await fileStore.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
