import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startS3rver, type S3rverHandle } from './helpers/s3rver.ts';
import type { ObjectStore } from '../src/storage/object-store.ts';
import { FileStore } from '../src/storage/file-store.ts';
import { S3Store } from '../src/storage/s3-store.ts';
import { commitManifest, writeCheckpointObject } from '../src/storage/checkpoint-commit.ts';
import { loadCheckpoint, listCheckpointSteps } from '../src/storage/checkpoint-load.ts';
import { CheckpointWriter } from '../src/storage/checkpoint-writer.ts';
import { manifestKey, objectKey, type CheckpointObjectRef, type ManifestInput } from '../src/storage/checkpoint-manifest.ts';
import { decodeTensorBundle, encodeTensorBundle } from '../src/storage/tensor-bundle.ts';
import { PartiError } from '../src/errors.ts';

const HASH = 'cafe0123456789ab';

/** Deterministic bytes for (step, name), so a load can be checked against what was saved. */
function content(step: number, name: string, size = 4096): Buffer {
  const out = Buffer.alloc(size);
  let x = (step * 2654435761 + name.length * 40503 + name.charCodeAt(0)) >>> 0;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

function manifestFor(step: number, objects: CheckpointObjectRef[], configHash = HASH): ManifestInput {
  return { step, worldSize: 2, configHash, config: { name: 'test' }, cursor: { epoch: 0, position: step * 16 }, rng: { seed: 7, counter: step }, objects };
}

/** Saves and commits a checkpoint of two ranks' objects (params + one optimizer shard each). */
async function saveStep(store: ObjectStore, step: number, keep = 3, configHash = HASH) {
  const names = ['params.bin', 'optimizer-rank-0.bin', 'optimizer-rank-1.bin'];
  const refs = await Promise.all(names.map((n) => writeCheckpointObject(store, step, n, content(step, n))));
  return commitManifest(store, manifestFor(step, refs, configHash), { keep });
}

async function rejectsNaming(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof PartiError, String(err));
    assert.equal(err.code, 'checkpoint');
    assert.match(err.message, pattern);
    return true;
  });
}

function describeCheckpoints(label: string, open: () => Promise<ObjectStore>, corrupt: (store: ObjectStore, key: string, bytes: Buffer) => Promise<void>) {
  describe(`checkpoints on ${label}`, () => {
    it('leaves secrets of the config out of the manifest', async () => {
      const store = await open();
      const ref = await writeCheckpointObject(store, 3, 'params.bin', content(3, 'params.bin'));
      const config = { name: 'test', dashboard: { token: 'dashboard-secret-0123456789', tokenEnv: 'PARTI_DASHBOARD_TOKEN' }, model: { tokenizer: { codebookSize: 8 } } };
      await commitManifest(store, { ...manifestFor(3, [ref]), config }, { keep: 2 });
      const text = (await store.get(manifestKey(3))).toString();
      assert.ok(!text.includes('dashboard-secret-0123456789'));
      const loaded = await loadCheckpoint(store, 3, { configHash: HASH });
      assert.deepEqual(loaded.manifest.config, { name: 'test', dashboard: { tokenEnv: 'PARTI_DASHBOARD_TOKEN' }, model: { tokenizer: { codebookSize: 8 } } });
    });

    it('commits objects then manifest, and loads latest verified', async () => {
      const store = await open();
      assert.equal(await loadCheckpoint(store, 'latest', { configHash: HASH }), null);
      await saveStep(store, 10);
      await saveStep(store, 20);
      const loaded = (await loadCheckpoint(store, 'latest', { configHash: HASH }))!;
      assert.equal(loaded.manifest.step, 20);
      assert.deepEqual(loaded.warnings, []);
      assert.deepEqual(loaded.manifest.cursor, { epoch: 0, position: 320 });
      assert.deepEqual(loaded.manifest.rng, { seed: 7, counter: 20 });
      assert.equal(loaded.manifest.worldSize, 2);
      for (const n of ['params.bin', 'optimizer-rank-0.bin', 'optimizer-rank-1.bin']) assert.ok(loaded.objects.get(n)!.equals(content(20, n)));
      const older = await loadCheckpoint(store, 10, { configHash: HASH });
      assert.ok(older.objects.get('params.bin')!.equals(content(10, 'params.bin')));
      // A worker reads only what it needs; the rest is still checked for presence and size.
      const mine = (await loadCheckpoint(store, 'latest', { configHash: HASH, select: (o) => o.name !== 'optimizer-rank-1.bin' }))!;
      assert.deepEqual([...mine.objects.keys()].sort(), ['optimizer-rank-0.bin', 'params.bin']);
      await rejectsNaming(loadCheckpoint(store, 15, { configHash: HASH }), /step 15 does not exist/);
    });

    it('refuses to commit when an object has not landed in full', async () => {
      const store = await open();
      const ref = await writeCheckpointObject(store, 5, 'params.bin', content(5, 'params.bin'));
      const ghost = { ...ref, name: 'optimizer-rank-0.bin', key: objectKey(5, 'optimizer-rank-0.bin') };
      await rejectsNaming(commitManifest(store, manifestFor(5, [ref, ghost]), { keep: 2 }), /optimizer-rank-0\.bin .*missing/);
      await rejectsNaming(commitManifest(store, manifestFor(5, [{ ...ref, size: ref.size + 1 }]), { keep: 2 }), /params\.bin has 4096 bytes/);
      await assert.rejects(commitManifest(store, manifestFor(5, [ref]), { keep: 1 }), /keep: must be an integer >= 2/);
      assert.deepEqual(await listCheckpointSteps(store), []);
    });

    it('keeps the newest K, deleting older ones only after a newer commit, and clears failed saves of older steps', async () => {
      const store = await open();
      await saveStep(store, 1, 2);
      await saveStep(store, 2, 2);
      // A save of step 3 that never committed (a worker died), and one of step 9 still uploading.
      await writeCheckpointObject(store, 3, 'params.bin', content(3, 'params.bin'));
      await writeCheckpointObject(store, 9, 'params.bin', content(9, 'params.bin'));
      assert.deepEqual(await listCheckpointSteps(store), [1, 2]);
      const result = await saveStep(store, 4, 2);
      assert.deepEqual(result.pruned, [1]);
      assert.deepEqual(result.orphansRemoved, [3]);
      assert.deepEqual(await listCheckpointSteps(store), [2, 4]);
      const keys = (await store.list('steps/')).map((o) => o.key);
      assert.ok(!keys.some((k) => k.startsWith('steps/000000000001/') || k.startsWith('steps/000000000003/')), keys.join());
      assert.ok(keys.includes(objectKey(9, 'params.bin')), 'a newer step in progress is left alone');
      assert.equal(keys.filter((k) => k.startsWith('steps/000000000002/')).length, 3);
    });

    for (const [what, damage, pattern] of [
      ['checksum mismatch', async (s: ObjectStore, k: string, b: Buffer) => corrupt(s, k, Buffer.from(b.map((x, i) => (i === 100 ? x ^ 1 : x)))), /optimizer-rank-1\.bin .*checksum mismatch/],
      ['missing object', async (s: ObjectStore, k: string) => s.delete(k), /optimizer-rank-1\.bin .*is missing/],
      ['truncated object', async (s: ObjectStore, k: string, b: Buffer) => corrupt(s, k, b.subarray(0, 1000)), /optimizer-rank-1\.bin .*has 1000 bytes, the manifest says 4096/],
      ['object longer than listed', async (s: ObjectStore, k: string, b: Buffer) => corrupt(s, k, Buffer.concat([b, b.subarray(0, 1000)])), /optimizer-rank-1\.bin .*has 5096 bytes, the manifest says 4096/],
    ] as const) {
      it(`${what}: a clear error naming the object; latest falls back to the previous checkpoint and says so`, async () => {
        const store = await open();
        await saveStep(store, 100);
        await saveStep(store, 200);
        const key = objectKey(200, 'optimizer-rank-1.bin');
        await damage(store, key, content(200, 'optimizer-rank-1.bin'));
        await rejectsNaming(loadCheckpoint(store, 200, { configHash: HASH }), pattern);
        const loaded = (await loadCheckpoint(store, 'latest', { configHash: HASH }))!;
        assert.equal(loaded.manifest.step, 100);
        assert.equal(loaded.warnings.length, 1);
        assert.match(loaded.warnings[0]!, pattern);
        assert.match(loaded.warnings[0]!, /falling back to step 100/);
      });
    }

    it('foreign config hash: refused naming the manifest; latest falls back past it', async () => {
      const store = await open();
      await saveStep(store, 1);
      await saveStep(store, 2, 3, 'another0000hash0');
      await rejectsNaming(loadCheckpoint(store, 2, { configHash: HASH }), /manifests\/000000000002\.json was written by config another0000hash0, this run is cafe0123456789ab/);
      const loaded = (await loadCheckpoint(store, 'latest', { configHash: HASH }))!;
      assert.equal(loaded.manifest.step, 1);
      assert.match(loaded.warnings[0]!, /another0000hash0.*falling back to step 1/);
      await rejectsNaming(loadCheckpoint(store, 'latest', { configHash: 'nobody' }), /no checkpoint loads \(2 tried\)/);
    });

    it('a manifest that fails its schema or is not JSON: refused naming it; latest falls back', async () => {
      const store = await open();
      await saveStep(store, 1);
      await saveStep(store, 2);
      await saveStep(store, 3);
      const m2 = JSON.parse((await store.get(manifestKey(2))).toString());
      m2.objects[0].sha256 = 'not-a-hash';
      await corrupt(store, manifestKey(2), Buffer.from(JSON.stringify(m2)));
      await corrupt(store, manifestKey(3), (await store.get(manifestKey(3))).subarray(0, 50));
      await rejectsNaming(loadCheckpoint(store, 2, { configHash: HASH }), /manifests\/000000000002\.json fails its schema: objects\.0\.sha256/);
      await rejectsNaming(loadCheckpoint(store, 3, { configHash: HASH }), /manifests\/000000000003\.json is not valid JSON/);
      // A manifest may not point a reader at keys outside its step.
      const m1 = JSON.parse((await store.get(manifestKey(1))).toString());
      m1.objects[0].key = manifestKey(2);
      await corrupt(store, manifestKey(1), Buffer.from(JSON.stringify(m1)));
      await rejectsNaming(loadCheckpoint(store, 1, { configHash: HASH }), /object params\.bin has key "manifests\/000000000002\.json", expected steps\/000000000001\/params\.bin/);
      await saveStep(store, 1);
      const loaded = (await loadCheckpoint(store, 'latest', { configHash: HASH }))!;
      assert.equal(loaded.manifest.step, 1);
      assert.equal(loaded.warnings.length, 2);
      assert.match(loaded.warnings[0]!, /000000000003\.json is not valid JSON .*; falling back to step 2/);
      assert.match(loaded.warnings[1]!, /000000000002\.json fails its schema.*falling back to step 1/);
    });
  });
}

describeCheckpoints(
  'file://',
  async () => new FileStore(await mkdtemp(path.join(tmpdir(), 'parti-ckpt-'))),
  (store, key, bytes) => store.put(key, bytes),
);

let s3: S3rverHandle;
let n = 0;
const s3Stores: ObjectStore[] = [];
before(async () => {
  s3 = await startS3rver();
});
after(async () => {
  for (const s of s3Stores) await s.close();
  await s3?.stop();
});
describeCheckpoints(
  's3:// (s3rver)',
  async () => {
    const store = new S3Store(`s3://${s3.bucket}/ckpt-${++n}`, { endpoint: s3.endpoint, credentials: s3.credentials });
    s3Stores.push(store);
    return store;
  },
  (store, key, bytes) => store.put(key, bytes),
);

describe('CheckpointWriter', () => {
  it('saves a snapshot in the background thread; one save at a time; the coordinator commits', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'parti-ckpt-writer-'));
    const writer = new CheckpointWriter({ url: dir });
    try {
      const params = new Float32Array(1 << 20).map((_, i) => Math.sin(i));
      const m = new Float32Array(1 << 20).fill(0.5);
      const expected = Buffer.concat(encodeTensorBundle([{ name: 'w', shape: [1024, 1024], data: params }, { name: 'm', shape: [1 << 20], data: m }]));
      const ticket = writer.save(7, [{ name: 'params.bin', bytes: encodeTensorBundle([{ name: 'w', shape: [1024, 1024], data: params }, { name: 'm', shape: [1 << 20], data: m }]) }]);
      assert.ok(ticket);
      assert.deepEqual(writer.state, { state: 'saving', step: 7 });
      assert.equal(writer.save(8, [{ name: 'params.bin', bytes: Buffer.from('x') }]), null, 'a second save while one is in flight is refused');
      // The snapshot's memory moved to the upload thread: the caller cannot change what is saved.
      assert.equal(params.length, 0);
      const refs = await ticket.done;
      await writer.whenIdle();
      assert.deepEqual(writer.state, { state: 'idle' });
      assert.equal(refs[0]!.size, expected.length);
      const store = new FileStore(dir);
      await commitManifest(store, manifestFor(7, refs), { keep: 2 });
      const loaded = (await loadCheckpoint(store, 'latest', { configHash: HASH }))!;
      assert.ok(loaded.objects.get('params.bin')!.equals(expected));
      const tensors = decodeTensorBundle(loaded.objects.get('params.bin')!);
      assert.equal(tensors.get('w')!.data[1], Math.fround(Math.sin(1)));
      assert.deepEqual(tensors.get('w')!.shape, [1024, 1024]);
    } finally {
      await writer.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  for (const thread of [true, false]) {
    it(`a failed save is reported, commits nothing, and the next save succeeds (thread: ${thread})`, async () => {
      const dir = await mkdtemp(path.join(tmpdir(), 'parti-ckpt-writer-'));
      // A file where the step folder must go makes every put of that step fail.
      const root = path.join(dir, 'store');
      const writer = new CheckpointWriter({ url: root, thread });
      try {
        await writeFile(path.join(dir, 'store'), 'in the way');
        const failed = writer.save(1, [{ name: 'params.bin', bytes: Buffer.from('one') }])!;
        await assert.rejects(failed.done, (err: unknown) => err instanceof PartiError && /params\.bin/.test(err.message));
        await writer.whenIdle();
        assert.equal(writer.lastFailure?.step, 1);
        assert.deepEqual(writer.state, { state: 'idle' });
        await rm(path.join(dir, 'store'));
        const ok = writer.save(2, [{ name: 'params.bin', bytes: Buffer.from('two') }])!;
        const refs = await ok.done;
        assert.equal(writer.lastFailure, null);
        assert.equal(refs[0]!.size, 3);
        assert.deepEqual(await readdir(path.join(root, 'steps')), ['000000000002']);
        assert.deepEqual(await listCheckpointSteps(new FileStore(root)), []);
      } finally {
        await writer.close();
        await rm(dir, { recursive: true, force: true });
      }
    });
  }
});
