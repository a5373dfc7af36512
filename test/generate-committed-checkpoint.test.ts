// `parti generate` on what a cluster job leaves behind: committed checkpoints (manifest + verified
// objects) and no final run files. A real `parti coordinator` and `parti worker` train a very small
// Parti model with a checkpoint every 2 steps; generate then reads the newest committed checkpoint
// of the run directory (config from its manifest), a named one (`@STEP`), and, with the newest one
// corrupted, falls back to the one before; a store without a tokenizer is a one-line error. On S3
// (s3rver): checkpoints at checkpoint.url and the tokenizer published at training.tokenizerFrom, read
// by generate and by the dashboard's gallery.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../src/config/load.ts';
import { loadGenerationCheckpoint } from '../src/generate/generation-checkpoint.ts';
import { manifestKey } from '../src/storage/checkpoint-manifest.ts';
import { Cluster, writeInitialTokenizer } from './orchestration-harness.ts';
import { startS3rver } from './helpers/s3rver.ts';
import { publishStateDir } from '../src/storage/published-state.ts';
import { galleryResponseSchema } from '../src/dashboard/api-schema.ts';
import { runParti, userLines } from './helpers/parti-cli.ts';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
});

function smallRun(): Record<string, unknown> & { training: Record<string, unknown>; checkpoint: Record<string, unknown> } {
  return {
    name: 'committed',
    model: {
      text: { vocabSize: 259, maxLength: 24, layers: 1, dModel: 16, heads: 2 },
      image: { layers: 1, dModel: 16, heads: 2 },
      tokenizer: { imageSize: 16, patchSize: 4, encoder: { layers: 1, dModel: 16, heads: 2 }, decoder: { layers: 1, dModel: 16, heads: 2 }, codebookSize: 16, codeDim: 4 },
    },
    data: { source: 'synthetic', synthetic: { samples: 64, seed: 2 } },
    training: {
      seed: 1,
      tokenizer: { steps: 1, batchSize: 4, optimizer: { type: 'adamw', lr: 0.001 } },
      parti: { steps: 6, batchSize: 4, optimizer: { type: 'adamw', lr: 0.001 } },
    },
    checkpoint: { everySteps: 2, keep: 3, atEnd: true },
    runtime: { backend: 'wasm', workers: 1, heartbeatMs: 200, failureTimeoutMs: 5000 },
    dashboard: { enabled: false },
  };
}

test('generate reads a cluster run from its committed checkpoints: newest, @STEP, fallback past a corrupt one', { timeout: 180_000 }, async () => {
  const cluster = new Cluster('gen-committed');
  cleanups.push(() => cluster.killAll());
  const raw = smallRun();
  const config = parseConfig(raw, 'committed test');
  const cfg = cluster.config('committed', raw);
  await writeInitialTokenizer(join(cluster.dir, 'tokenizer'), config);
  const coordinator = await cluster.coordinator(cfg);
  const worker = cluster.worker(cfg, coordinator.address, 'w0');
  assert.equal(await worker.exited, 0, 'the worker ends with the job');
  assert.equal(await coordinator.exited, 0);
  const finalParams = cluster.params('w0');

  // The run directory has no parti/checkpoint.json: generate takes its newest committed checkpoint.
  const newest = await loadGenerationCheckpoint(cluster.dir);
  assert.equal(newest.partiStep, 6);
  assert.deepEqual(newest.parti, finalParams, 'the parameters of the final checkpoint, bit for bit');
  assert.equal(newest.config.model.image.dModel, 16, 'the config of the manifest');
  const at4 = await loadGenerationCheckpoint(`${join(cluster.dir, 'checkpoints')}@4`);
  assert.equal(at4.partiStep, 4);
  assert.notDeepEqual(at4.parti, finalParams);

  const out = join(cluster.dir, 'samples');
  const gen = await runParti(['generate', '--checkpoint', cluster.dir, 'a red circle', '--out', join(out, 's.png'), '--samples', '1', '--seed', '3'], { timeoutMs: 120_000 });
  assert.equal(gen.code, 0, gen.stderr);
  const meta = JSON.parse(readFileSync(join(out, 's.json'), 'utf8')) as { partiStep: number };
  assert.equal(meta.partiStep, 6);

  // The newest checkpoint's params.bin corrupted (same size): a warning naming it, then step 4.
  const manifest6 = JSON.parse(readFileSync(join(cluster.dir, 'checkpoints', manifestKey(6)), 'utf8')) as { objects: { name: string; key: string }[] };
  const paramsFile = join(cluster.dir, 'checkpoints', manifest6.objects.find((o) => o.name === 'params.bin')!.key);
  const bytes = readFileSync(paramsFile);
  bytes[100] = bytes[100]! ^ 0xff;
  writeFileSync(paramsFile, bytes);
  const fallback = await loadGenerationCheckpoint(cluster.dir);
  assert.equal(fallback.partiStep, 4);
  assert.deepEqual(fallback.parti, at4.parti);
  // A named step does not fall back: its problem is the error.
  await assert.rejects(loadGenerationCheckpoint(`${cluster.dir}@6`), /params\.bin/);

  // A bare checkpoint store elsewhere: no tokenizer beside it and none in the config.
  const bare = join(mkdtempSync(join(tmpdir(), 'parti-bare-store-')), 'store');
  cleanups.push(() => rmSync(join(bare, '..'), { recursive: true, force: true }));
  cpSync(join(cluster.dir, 'checkpoints', 'manifests'), join(bare, 'manifests'), { recursive: true });
  cpSync(join(cluster.dir, 'checkpoints', 'steps'), join(bare, 'steps'), { recursive: true });
  const noTok = await runParti(['generate', '--checkpoint', `file://${bare}`, 'x', '--out', join(out, 'x.png')]);
  assert.notEqual(noTok.code, 0);
  assert.deepEqual(userLines(noTok.stderr).filter((l) => l.startsWith('parti:')).length, 1, noTok.stderr);
  assert.match(noTok.stderr, /no trained image tokenizer \(no tokenizer\/ beside the checkpoints and no training\.tokenizerFrom\)/);
  assert.ok(readFileSync(join(bare, manifestKey(4))).length > 0);
});

test('generate reads a cluster job from S3: checkpoints at checkpoint.url, the tokenizer from training.tokenizerFrom', { timeout: 180_000 }, async () => {
  const server = await startS3rver();
  cleanups.push(() => server.stop());
  Object.assign(process.env, {
    AWS_ENDPOINT_URL_S3: server.endpoint,
    AWS_REGION: server.region,
    AWS_ACCESS_KEY_ID: server.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: server.credentials.secretAccessKey,
  });
  cleanups.push(() => {
    for (const k of ['AWS_ENDPOINT_URL_S3', 'AWS_REGION', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) delete process.env[k];
  });
  const cluster = new Cluster('gen-committed-s3');
  cleanups.push(() => cluster.killAll());
  const raw = smallRun();
  const tokUrl = `s3://${server.bucket}/tokenizer`;
  const runUrl = `s3://${server.bucket}/runs/one`;
  raw.training.tokenizerFrom = tokUrl;
  raw.checkpoint.url = runUrl;
  const config = parseConfig(raw, 'committed s3 test');
  // The tokenizer as `parti train --stage tokenizer --publish-tokenizer` leaves it in the bucket.
  const tokDir = join(cluster.dir, 'published-tokenizer');
  const tokenizerParams = await writeInitialTokenizer(tokDir, config);
  await publishStateDir(tokDir, tokUrl);
  // The dashboard's gallery samples the committed checkpoints with the published tokenizer too.
  raw.dashboard = { port: 0, gallery: { prompts: ['a red circle'], everySteps: 2 } };
  const cfg = cluster.config('committed-s3', raw);
  const coordinator = await cluster.coordinator(cfg, ['--when-finished', 'serve']);
  const url = (await coordinator.waitFor(/^dashboard: (http:\S+)$/, 10_000))[1]!;
  const worker = cluster.worker(cfg, coordinator.address, 'w0');
  assert.equal(await worker.exited, 0, 'the worker ends with the job');
  const deadline = Date.now() + 90_000;
  let items: { step: number; prompt: string }[] = [];
  while (items.length === 0) {
    assert.ok(Date.now() < deadline, 'gallery items within 90 s');
    items = galleryResponseSchema.parse(await (await fetch(`${url}api/gallery`)).json()).items;
    if (items.length === 0) await new Promise((r) => setTimeout(r, 300));
  }
  assert.equal(items[0]!.prompt, 'a red circle');
  const events = await (await fetch(`${url}api/events`)).text();
  assert.ok(!/gallery off|gallery.*failed/.test(events), events.slice(0, 2000));
  coordinator.proc.kill('SIGTERM');
  assert.equal(await coordinator.exited, 0);

  const ckpt = await loadGenerationCheckpoint(runUrl);
  assert.equal(ckpt.partiStep, 6);
  assert.deepEqual(ckpt.parti, cluster.params('w0'), 'the final parameters, from the bucket');
  assert.equal(ckpt.tokenizer.length, tokenizerParams);
  const out = join(cluster.dir, 'samples');
  const gen = await runParti(['generate', '--checkpoint', runUrl, 'a blue square', '--out', join(out, 's.png'), '--samples', '1'], { timeoutMs: 120_000 });
  assert.equal(gen.code, 0, gen.stderr);
  assert.equal((JSON.parse(readFileSync(join(out, 's.json'), 'utf8')) as { partiStep: number }).partiStep, 6);
});
