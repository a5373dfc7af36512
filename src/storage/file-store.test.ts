import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile, utimes, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { FileStore } from './file-store.ts';
import { openStore } from './open-store.ts';
import { S3Store } from './s3-store.ts';
import { describeObjectStore } from './object-store-conformance.ts';

describeObjectStore('file://', {
  largeSize: 6 << 20,
  atomicPut: true,
  async open() {
    const dir = await mkdtemp(path.join(tmpdir(), 'parti-filestore-'));
    return { store: new FileStore(dir), dispose: () => rm(dir, { recursive: true, force: true }) };
  },
});

describe('FileStore specifics', () => {
  it('opens file:// URLs and plain paths; refuses other schemes', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'parti-filestore-'));
    try {
      const a = openStore(`file://${dir}`);
      const b = openStore(path.relative(process.cwd(), dir));
      assert.ok(a instanceof FileStore && b instanceof FileStore);
      assert.equal((a as FileStore).root, dir);
      assert.equal((b as FileStore).root, dir);
      assert.ok(openStore('s3://bucket/some/prefix') instanceof S3Store);
      assert.equal(openStore('s3://bucket/some/prefix/').url, 's3://bucket/some/prefix');
      assert.throws(() => openStore('gs://bucket/x'), /unsupported store URL/);
      assert.throws(() => openStore('s3://key:secret@bucket/x'), (err: Error) => !err.message.includes('secret'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('hides temp files of interrupted puts and cleans up old ones', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'parti-filestore-'));
    try {
      const store = new FileStore(dir);
      await store.put('ck/step-1/a.bin', Buffer.from('a'));
      // What a process killed in the middle of a put leaves: a temp file beside the target.
      await mkdir(path.join(dir, 'ck', 'step-2'), { recursive: true });
      const temp = path.join(dir, 'ck', 'step-2', '.parti-tmp-999-abc-b.bin');
      await writeFile(temp, 'partial');
      const old = new Date(Date.now() - 3600_000);
      await utimes(temp, old, old);
      const fresh = path.join(dir, 'ck', 'step-1', '.parti-tmp-999-def-c.bin');
      await writeFile(fresh, 'in flight');
      assert.deepEqual((await store.list('ck/')).map((o) => o.key), ['ck/step-1/a.bin']);
      assert.equal(await store.cleanupIncomplete('ck/', new Date(Date.now() - 60_000)), 1);
      assert.deepEqual(await readdir(path.join(dir, 'ck')), ['step-1']);
      assert.equal(await store.cleanupIncomplete('ck/', new Date(Date.now() + 1000)), 1);
      assert.deepEqual(await readdir(path.join(dir, 'ck', 'step-1')), ['a.bin']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('removes folders that deletes leave empty', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'parti-filestore-'));
    try {
      const store = new FileStore(dir);
      await store.put('x/y/z/obj', Buffer.from('1'));
      await store.put('x/keep', Buffer.from('2'));
      await store.delete('x/y/z/obj');
      assert.deepEqual(await readdir(path.join(dir, 'x')), ['keep']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
