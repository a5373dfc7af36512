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
