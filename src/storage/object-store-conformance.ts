import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { ObjectStore } from './object-store.ts';
import { StorageError } from './storage-error.ts';

/** How a conformance run gets a fresh, empty store. */
export interface ConformanceTarget {
  /** A new empty store; `dispose` removes it. */
  open(): Promise<{ store: ObjectStore; dispose(): Promise<void> }>;
  /** Bytes of the "large" object: above the store's multipart threshold where it has one. */
  largeSize: number;
  /**
   * Whether the service itself swaps a new object in atomically. Real S3, MinIO, R2 and GCS do;
   * s3rver (the test fake) streams a PUT body straight into its file, so a reader can see part of
   * it. Checkpoints do not rely on it: the manifest's sizes and sha256 catch a partial object.
   */
  atomicPut: boolean;
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function rejectsWith(p: Promise<unknown>, reason: StorageError['reason'], key: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof StorageError, `expected StorageError, got ${String(err)}`);
    assert.equal(err.code, 'storage');
    assert.equal(err.reason, reason);
    assert.ok(err.message.includes(key), `message names the key: ${err.message}`);
    return true;
  });
}

/**
 * The one suite every ObjectStore implementation passes (file://, s3:// on s3rver), so that data
 * sources and checkpoints can rely on the same behaviour from each.
 */
export function describeObjectStore(name: string, target: ConformanceTarget): void {
  describe(`ObjectStore conformance: ${name}`, () => {
    let store: ObjectStore;
    let dispose: () => Promise<void>;
    before(async () => {
      ({ store, dispose } = await target.open());
    });
    after(async () => {
      await store?.close();
      await dispose?.();
    });

    it('round-trips Buffer, Uint8Array and stream bodies', async () => {
      const a = randomBytes(1000);
      await store.put('rt/a.bin', a);
      assert.deepEqual(await store.get('rt/a.bin'), a);
      const b = new Uint8Array([1, 2, 3, 4, 5]);
      await store.put('rt/b.bin', b);
      assert.deepEqual([...(await store.get('rt/b.bin'))], [1, 2, 3, 4, 5]);
      const c = randomBytes(300_000);
      await store.put('rt/c.bin', Readable.from([c.subarray(0, 100_000), c.subarray(100_000)]));
      assert.deepEqual(await store.get('rt/c.bin'), c);
      await store.put('rt/empty', Buffer.alloc(0));
      assert.equal((await store.get('rt/empty')).length, 0);
      assert.equal((await store.head('rt/empty'))?.size, 0);
    });

    it('writes and reads a large object (multipart where the store has it), as a buffer and as a stream', async () => {
      const big = randomBytes(target.largeSize);
      await store.put('large/buf.bin', big);
      assert.equal((await store.head('large/buf.bin'))?.size, big.length);
      assert.ok((await store.get('large/buf.bin')).equals(big));
      await store.put('large/stream.bin', Readable.from((function* () {
        for (let i = 0; i < big.length; i += 1 << 20) yield big.subarray(i, i + (1 << 20));
      })()));
      assert.ok((await collect(await store.getStream('large/stream.bin'))).equals(big));
      const tail = await store.get('large/stream.bin', { start: big.length - 10 });
      assert.ok(tail.equals(big.subarray(big.length - 10)));
    });

    it('reads byte ranges (end inclusive, clipped to the object)', async () => {
      const data = Buffer.from('0123456789abcdef');
      await store.put('range/x', data);
      assert.equal((await store.get('range/x', { start: 2, end: 5 })).toString(), '2345');
      assert.equal((await store.get('range/x', { start: 10 })).toString(), 'abcdef');
      assert.equal((await store.get('range/x', { end: 3 })).toString(), '0123');
      assert.equal((await store.get('range/x', { start: 14, end: 100 })).toString(), 'ef');
      assert.equal((await store.get('range/x', { start: 16 })).length, 0);
      assert.equal((await collect(await store.getStream('range/x', { start: 4, end: 7 }))).toString(), '4567');
      assert.equal((await collect(await store.getStream('range/x'))).toString(), '0123456789abcdef');
    });

    it('answers head with size, or null for a missing object', async () => {
      await store.put('head/one', Buffer.alloc(123, 7));
      const info = await store.head('head/one');
      assert.equal(info?.key, 'head/one');
      assert.equal(info?.size, 123);
      assert.ok(info?.lastModified instanceof Date);
      assert.equal(await store.head('head/none'), null);
      assert.equal(await store.head('nothing/here/at/all'), null);
    });

    it('fails a read of a missing object with reason not-found, naming the key', async () => {
      await rejectsWith(store.get('missing/obj'), 'not-found', 'missing/obj');
      await rejectsWith(store.getStream('missing/obj2'), 'not-found', 'missing/obj2');
    });

    it('overwrites an object with a new version', async () => {
      await store.put('ow/k', Buffer.from('first version'));
      await store.put('ow/k', Buffer.from('second'));
      assert.equal((await store.get('ow/k')).toString(), 'second');
      assert.equal((await store.head('ow/k'))?.size, 6);
    });

    it('lists by key prefix, in key order, across folders', async () => {
      const keys = ['ls/b/2', 'ls/a', 'ls/b/1', 'ls/ba', 'ls/c/d/e', 'lsx', 'other/ls/a'];
      for (const k of keys) await store.put(k, Buffer.from(k));
      assert.deepEqual((await store.list('ls/')).map((o) => o.key), ['ls/a', 'ls/b/1', 'ls/b/2', 'ls/ba', 'ls/c/d/e']);
      assert.deepEqual((await store.list('ls/b')).map((o) => o.key), ['ls/b/1', 'ls/b/2', 'ls/ba']);
      assert.deepEqual((await store.list('ls/b/')).map((o) => o.key), ['ls/b/1', 'ls/b/2']);
      assert.deepEqual((await store.list('ls')).map((o) => o.key), ['ls/a', 'ls/b/1', 'ls/b/2', 'ls/ba', 'ls/c/d/e', 'lsx']);
      assert.deepEqual(await store.list('nope/'), []);
      const all = await store.list('');
      assert.ok(all.some((o) => o.key === 'other/ls/a'));
      assert.equal(all.find((o) => o.key === 'ls/ba')?.size, 5);
    });

    it('lists more than 1000 keys (paginated where the store pages)', async () => {
      const n = 1010;
      const names = Array.from({ length: n }, (_, i) => `many/${String(i).padStart(5, '0')}`);
      for (let i = 0; i < n; i += 50) await Promise.all(names.slice(i, i + 50).map((k) => store.put(k, Buffer.from('x'))));
      const listed = await store.list('many/');
      assert.equal(listed.length, n);
      assert.deepEqual(listed.map((o) => o.key), names);
    });

    it('deletes objects; deleting a missing one is fine', async () => {
      await store.put('del/a', Buffer.from('a'));
      await store.put('del/b', Buffer.from('b'));
      await store.delete('del/a');
      await store.delete('del/a');
      await store.delete('del/never');
      assert.equal(await store.head('del/a'), null);
      assert.deepEqual((await store.list('del/')).map((o) => o.key), ['del/b']);
      await store.delete('del/b');
      assert.deepEqual(await store.list('del/'), []);
      await store.put('del/a', Buffer.from('again'));
      assert.equal((await store.get('del/a')).toString(), 'again');
    });

    it('refuses keys that could escape the root', async () => {
      for (const key of ['../x', '/abs', 'a//b', 'a/./b', 'a/../b', '', 'trailing/']) {
        await rejectsWith(store.put(key, Buffer.from('x')), 'invalid-key', key);
        await rejectsWith(store.get(key), 'invalid-key', key);
      }
    });

    // Only where the service promises it (see ConformanceTarget.atomicPut).
    if (target.atomicPut) it('never shows a partly written object to a reader', async () => {
      const big = randomBytes(target.largeSize);
      await store.put('atomic/obj', Buffer.from('old'));
      const writing = store.put('atomic/obj', big);
      let done = false;
      void writing.finally(() => (done = true));
      let seen = 0;
      while (!done) {
        const info = await store.head('atomic/obj');
        assert.ok(info && (info.size === 3 || info.size === big.length), `head saw size ${info?.size}`);
        const listed = await store.list('atomic/');
        assert.deepEqual(listed.map((o) => o.key), ['atomic/obj']);
        seen++;
      }
      await writing;
      assert.ok(seen >= 1);
      assert.ok((await store.get('atomic/obj')).equals(big));
    });

    it('a put whose body stream fails leaves nothing behind', async () => {
      const failing = new Readable({
        read() {
          this.push(randomBytes(64 * 1024));
          this.destroy(new Error('source broke'));
        },
      });
      await assert.rejects(store.put('broken/obj', failing), (err: unknown) => err instanceof StorageError && err.message.includes('broken/obj'));
      assert.equal(await store.head('broken/obj'), null);
      assert.deepEqual(await store.list('broken/'), []);
    });

    it('an aborted put leaves nothing behind', async () => {
      const ac = new AbortController();
      ac.abort();
      await rejectsWith(store.put('aborted/obj', Buffer.from('x'), { signal: ac.signal }), 'aborted', 'aborted/obj');
      assert.equal(await store.head('aborted/obj'), null);
    });

    it('cleanupIncomplete runs on an empty prefix and reports a count', async () => {
      const removed = await store.cleanupIncomplete('nothing-here/', new Date());
      assert.equal(removed, 0);
    });
  });
}
