// A checkpoint's manifest is untrusted bytes from the store: sizes it claims are checked against
// the store and against what a buffer can hold before anything is allocated, and an oversized
// manifest is not read at all. Each case is a clear PartiError('checkpoint'), and `latest` falls
// back to the older checkpoint.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { openStore } from '../src/storage/open-store.ts';
import { loadCheckpoint } from '../src/storage/checkpoint-load.ts';
import { CHECKPOINT_FORMAT, CHECKPOINT_VERSION, manifestKey, objectKey } from '../src/storage/checkpoint-manifest.ts';
import { PartiError } from '../src/errors.ts';
import { decodeTensorBundle, encodeTensorBundle } from '../src/storage/tensor-bundle.ts';

const dir = mkdtempSync(join(tmpdir(), 'parti-ckpt-limits-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const store = openStore(pathToFileURL(dir).href, { file: { fsync: false } });
const bytes = Buffer.from('ten bytes!');

async function checkpoint(step: number, size: number, pad = 0): Promise<void> {
  await store.put(objectKey(step, 'params.bin'), bytes);
  const manifest = {
    format: CHECKPOINT_FORMAT, version: CHECKPOINT_VERSION, step, worldSize: 1, configHash: 'h', config: {}, cursor: null, rng: null,
    objects: [{ name: 'params.bin', key: objectKey(step, 'params.bin'), size, sha256: createHash('sha256').update(bytes).digest('hex') }],
    committedAt: new Date(0).toISOString(), meta: pad ? { pad: 'x'.repeat(pad) } : {},
  };
  await store.put(manifestKey(step), Buffer.from(JSON.stringify(manifest)));
}

async function refused(step: number, why: RegExp): Promise<void> {
  await assert.rejects(loadCheckpoint(store, step, { configHash: 'h' }), (e: unknown) => e instanceof PartiError && e.code === 'checkpoint' && why.test(e.message));
}

test('sizes a manifest claims are checked before any allocation; an oversized manifest is not read', async () => {
  await checkpoint(1, bytes.length);
  await checkpoint(2, 2 ** 52);
  await refused(2, /object params\.bin .*the manifest says 4503599627370496 bytes, more than a buffer holds/);
  await checkpoint(3, 3_000_000_000);
  await refused(3, /object params\.bin .* has 10 bytes, the manifest says 3000000000/);
  await checkpoint(4, bytes.length, 17 << 20);
  await refused(4, /manifest .* has \d+ bytes, more than a manifest may have/);
  const latest = await loadCheckpoint(store, 'latest', { configHash: 'h' });
  assert.equal(latest?.manifest.step, 1);
  assert.equal(latest?.warnings.length, 3);
  assert.deepEqual(latest?.objects.get('params.bin'), bytes);
});

test('a tensor bundle whose header shape does not match its bytes is refused (found by bench/fuzz.ts, seed 2)', () => {
  const good = Buffer.concat(encodeTensorBundle([{ name: 'w', shape: [4, 8], data: new Float32Array(32) }]));
  const json = JSON.stringify({ tensors: [{ name: 'w', dtype: 'float32', shape: [488], offset: 0, byteLength: 128 }] });
  const forged = Buffer.from(good);
  const old = good.readUInt32LE(4);
  assert.ok(json.length <= old + (Math.ceil((8 + old) / 64) * 64 - 8 - old), 'the forged header fits in the padding');
  forged.fill(0x20, 8, 8 + old);
  forged.write(json, 8);
  forged.writeUInt32LE(json.length, 4);
  assert.throws(() => decodeTensorBundle(forged, 'forged'), (e: unknown) => e instanceof PartiError && e.code === 'checkpoint' && /forged: array w has shape \[488\] but 128 bytes of float32/.test(e.message));
  const twice = JSON.stringify({ tensors: [{ name: 'w', dtype: 'float32', shape: [1], offset: 0, byteLength: 4 }, { name: 'w', dtype: 'float32', shape: [1], offset: 4, byteLength: 4 }] });
  const dup = Buffer.from(good);
  dup.fill(0x20, 8, 8 + old);
  dup.write(twice, 8);
  dup.writeUInt32LE(twice.length, 4);
  assert.throws(() => decodeTensorBundle(dup, 'dup'), /dup: array w appears twice/);
  assert.equal(decodeTensorBundle(good).get('w')!.data.length, 32);
});
