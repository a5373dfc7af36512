import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileStore } from '../storage/file-store.ts';
import { commitManifest } from '../storage/checkpoint-commit.ts';
import { PartiError } from '../errors.ts';
import { CheckpointShards } from './checkpoint-shards.ts';
import { evenRanges } from './trainable.ts';

const P = 23;
const params = Float32Array.from({ length: P }, (_, i) => i * 0.5);
/** Slot-major Adam state of [start, end): m = 1000 + i, v = 2000 + i. */
function state(start: number, end: number): Float32Array {
  const n = end - start;
  const out = new Float32Array(2 * n);
  for (let i = 0; i < n; i++) {
    out[i] = 1000 + start + i;
    out[n + i] = 2000 + start + i;
  }
  return out;
}

async function savedWith(ranks: number): Promise<{ shards: CheckpointShards; store: FileStore }> {
  const store = new FileStore(mkdtempSync(join(tmpdir(), 'parti-shards-')));
  const shards = new CheckpointShards(store, 'hash');
  const objects = [];
  for (const [rank, [start, end]] of evenRanges(P, ranks).entries()) {
    objects.push(
      ...(await shards.save({ step: 4, rank, worldSize: ranks, params: rank === 0 ? params : null, optimizer: { start, end, slots: 2, updates: 4, state: state(start, end) } })),
    );
  }
  await commitManifest(store, { step: 4, worldSize: ranks, configHash: 'hash', config: {}, cursor: null, rng: null, objects }, { keep: 2 });
  return { shards, store };
}

test('optimizer shards written by 3 ranks load into any range: 1 rank, 2 ranks, an odd slice', async () => {
  const { shards } = await savedWith(3);
  for (const [start, end] of [[0, P], ...evenRanges(P, 2), [5, 17]] as [number, number][]) {
    const got = await shards.load(4, start, end);
    assert.deepEqual(got.params, params);
    assert.equal(got.optimizer.updates, 4);
    assert.deepEqual(got.optimizer.state, state(start, end), `range [${start}, ${end})`);
  }
});

test('a checkpoint of another config does not load', async () => {
  const { store } = await savedWith(1);
  await assert.rejects(new CheckpointShards(store, 'other').load(4, 0, P), (e: unknown) => e instanceof PartiError && e.code === 'checkpoint');
});

test('saveLive: the upload thread copies the live state; changing it once `copied` resolved does not change what is saved', async () => {
  const store = new FileStore(mkdtempSync(join(tmpdir(), 'parti-shards-live-')));
  const shards = new CheckpointShards(store, 'hash');
  try {
    const shared = (a: Float32Array) => {
      const s = new Float32Array(new SharedArrayBuffer(a.byteLength));
      s.set(a);
      return s;
    };
    const liveParams = shared(params);
    const full = state(0, P);
    const m = shared(full.subarray(0, P));
    const v = shared(full.subarray(P));
    const handle = shards.saveLive({ step: 6, rank: 0, worldSize: 1, params: liveParams, optimizer: { start: 0, end: P, slots: 2, updates: 6, state: [m, v] } });
    await handle.copied;
    // the next optimizer update
    liveParams.fill(-1);
    m.fill(-2);
    v.fill(-3);
    const objects = await handle.done;
    await commitManifest(store, { step: 6, worldSize: 1, configHash: 'hash', config: {}, cursor: null, rng: null, objects }, { keep: 2 });
    const got = await shards.load(6, 0, P);
    assert.deepEqual(got.params, params);
    assert.deepEqual(got.optimizer.state, full);
    assert.equal(got.optimizer.updates, 6);
  } finally {
    await shards.close();
  }
});
