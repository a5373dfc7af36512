import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import pino from 'pino';
import { listImportItems, importImages, parseCsv } from '../src/data/image-import.ts';
import { openStore } from '../src/storage/open-store.ts';
import { openShardSet } from '../src/data/shard-index.ts';
import { ShardSampleReader } from '../src/data/sample-reader.ts';
import { loadConfig } from '../src/config/load.ts';
import { shapesSample } from '../src/data/shapes.ts';
import { writeShapesSet } from '../src/data/shapes-shards.ts';
import { runParti } from './helpers/parti-cli.ts';

const root = path.resolve(import.meta.dirname, '..');
const quiet = pino({ level: 'silent' });
let dir: string;

/** Runs the CLI from the checkout's root with warnings-only logs. */
const parti = (...args: string[]) => runParti(args, { cwd: root, env: { PARTI_LOG_LEVEL: 'warn', PARTI_LOG_FORMAT: undefined } });

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'parti-cmd-'));
});
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('parti data synth and inspect --json; a bad flag exits 2 with one line', { timeout: 120_000 }, async () => {
  const out = path.join(dir, 'synth');
  const synth = await parti('data', 'synth', '--out', out, '--samples', '120', '--shard-size', '50', '--seed', '5', '--json');
  assert.equal(synth.code, 0, synth.stderr);
  const made = JSON.parse(synth.stdout);
  assert.equal(made.train, `${pathToFileURL(out).href}/train-{000000..000002}.tar`);
  assert.equal(made.heldOutSamples, 64);
  const inspect = await parti('data', 'inspect', made.train, '--image-size', '32', '--json');
  assert.equal(inspect.code, 0, inspect.stderr);
  const report = JSON.parse(inspect.stdout);
  assert.deepEqual({ shards: report.shards, samples: report.samples, good: report.good, bad: report.bad }, { shards: 3, samples: 120, good: 120, bad: {} });
  const bad = await parti('data', 'synth', '--out', out, '--samples', 'many');
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--samples: must be an integer/);
  assert.equal(bad.stderr.trim().split('\n').length, 1);
});

test('import: a folder with captions, a CSV and a JSONL; resized and center-cropped; bad inputs skipped and counted', async () => {
  const src = path.join(dir, 'photos');
  await mkdir(src, { recursive: true });
  const wide = await sharp({ create: { width: 120, height: 60, channels: 3, background: { r: 200, g: 10, b: 10 } } }).jpeg().toBuffer();
  await writeFile(path.join(src, 'one.jpg'), wide);
  await writeFile(path.join(src, 'one.txt'), 'a wide red photo\n');
  await writeFile(path.join(src, 'two.png'), await sharp({ create: { width: 50, height: 90, channels: 4, background: { r: 0, g: 0, b: 255, alpha: 1 } } }).png().toBuffer());
  await writeFile(path.join(src, 'two.txt'), 'a tall blue one');
  await writeFile(path.join(src, 'nocap.png'), wide);
  await writeFile(path.join(src, 'junk.jpg'), 'not an image');
  await writeFile(path.join(src, 'junk.txt'), 'junk');
  const items = await listImportItems(src);
  assert.equal(items.length, 4);
  const store = openStore(path.join(dir, 'imported'));
  const report = await importImages(items, store, { imageSize: 64, shardSize: 1 });
  assert.equal(report.written, 2);
  assert.deepEqual(report.skipped, { 'missing-caption': 1, 'undecodable-image': 1 });
  await store.close();
  const set = await openShardSet(report.url);
  const reader = new ShardSampleReader(set, { imageSize: 64, log: quiet });
  const { samples } = await reader.read([{ epoch: 0, shard: 0, ordinal: 0 }, { epoch: 0, shard: 1, ordinal: 0 }]);
  assert.deepEqual(samples.map((s) => [s.caption, s.width, s.height]), [['a wide red photo', 64, 64], ['a tall blue one', 64, 64]]);
  assert.ok(samples[1]!.image[2]! > 200 && samples[1]!.image[0]! < 30, 'blue survives RGBA -> RGB');
  await set.store.close();

  assert.deepEqual(parseCsv('image,caption\r\n"a,b.png","say ""hi"""\nc.png,plain\n'), [['image', 'caption'], ['a,b.png', 'say "hi"'], ['c.png', 'plain']]);
  await writeFile(path.join(src, 'list.csv'), 'image,caption\none.jpg,"a wide, red photo"\n');
  await writeFile(path.join(src, 'list.jsonl'), '{"image": "two.png", "caption": "tall"}\n\n{"path": "one.jpg", "text": "wide"}\n');
  assert.deepEqual(await listImportItems(path.join(src, 'list.csv')), [{ image: path.join(src, 'one.jpg'), caption: 'a wide, red photo' }]);
  assert.deepEqual((await listImportItems(path.join(src, 'list.jsonl'))).map((i) => i.caption), ['tall', 'wide']);
});

test('parti data tokenize adds KEY.tokens equal to the tokenizer\'s encode', { timeout: 120_000 }, async () => {
  const cfg = loadConfig(path.join(root, 'configs/tiny.yaml'));
  const { initBackend } = await import('../src/model/backend.ts');
  const { VitVqgan } = await import('../src/model/vit-vqgan.ts');
  const { saveTrainingState } = await import('../src/model/training-state.ts');
  await initBackend('wasm');
  const vq = new VitVqgan(cfg.model.tokenizer);
  const params = vq.layout.initialize(3);
  const ckpt = path.join(dir, 'vq-ckpt');
  await saveTrainingState(ckpt, {
    stage: 'tokenizer',
    step: 0,
    configHash: 'test',
    layout: vq.layout.entries.map((e) => ({ name: e.name, shape: [...e.shape], offset: e.offset })),
    params,
    optimizer: { type: 'adamw', updates: 0, range: [0, params.length], slots: {} },
    extra: {},
  });
  const inStore = openStore(path.join(dir, 'tok-in'));
  const { url: inUrl } = await writeShapesSet(inStore, { samples: 20, seed: 0, imageSize: 32, shardSize: 8, split: 'train' });
  await inStore.close();
  const tokOut = path.join(dir, 'tok-out');
  const tok = await parti('data', 'tokenize', '--tokenizer', ckpt, '--in', inUrl, '--out', tokOut, '--config', 'configs/tiny.yaml', '--json');
  assert.equal(tok.code, 0, tok.stderr);
  const report = JSON.parse(tok.stdout);
  assert.equal(report.samples, 20);
  const set = await openShardSet(report.url);
  assert.deepEqual(set.shards.map((s) => s.samples), [8, 8, 4]);
  const reader = new ShardSampleReader(set, { imageSize: 32, tokenCount: vq.tokens, log: quiet });
  const { samples, skipped } = await reader.read(Array.from({ length: 8 }, (_, ordinal) => ({ epoch: 0, shard: 1, ordinal })));
  assert.deepEqual(skipped, []);
  for (const s of samples) {
    const want = shapesSample(Number(s.key.slice(6)), { seed: 0, imageSize: 32 });
    assert.equal(s.caption, want.caption);
    assert.deepEqual([...s.tokens!], [...vq.encode(params, want.image, 1)]);
  }
  await set.store.close();
});
