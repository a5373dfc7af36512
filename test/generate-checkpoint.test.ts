import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { startS3rver, type S3rverHandle } from './helpers/s3rver.ts';
import { S3Store } from '../src/storage/s3-store.ts';
import { loadGenerationCheckpoint } from '../src/generate/generation-checkpoint.ts';
import { smallGenerationConfig, writeRandomRun } from '../src/generate/random-run.ts';

/** Loading a run for generation from a directory, a file:// URL and an s3:// prefix. */
let root = '';
let run = '';
let server: S3rverHandle | null = null;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'parti-generate-ckpt-'));
  run = join(root, 'run');
  await writeRandomRun(run, smallGenerationConfig(), { upsampler: true });
  server = await startS3rver();
});

after(async () => {
  await server?.stop();
  await rm(root, { recursive: true, force: true });
});

test('a run directory, its file:// URL and a copy under s3:// load the same parameters', async () => {
  const local = await loadGenerationCheckpoint(run);
  assert.equal(local.partiStep, 0);
  assert.ok(local.upsampler);
  const viaUrl = await loadGenerationCheckpoint(pathToFileURL(run).href);
  assert.deepEqual(viaUrl.parti, local.parti);

  const s = server!;
  const store = new S3Store(`s3://${s.bucket}/runs/one`, { endpoint: s.endpoint, credentials: s.credentials });
  for (const sub of ['', 'parti', 'tokenizer', 'upsampler']) {
    for (const f of await readdir(join(run, sub), { withFileTypes: true })) {
      if (f.isFile()) await store.put(sub ? `${sub}/${f.name}` : f.name, await readFile(join(run, sub, f.name)));
    }
  }
  await store.close();
  process.env.AWS_ACCESS_KEY_ID = s.credentials.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = s.credentials.secretAccessKey;
  const remote = await loadGenerationCheckpoint(`s3://${s.bucket}/runs/one?endpoint=${encodeURIComponent(s.endpoint)}`);
  assert.equal(remote.configHash, local.configHash);
  assert.deepEqual(remote.parti, local.parti);
  assert.deepEqual(remote.tokenizer, local.tokenizer);
  assert.deepEqual(remote.upsampler?.params, local.upsampler?.params);
  await assert.rejects(
    loadGenerationCheckpoint(`s3://${s.bucket}/runs/none?endpoint=${encodeURIComponent(s.endpoint)}`),
    /not a parti run directory \(no config.json\)/,
  );
});

test('missing, foreign and mismatched runs are one-line checkpoint errors', async () => {
  await assert.rejects(loadGenerationCheckpoint(join(root, 'absent')), { code: 'checkpoint', message: /no such run directory/ });
  const foreign = join(root, 'foreign');
  await writeRandomRun(foreign, smallGenerationConfig());
  // Another model's config beside these weights: the layout check refuses it.
  const other = JSON.parse(await readFile(join(foreign, 'config.json'), 'utf8'));
  other.config.model.image.layers = 3;
  await writeFile(join(foreign, 'config.json'), JSON.stringify(other));
  await assert.rejects(loadGenerationCheckpoint(foreign), { code: 'checkpoint', message: /parameter layout differs/ });
  await writeFile(join(foreign, 'config.json'), '{"configHash": "x", "config": {"model": 1}}');
  await assert.rejects(loadGenerationCheckpoint(foreign), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'checkpoint');
    assert.match(err.message, /not a valid parti config/);
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
  await rm(join(foreign, 'parti'), { recursive: true });
  await writeFile(join(foreign, 'config.json'), JSON.stringify({ ...other, config: { ...other.config, model: { ...other.config.model, image: { ...other.config.model.image, layers: 2 } } } }));
  await assert.rejects(loadGenerationCheckpoint(foreign), { code: 'checkpoint', message: /no trained Parti model/ });
});
