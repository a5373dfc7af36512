// A trained image tokenizer published to object storage and read back where there is no local
// copy (a pod): `parti train --stage tokenizer --publish-tokenizer URL`, then training.tokenizerFrom
// URL, against s3rver and file://; every file verified (size, sha256), and a clear error naming
// the URL and object when it is missing, corrupt or truncated.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { startS3rver, type S3rverHandle } from './helpers/s3rver.ts';
import { saveTrainingState } from '../src/model/training-state.ts';
import { fetchPublishedState, publishStateDir, SUMS_FILE } from '../src/storage/published-state.ts';
import { openStore } from '../src/storage/open-store.ts';
import { PartiError } from '../src/errors.ts';
import { parseConfig } from '../src/config/load.ts';

const run = promisify(execFile);
const BIN = join(import.meta.dirname, '..', 'bin', 'parti.mjs');
let server: S3rverHandle;
const dirs: string[] = [];
const ENV_KEYS = ['AWS_ENDPOINT_URL_S3', 'AWS_REGION', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'] as const;

function tempDir(name: string): string {
  const d = mkdtempSync(join(tmpdir(), `parti-pub-${name}-`));
  dirs.push(d);
  return d;
}

before(async () => {
  server = await startS3rver();
  Object.assign(process.env, {
    AWS_ENDPOINT_URL_S3: server.endpoint,
    AWS_REGION: server.region,
    AWS_ACCESS_KEY_ID: server.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: server.credentials.secretAccessKey,
  });
});
after(async () => {
  for (const k of ENV_KEYS) delete process.env[k];
  await server?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A state directory as saveTrainingState writes it (what the tokenizer stage leaves in <run>/tokenizer). */
async function stateDir(): Promise<string> {
  const dir = join(tempDir('state'), 'tokenizer');
  const params = Float32Array.from({ length: 3000 }, (_, i) => Math.sin(i));
  await saveTrainingState(dir, {
    stage: 'tokenizer',
    step: 7,
    configHash: 'abc',
    layout: [{ name: 'w', shape: [3000], offset: 0 }],
    params,
    optimizer: { type: 'adamw', updates: 7, range: [0, 3000], slots: { m: params.map((x) => x / 2) } },
    extra: { lastUsed: Int32Array.from([1, 2, 3]) },
  });
  return dir;
}

async function rejection(p: Promise<unknown>): Promise<PartiError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof PartiError, String(err));
    return err;
  }
  assert.fail('expected a rejection');
}

for (const kind of ['s3', 'file'] as const) {
  test(`${kind}://: publish, fetch verified into a local directory, fetch again from the cache; missing, corrupt and truncated objects are named`, async () => {
    const src = await stateDir();
    const url = kind === 's3' ? `s3://${server.bucket}/published-${Date.now()}` : pathToFileURL(tempDir('store')).href;
    const bytes = await publishStateDir(src, url);
    assert.equal(bytes, readFileSync(join(src, 'state.bin')).length + readFileSync(join(src, 'checkpoint.json')).length);
    const store = openStore(url);
    try {
      assert.match((await store.get(SUMS_FILE)).toString(), /^[0-9a-f]{64} {2}state\.bin\n[0-9a-f]{64} {2}checkpoint\.json\n$/);

      const into = join(tempDir('into'), 'tokenizer-from');
      assert.equal(await fetchPublishedState(url, into), into);
      for (const f of ['state.bin', 'checkpoint.json']) assert.deepEqual(readFileSync(join(into, f)), readFileSync(join(src, f)), f);
      // the cache: a second fetch with matching sha256s leaves the files alone
      const before = statSync(join(into, 'state.bin')).ino;
      await fetchPublishedState(url, into);
      assert.equal(statSync(join(into, 'state.bin')).ino, before, 'not fetched again');

      // a replaced object: the sha256 check names it
      const good = readFileSync(join(src, 'state.bin'));
      const flipped = Buffer.from(good);
      flipped[100] = flipped[100]! ^ 0xff;
      await store.put('state.bin', flipped);
      const corrupt = await rejection(fetchPublishedState(url, join(tempDir('c'), 't')));
      assert.equal(corrupt.code, 'checkpoint');
      assert.match(corrupt.message, new RegExp(`^${url.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}/state\\.bin: sha256 differs from SHA256SUMS`));

      // uploaded by other means without SHA256SUMS: sizes are still checked against the manifest
      await store.delete(SUMS_FILE);
      await store.put('state.bin', good.subarray(0, good.length - 8));
      const truncated = await rejection(fetchPublishedState(url, join(tempDir('t'), 't')));
      assert.match(truncated.message, /state\.bin: \d+ bytes, checkpoint\.json describes \d+ \(truncated/);
      await store.put('state.bin', good);
      await fetchPublishedState(url, join(tempDir('ok'), 't'));

      // nothing there: one line naming the URL
      const missingUrl = `${url}/nothing-here`;
      const missing = await rejection(fetchPublishedState(missingUrl, join(tempDir('m'), 't')));
      assert.match(missing.message, new RegExp(`^${missingUrl.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: no trained state there`));
    } finally {
      await store.close();
    }
  });
}

test('a broken state directory is refused before anything is uploaded: the good publication stays whole', async () => {
  const src = await stateDir();
  const url = pathToFileURL(tempDir('keep')).href;
  await publishStateDir(src, url);
  const store = openStore(url);
  try {
    const published = await store.get('state.bin');
    // an unfinished save: state.bin shorter than its checkpoint.json says
    const broken = join(tempDir('broken'), 'tokenizer');
    cpSync(src, broken, { recursive: true });
    writeFileSync(join(broken, 'state.bin'), readFileSync(join(src, 'state.bin')).subarray(0, 1000));
    const refused = await rejection(publishStateDir(broken, url));
    assert.deepEqual(await store.get('state.bin'), published, 'the published state.bin was not replaced');
    assert.equal(refused.code, 'checkpoint');
    assert.match(refused.message, /state\.bin does not match checkpoint\.json .*nothing published/);
    await fetchPublishedState(url, join(tempDir('still'), 't'));
    // a manifest whose array entry is not an object: a one-line PartiError naming the file, not a TypeError
    const odd = JSON.parse(readFileSync(join(src, 'checkpoint.json'), 'utf8')) as { arrays: unknown[] };
    odd.arrays[0] = null;
    writeFileSync(join(broken, 'checkpoint.json'), JSON.stringify(odd));
    const bad = await rejection(publishStateDir(broken, url));
    assert.match(bad.message, /checkpoint\.json: an array entry that is null, not an object$/);
    assert.deepEqual(await store.get('state.bin'), published);
  } finally {
    await store.close();
  }
});

test('a whole run directory uploaded (its tokenizer/ folder) is found too', async () => {
  const src = await stateDir();
  const url = `s3://${server.bucket}/run-${Date.now()}`;
  await publishStateDir(src, `${url}/tokenizer`);
  const into = join(tempDir('run'), 't');
  await fetchPublishedState(url, into);
  assert.deepEqual(readFileSync(join(into, 'state.bin')), readFileSync(join(src, 'state.bin')));
});

test('training.tokenizerFrom accepts a path, s3:// and file://, and refuses other URL schemes', () => {
  const base = parseConfig(
    { name: 'x', model: tinyModel(), data: {}, training: { tokenizer: stage(), parti: stage() } },
    'test',
  );
  for (const ok of ['runs/tok', '/abs/run', 's3://bucket/prefix', 'file:///tmp/tok']) {
    assert.equal(parseConfig({ ...base, training: { ...base.training, tokenizerFrom: ok } }, 'test').training.tokenizerFrom, ok);
  }
  assert.throws(() => parseConfig({ ...base, training: { ...base.training, tokenizerFrom: 'gs://bucket/tok' } }, 'test'), /training\.tokenizerFrom: a path, s3:\/\/bucket\/prefix or file:\/\/\/dir/);
});

function stage() {
  return { steps: 2, batchSize: 2, optimizer: { type: 'adamw', lr: 0.001 } };
}
function tinyModel() {
  return {
    text: { vocabSize: 259, maxLength: 8, layers: 1, dModel: 8, heads: 2 },
    image: { layers: 1, dModel: 8, heads: 2 },
    tokenizer: { imageSize: 8, patchSize: 4, encoder: { layers: 1, dModel: 8, heads: 2 }, decoder: { layers: 1, dModel: 8, heads: 2 }, codebookSize: 4, codeDim: 2 },
  };
}

test('parti train --stage tokenizer --publish-tokenizer s3://…, then Parti trains in a fresh run directory from training.tokenizerFrom: s3://…', { timeout: 120_000 }, async () => {
  const url = `s3://${server.bucket}/tok-${Date.now()}`;
  const work = tempDir('cli');
  const config = { name: 'pub', model: tinyModel(), data: { synthetic: { samples: 16, seed: 0 } }, training: { seed: 0, tokenizer: stage(), parti: stage(), tokenizerFrom: url } };
  const cfg = join(work, 'job.yaml');
  writeFileSync(cfg, stringify(config));
  const env = { ...process.env, PARTI_LOG_LEVEL: 'warn' };
  const tok = await run(process.execPath, [BIN, 'train', '--config', cfg, '--run-dir', join(work, 'tok'), '--stage', 'tokenizer', '--publish-tokenizer', url], { env, timeout: 60_000 });
  assert.match(tok.stderr, new RegExp(`tokenizer: published to ${url.replace(/[/.]/g, '\\$&')} \\(.* MiB, with SHA256SUMS\\)`));
  // --single-process publishes too (the tokenizer is already trained in that run directory: it is only uploaded)
  const fileUrl = pathToFileURL(join(work, 'published')).href;
  const again = await run(process.execPath, [BIN, 'train', '--config', cfg, '--run-dir', join(work, 'tok'), '--single-process', '--stage', 'tokenizer', '--publish-tokenizer', fileUrl], { env, timeout: 60_000 });
  assert.match(again.stderr, /tokenizer: published to file:/);
  await fetchPublishedState(fileUrl, join(work, 'from-file'));
  assert.deepEqual(readFileSync(join(work, 'from-file', 'state.bin')), readFileSync(join(work, 'tok', 'tokenizer', 'state.bin')));
  // without --stage tokenizer there is nothing to publish: a usage error before anything runs
  const usage = await run(process.execPath, [BIN, 'train', '--config', cfg, '--run-dir', join(work, 'x'), '--publish-tokenizer', url], { env, timeout: 60_000 }).then(
    () => assert.fail('expected a usage error'),
    (err: { code: number; stderr: string }) => err,
  );
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /^parti: --publish-tokenizer: needs --stage tokenizer/m);

  // a fresh run directory, as in a pod: the tokenizer comes from the bucket
  // (the launcher checks it, then a worker process fetches it for its model)
  const parti = await run(process.execPath, [BIN, 'train', '--config', cfg, '--run-dir', join(work, 'pod'), '--workers', '1', '--stage', 'parti'], { env, timeout: 90_000 });
  assert.match(parti.stderr, /parti step +2\/2/);
  assert.match(parti.stderr, /sample image: /);
  assert.deepEqual(readFileSync(join(work, 'pod', 'tokenizer-from', 'state.bin')), readFileSync(join(work, 'tok', 'tokenizer', 'state.bin')));
  // the single-process trainer reads it the same way
  const single = await run(process.execPath, [BIN, 'train', '--config', cfg, '--run-dir', join(work, 'single'), '--single-process', '--stage', 'parti'], { env, timeout: 90_000 });
  assert.match(single.stderr, /parti step +2\/2/);
  // gone from the bucket: the error names the URL
  const store = openStore(url);
  await store.delete('checkpoint.json');
  await store.close();
  const failed = await run(process.execPath, [BIN, 'train', '--config', cfg, '--run-dir', join(work, 'pod2'), '--single-process', '--stage', 'parti'], { env, timeout: 60_000 }).then(
    () => assert.fail('expected a failure'),
    (err: { code: number; stderr: string }) => err,
  );
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, new RegExp(`parti: ${url.replace(/[/.]/g, '\\$&')}: no trained state there`));
});
