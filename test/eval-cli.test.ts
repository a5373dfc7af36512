import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { smallGenerationConfig, writeRandomRun } from '../src/generate/random-run.ts';
import { writeShapesSet } from '../src/data/shapes-shards.ts';
import { openStore } from '../src/storage/open-store.ts';
import { runParti, userLines } from './helpers/parti-cli.ts';

/**
 * `parti eval train-probe` and `parti eval` end to end through the CLI, on shapes shards written
 * here and a tiny randomly initialized checkpoint (16x16 images, 16 image tokens): the report has
 * every section with finite numbers, the page is written, and a held-out set holding training
 * captions is refused.
 */
let root = '';
let run = '';
let data = '';

const parti = (args: string[]) => runParti(args, { timeoutMs: 300_000 });
const messages = userLines;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'parti-eval-cli-'));
  run = join(root, 'run');
  data = join(root, 'data');
  await writeRandomRun(run, smallGenerationConfig({ imageSize: 16, patchSize: 4 }));
  const store = openStore(data);
  await writeShapesSet(store, { samples: 400, seed: 3, imageSize: 16, shardSize: 200, split: 'train' });
  await writeShapesSet(store, { samples: 64, seed: 3, imageSize: 16, shardSize: 64, split: 'heldOut' });
  await store.close();
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

test('train-probe, then eval of a tiny checkpoint: every section of the report, JSON and HTML', async () => {
  const probeDir = join(root, 'probe');
  const tp = await parti(['eval', 'train-probe', '--data', data, '--out', probeDir, '--image-size', '16', '--samples', '400', '--epochs', '2', '--json']);
  assert.equal(tp.code, 0, tp.stderr);
  const probe = JSON.parse(tp.stdout) as { kind: string; trainSamples: number; heldOutAccuracy: { images: number } };
  assert.equal(probe.kind, 'shapes');
  assert.equal(probe.trainSamples, 400);
  assert.equal(probe.heldOutAccuracy.images, 64);

  const out = join(root, 'report');
  const r = await parti(['eval', '--checkpoint', run, '--data', data, '--probe', probeDir, '--out', out, '--prompts', '4', '--samples', '2', '--held-out-samples', '32', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout);
  assert.equal(report.partiStep, 0);
  assert.equal(report.heldOut.samples, 32);
  // A random model spreads its probability over the 64 codes: loss near ln 64.
  assert.ok(Math.abs(report.heldOut.tokenLoss - Math.log(64)) < 1.5, `token loss ${report.heldOut.tokenLoss}`);
  assert.ok(Math.abs(report.heldOut.perplexity - Math.exp(report.heldOut.tokenLoss)) < 1e-9);
  assert.ok(Number.isFinite(report.tokenizer.psnr) && report.tokenizer.psnr > 0);
  assert.ok(report.tokenizer.codebookUsage > 0 && report.tokenizer.codebookUsage <= 1);
  assert.equal(report.generation.prompts, 4);
  assert.equal(report.promptAgreement.images, 8);
  for (const k of ['color', 'shape', 'position']) {
    for (const a of [report.promptAgreement, report.cas, report.probe.realHeldOutAccuracy]) assert.ok(a.attributes[k] >= 0 && a.attributes[k] <= 1, k);
  }
  assert.ok(report.fid.generatedVsReal >= 0 && Number.isFinite(report.fid.generatedVsReal));
  assert.equal(report.heldOutCaptions.inProbeTrainingCaptions, 0);
  const saved = JSON.parse(await readFile(join(out, 'report.json'), 'utf8'));
  assert.deepEqual(saved, report);
  const html = await readFile(join(out, 'index.html'), 'utf8');
  assert.match(html, /prompt agreement/);
  assert.match(html, /data:image\/png;base64,/);
  assert.ok((await stat(join(out, 'index.html'))).size > 1000);

  // Reranked by the model's own caption likelihood (the default scorer), as the report says.
  const rr = await parti(['eval', '--checkpoint', run, '--data', data, '--probe', probeDir, '--out', join(root, 'rerank'), '--prompts', '2', '--samples', '1', '--rerank', '3', '--held-out-samples', '8', '--json']);
  assert.equal(rr.code, 0, rr.stderr);
  const rrReport = JSON.parse(rr.stdout);
  assert.equal(rrReport.generation.rerank, 3);
  assert.equal(rrReport.generation.rerankBy, 'caption');
  assert.equal(rrReport.promptAgreement.images, 2);
  assert.match(await readFile(join(root, 'rerank', 'index.html'), 'utf8'), /rerank 3 by caption/);

  // The training shards given as the held-out set: refused before any generation, one line.
  const bad = await parti(['eval', '--checkpoint', run, '--data', data, '--held-out', `${data}/train-{000000..000001}.tar`, '--probe', probeDir, '--out', join(root, 'bad')]);
  assert.notEqual(bad.code, 0);
  const lines = messages(bad.stderr);
  assert.equal(lines.length, 1, bad.stderr);
  assert.match(lines[0]!, /training captions|training split/);
});

test('bad flags and a missing checkpoint are one-line errors', async () => {
  const a = await parti(['eval', '--checkpoint', run, '--data', data, '--samples', '0']);
  assert.equal(a.code, 2);
  assert.match(messages(a.stderr)[0]!, /--samples/);
  for (const flags of [['--rerank', '4', '--rerank-by', 'judge'], ['--rerank-by', 'probe']]) {
    const r = await parti(['eval', '--checkpoint', run, '--data', data, ...flags]);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(messages(r.stderr).length, 1, r.stderr);
    assert.match(messages(r.stderr)[0]!, /--rerank-by/);
  }
  const b = await parti(['eval', '--checkpoint', join(root, 'nope'), '--data', data]);
  assert.notEqual(b.code, 0);
  assert.equal(messages(b.stderr).length, 1, b.stderr);
  assert.match(messages(b.stderr)[0]!, /no such run directory/);
});
