import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CheckpointWriter } from './checkpoint-writer.ts';
import { FileStore } from './file-store.ts';
import { isCheckpointObjectKey, objectKey, stepPrefix } from './checkpoint-manifest.ts';
import { PartiError } from '../errors.ts';

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(tmpdir(), 'parti-writer-unit-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('CheckpointWriter: the upload thread starts with the first save', () => {
  it('has no thread before the first save; the first save starts it and lands; close ends it', async () => {
    await withDir(async (dir) => {
      const writer = new CheckpointWriter({ url: dir, transfer: false });
      try {
        assert.equal(writer.threadRunning, false, 'constructing a writer starts no thread');
        await writer.whenIdle();
        assert.equal(writer.threadRunning, false, 'waiting for no save starts no thread');
        const params = new Float32Array(50_000).map((_, i) => Math.cos(i));
        const expected = Buffer.from(params.buffer.slice(0));
        const ticket = writer.save(3, [{ name: 'params.bin', bytes: params }]);
        assert.ok(ticket);
        assert.equal(writer.threadRunning, true, 'the first save started the thread');
        const refs = await ticket.done;
        assert.deepEqual(refs, [{ name: 'params.bin', key: refs[0]!.key, size: expected.length, sha256: sha(expected) }]);
        assert.ok(isCheckpointObjectKey(3, 'params.bin', refs[0]!.key), refs[0]!.key);
        const stored = await new FileStore(dir).get(refs[0]!.key);
        assert.ok(stored.equals(expected), 'the bytes that landed are the snapshot');
        await writer.close();
        assert.equal(writer.threadRunning, false);
        assert.deepEqual(writer.state, { state: 'closed' });
      } finally {
        await writer.close();
      }
    });
  });

  it('closes when no save ever started a thread, and refuses saves afterwards', async () => {
    await withDir(async (dir) => {
      const writer = new CheckpointWriter({ url: path.join(dir, 'never') });
      await writer.close();
      await writer.close(); // twice is fine
      assert.equal(writer.threadRunning, false);
      assert.deepEqual(writer.state, { state: 'closed' });
      assert.throws(
        () => writer.save(1, [{ name: 'params.bin', bytes: Buffer.from('x') }]),
        (err: unknown) => err instanceof PartiError && err.code === 'illegal-state',
      );
      assert.equal(writer.threadRunning, false, 'a refused save starts no thread');
    });
  });

  it('a first save of live shared memory is copied by the thread it starts, then lands', async () => {
    await withDir(async (dir) => {
      const writer = new CheckpointWriter({ url: dir, transfer: false });
      try {
        const live = new Float32Array(new SharedArrayBuffer(4 * 10_000)).map((_, i) => i / 7);
        const expected = Buffer.from(new Uint8Array(live.buffer).slice());
        assert.equal(writer.threadRunning, false);
        const ticket = writer.save(9, [{ name: 'optimizer-rank-0.bin', bytes: live }], { copyInThread: true })!;
        await ticket.copied;
        // The caller may change its live state once copied: the save keeps what was copied.
        live.fill(-1);
        const refs = await ticket.done;
        assert.equal(refs[0]!.sha256, sha(expected));
        assert.ok((await new FileStore(dir).get(refs[0]!.key)).equals(expected));
      } finally {
        await writer.close();
      }
    });
  });

  it('a first save that fails is reported by its ticket and lastFailure; the thread stays for the next save', async () => {
    await withDir(async (dir) => {
      const root = path.join(dir, 'store');
      // A file where the store's folder must go makes every put fail.
      await writeFile(root, 'in the way');
      const writer = new CheckpointWriter({ url: root, transfer: false });
      try {
        assert.equal(writer.threadRunning, false);
        const failed = writer.save(1, [{ name: 'params.bin', bytes: Buffer.from('one') }])!;
        await assert.rejects(failed.done, (err: unknown) => err instanceof PartiError && err.code !== 'internal' && /params\.bin/.test(err.message));
        await failed.copied; // never rejects
        await writer.whenIdle();
        assert.equal(writer.lastFailure?.step, 1);
        assert.deepEqual(writer.state, { state: 'idle' });
        await rm(root);
        const refs = await writer.save(2, [{ name: 'params.bin', bytes: Buffer.from('two') }])!.done;
        assert.equal(writer.lastFailure, null);
        assert.equal(refs[0]!.size, 3);
      } finally {
        await writer.close();
      }
    });
  });
});

describe('CheckpointWriter: keys of save attempts', () => {
  for (const thread of [true, false]) {
    it(`two saves of the same step write disjoint keys in the attempt layout (thread: ${thread})`, async () => {
      await withDir(async (dir) => {
        const writer = new CheckpointWriter({ url: dir, thread, transfer: false, keyLayout: 'attempt' });
        try {
          const names = ['params.bin', 'optimizer-rank-1.json', 'optimizer-rank-1.bin'];
          const first = writer.save(100, names.map((name) => ({ name, bytes: Buffer.from(`first ${name}`) })))!;
          const firstRefs = await first.done;
          await writer.whenIdle();
          // The same step again (as after a restart from an older checkpoint), other bytes.
          const second = writer.save(100, names.map((name) => ({ name, bytes: Buffer.from(`second attempt ${name}`) })))!;
          const secondRefs = await second.done;
          assert.ok(first.attempt && second.attempt && first.attempt !== second.attempt);
          const firstKeys = new Set(firstRefs.map((r) => r.key));
          assert.equal(firstKeys.size, names.length);
          for (const r of secondRefs) assert.ok(!firstKeys.has(r.key), `${r.key} is written by both attempts`);
          for (const [refs, ticket] of [[firstRefs, first], [secondRefs, second]] as const) {
            assert.deepEqual(
              refs.map((r) => r.key),
              names.map((n) => `${stepPrefix(100)}_${ticket.attempt}/${n}`),
            );
          }
          // Both attempts' objects are intact: the second did not overwrite the first.
          const store = new FileStore(dir);
          for (const r of [...firstRefs, ...secondRefs]) assert.equal(sha(await store.get(r.key)), r.sha256, r.key);
        } finally {
          await writer.close();
        }
      });
    });
  }

  it('the step layout writes every save of a step to the same keys (no attempt)', async () => {
    await withDir(async (dir) => {
      const writer = new CheckpointWriter({ url: dir, thread: false, keyLayout: 'step' });
      try {
        const ticket = writer.save(4, [{ name: 'params.bin', bytes: Buffer.from('p') }])!;
        assert.equal(ticket.attempt, null);
        assert.deepEqual((await ticket.done).map((r) => r.key), [objectKey(4, 'params.bin')]);
      } finally {
        await writer.close();
      }
    });
  });
});
