import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { commitManifest, writeCheckpointObject } from './checkpoint-commit.ts';
import { writeCheckpointObjects, type SnapshotObject } from './checkpoint-writer.ts';
import { loadCheckpoint } from './checkpoint-load.ts';
import { attemptObjectKey, isCheckpointObjectKey, manifestKey, newSaveAttempt, objectKey, stepPrefix, type CheckpointObjectRef, type ManifestInput } from './checkpoint-manifest.ts';
import { FileStore } from './file-store.ts';
import type { ObjectStore } from './object-store.ts';
import { PartiError } from '../errors.ts';

const HASH = 'feed0123';

async function withStore<T>(fn: (store: FileStore) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(tmpdir(), 'parti-commit-unit-'));
  try {
    return await fn(new FileStore(dir));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function manifestFor(step: number, worldSize: number, objects: CheckpointObjectRef[]): ManifestInput {
  return { step, worldSize, configHash: HASH, config: {}, cursor: { step }, rng: { seed: 1 }, objects };
}

/** What rank `rank` of a world of `world` ranks saves at `step`: its own optimizer range, rank 0 the parameters. */
function rankObjects(step: number, rank: number, world: number): SnapshotObject[] {
  const params = 96;
  const start = Math.floor((params * rank) / world);
  const end = Math.floor((params * (rank + 1)) / world);
  const state = new Float32Array(2 * (end - start)).map((_, i) => step + world * 1000 + start + i);
  const out: SnapshotObject[] = [];
  if (rank === 0) out.push({ name: 'params.bin', bytes: new Float32Array(params).map((_, i) => step + world + i / 10) });
  out.push({ name: `optimizer-rank-${rank}.json`, bytes: Buffer.from(JSON.stringify({ start, end, slots: 2, updates: step })) });
  out.push({ name: `optimizer-rank-${rank}.bin`, bytes: state });
  return out;
}

/** Every object a manifest names is in the store with the size and sha256 it lists. */
async function intact(store: ObjectStore, step: number): Promise<boolean> {
  const manifest = JSON.parse((await store.get(manifestKey(step))).toString()) as { objects: CheckpointObjectRef[] };
  for (const o of manifest.objects) {
    const bytes = await store.get(o.key).catch(() => null);
    if (!bytes || bytes.length !== o.size || createHash('sha256').update(bytes).digest('hex') !== o.sha256) return false;
  }
  return true;
}

async function keys(store: ObjectStore): Promise<string[]> {
  return (await store.list('steps/')).map((o) => o.key);
}

describe('checkpoint object keys of save attempts', () => {
  it('two attempts of the same step write disjoint keys, under the step, apart from the older layout', () => {
    const a = newSaveAttempt();
    const b = newSaveAttempt();
    assert.notEqual(a, b);
    const ka = attemptObjectKey(100, a, 'optimizer-rank-1.bin');
    const kb = attemptObjectKey(100, b, 'optimizer-rank-1.bin');
    assert.notEqual(ka, kb);
    assert.notEqual(ka, objectKey(100, 'optimizer-rank-1.bin'));
    for (const k of [ka, kb]) {
      assert.ok(k.startsWith(stepPrefix(100)), 'retention finds it by its step');
      assert.ok(isCheckpointObjectKey(100, 'optimizer-rank-1.bin', k));
    }
    assert.ok(isCheckpointObjectKey(100, 'params.bin', objectKey(100, 'params.bin')), 'the older layout is still accepted');
  });

  it('refuses keys outside the step, of another name, or with a malformed attempt', () => {
    const a = newSaveAttempt();
    const bad = [
      attemptObjectKey(99, a, 'params.bin'),
      attemptObjectKey(100, a, 'params.json'),
      `${stepPrefix(100)}_${a}/x/params.bin`,
      `${stepPrefix(100)}_../params.bin`,
      `${stepPrefix(100)}_/params.bin`,
      `${stepPrefix(100)}${a}/params.bin`,
      `${stepPrefix(100)}_${a.toUpperCase()}X/params.bin`,
      `steps/100/_${a}/params.bin`,
      `x${attemptObjectKey(100, a, 'params.bin')}`,
    ];
    for (const k of bad) assert.equal(isCheckpointObjectKey(100, 'params.bin', k), false, k);
    assert.throws(() => attemptObjectKey(1, '../up', 'params.bin'), PartiError);
    assert.throws(() => attemptObjectKey(1, 'short', 'params.bin'), PartiError);
  });

  it('an upload of an abandoned attempt that lands after a later attempt committed leaves the commit intact', async () => {
    await withStore(async (store) => {
      // Attempt A: step 100 on 4 ranks; rank 1's upload is still in flight when A is abandoned
      // (its coordinator restarted). The job resumes from an older checkpoint, reaches step 100
      // again on 2 ranks and commits attempt B. Then A's rank 1 upload lands.
      const refs: CheckpointObjectRef[] = [];
      for (let rank = 0; rank < 2; rank++) refs.push(...(await writeCheckpointObjects(store, 100, rankObjects(100, rank, 2), 2, undefined, newSaveAttempt())));
      await commitManifest(store, manifestFor(100, 2, refs), { keep: 2 });
      assert.ok(await intact(store, 100));
      const late = await writeCheckpointObjects(store, 100, rankObjects(100, 1, 4), 2, undefined, newSaveAttempt());
      assert.ok(await intact(store, 100), 'every object the manifest names is as committed');
      const committed = new Set(refs.map((r) => r.key));
      for (const r of late) assert.ok(!committed.has(r.key));
    });
  });

  it('in the older layout the same late upload replaces a committed object (the race the attempt layout removes)', async () => {
    await withStore(async (store) => {
      const refs: CheckpointObjectRef[] = [];
      for (let rank = 0; rank < 2; rank++) refs.push(...(await writeCheckpointObjects(store, 100, rankObjects(100, rank, 2), 2)));
      await commitManifest(store, manifestFor(100, 2, refs), { keep: 2 });
      await writeCheckpointObjects(store, 100, rankObjects(100, 1, 4), 2);
      assert.equal(await intact(store, 100), false);
      await assert.rejects(loadCheckpoint(store, 100, { configHash: HASH }), /optimizer-rank-1/);
    });
  });

  it('commits a manifest of attempt keys (each rank its own attempt) and refuses one naming another step', async () => {
    await withStore(async (store) => {
      const refs: CheckpointObjectRef[] = [];
      for (let rank = 0; rank < 2; rank++) refs.push(...(await writeCheckpointObjects(store, 7, rankObjects(7, rank, 2), 2, undefined, newSaveAttempt())));
      const result = await commitManifest(store, manifestFor(7, 2, refs), { keep: 2 });
      assert.deepEqual(result.manifest.objects, refs);
      assert.ok(await intact(store, 7));
      const other = await writeCheckpointObject(store, 6, 'params.bin', Buffer.from('six'), { attempt: newSaveAttempt() });
      await assert.rejects(
        commitManifest(store, manifestFor(8, 1, [other]), { keep: 2 }),
        (err: unknown) => err instanceof PartiError && err.code === 'checkpoint' && /params\.bin has key steps\/000000000006\//.test(err.message),
      );
      await assert.rejects(store.get(manifestKey(8)));
    });
  });

  it('retention: pruned steps and failed saves lose their attempts; newer steps and kept ones are left alone; an older-layout checkpoint still loads', async () => {
    await withStore(async (store) => {
      // An older-layout checkpoint (written before attempts existed) at step 10.
      const old = await writeCheckpointObjects(store, 10, rankObjects(10, 0, 1), 2);
      assert.deepEqual(old.map((r) => r.key), old.map((r) => objectKey(10, r.name)));
      await commitManifest(store, manifestFor(10, 1, old), { keep: 2 });
      // Step 20 saved twice: the first attempt was dropped, the second committed.
      const dropped20 = await writeCheckpointObjects(store, 20, rankObjects(20, 0, 1), 2, undefined, newSaveAttempt());
      const kept20 = await writeCheckpointObjects(store, 20, rankObjects(20, 0, 1), 2, undefined, newSaveAttempt());
      await commitManifest(store, manifestFor(20, 1, kept20), { keep: 2 });
      // The older-layout checkpoint is still one of the two kept, and loads, bytes verified.
      const loaded = await loadCheckpoint(store, 10, { configHash: HASH });
      assert.deepEqual([...loaded.objects.keys()].sort(), ['optimizer-rank-0.bin', 'optimizer-rank-0.json', 'params.bin']);
      assert.ok(loaded.objects.get('params.bin')!.equals(Buffer.from((rankObjects(10, 0, 1)[0]!.bytes as Float32Array).buffer)));
      // A failed save of step 25 and an upload of step 40 still running.
      const failed25 = await writeCheckpointObjects(store, 25, rankObjects(25, 0, 1), 2, undefined, newSaveAttempt());
      const running40 = await writeCheckpointObjects(store, 40, rankObjects(40, 0, 1), 2, undefined, newSaveAttempt());
      const at30 = await writeCheckpointObjects(store, 30, rankObjects(30, 0, 1), 2, undefined, newSaveAttempt());
      const result = await commitManifest(store, manifestFor(30, 1, at30), { keep: 2 });
      assert.deepEqual(result.pruned, [10]);
      assert.deepEqual(result.orphansRemoved, [25]);
      const left = new Set(await keys(store));
      for (const r of old) assert.ok(!left.has(r.key), `pruned ${r.key}`);
      for (const r of failed25) assert.ok(!left.has(r.key), `orphan ${r.key}`);
      for (const r of [...kept20, ...at30, ...running40]) assert.ok(left.has(r.key), `kept ${r.key}`);
      // The dropped attempt of a kept step stays (no manifest names it) until that step is pruned.
      for (const r of dropped20) assert.ok(left.has(r.key), `dropped attempt of kept step 20: ${r.key}`);
      assert.ok(await intact(store, 20));
      assert.ok(await intact(store, 30));
      const at50 = await writeCheckpointObjects(store, 50, rankObjects(50, 0, 1), 2, undefined, newSaveAttempt());
      const later = await commitManifest(store, manifestFor(50, 1, at50), { keep: 2 });
      assert.deepEqual(later.pruned, [20]);
      assert.deepEqual(later.orphansRemoved, [40]);
      const now = await keys(store);
      for (const r of [...dropped20, ...kept20, ...running40]) assert.ok(!now.includes(r.key), `removed with its step: ${r.key}`);
      assert.deepEqual(now, [...at30, ...at50].map((r) => r.key).sort());
    });
  });
});
