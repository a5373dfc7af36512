/**
 * Data reading benchmark: samples/s of reading + decoding shards through the epoch plan and the
 * SampleReader (the path training uses), for 32x32 PNG shards and 256x256 JPEG shards, from
 * file:// and from s3rver, on ONE core (the process re-runs itself under `taskset -c 0`). Next to it: what the
 * tiny config's training consumes, measured here on the same core (wasm backend, batch 16, one
 * gradient step of each stage). Reading must keep at least 10x ahead. s3rver runs in its own
 * process outside the pinned core, as a remote store would.
 *
 *   flock /tmp/parti-bench.lock npx tsx bench/data-read.ts
 */
import { spawnSync } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pino from 'pino';
import sharp from 'sharp';

if (!process.env.PARTI_BENCH_PINNED) {
  // s3rver runs outside the pinned core, as a remote store would; the reader gets one core.
  const { startS3rver } = await import('../test/helpers/s3rver.ts');
    const server = await startS3rver({ bucket: 'bench' });
  let status = 1;
  try {
    const r = spawnSync('taskset', ['-c', '0', process.execPath, ...process.execArgv, ...process.argv.slice(1)], {
      stdio: 'inherit',
      env: { ...process.env, PARTI_BENCH_PINNED: '1', PARTI_BENCH_S3: server.endpoint },
    });
    status = r.status ?? 1;
  } finally {
    await server.stop();
  }
  process.exit(status);
}

const { openStore } = await import('../src/storage/open-store.ts');
const { S3Store } = await import('../src/storage/s3-store.ts');
const { ShardSetWriter } = await import('../src/data/shard-writer.ts');
const { openShardSet } = await import('../src/data/shard-index.ts');
const { EpochPlan } = await import('../src/data/epoch-plan.ts');
const { ShardSampleReader } = await import('../src/data/sample-reader.ts');
const { shapesSample } = await import('../src/data/shapes.ts');
const { mixSeed, SeededRandom } = await import('../src/data/seeded-random.ts');
type ObjectStore = import('../src/storage/object-store.ts').ObjectStore;

sharp.concurrency(1);
const quiet = pino({ level: 'silent' });
const BATCH = 16;

interface SetSpec {
  name: string;
  samples: number;
  shardSize: number;
  size: number;
  format: 'png' | 'jpg';
}
const SETS: SetSpec[] = [
  { name: 'png32', samples: 4000, shardSize: 1000, size: 32, format: 'png' },
  { name: 'jpeg256', samples: 800, shardSize: 200, size: 256, format: 'jpg' },
];

async function encode(spec: SetSpec, i: number): Promise<Buffer> {
  const s = shapesSample(i, { seed: 1, imageSize: spec.size });
  let pixels = s.image;
  if (spec.format === 'jpg') {
    // Photo-like texture: flat shapes would compress (and decode) unrealistically well.
    const rng = new SeededRandom(mixSeed(1, i));
    pixels = new Uint8Array(s.image.length);
    for (let p = 0; p < pixels.length; p++) pixels[p] = Math.max(0, Math.min(255, s.image[p]! + ((rng.nextUint32() & 63) - 32)));
  }
  const img = sharp(pixels, { raw: { width: spec.size, height: spec.size, channels: 3 } });
  return spec.format === 'png' ? img.png().toBuffer() : img.jpeg({ quality: 90 }).toBuffer();
}

async function writeSet(store: ObjectStore, spec: SetSpec, images: Buffer[]): Promise<string> {
  const w = new ShardSetWriter(store, { prefix: spec.name, shardSize: spec.shardSize });
  for (let i = 0; i < spec.samples; i++) {
    await w.add({ key: `s${i}`, files: [{ ext: spec.format, data: images[i]! }, { ext: 'txt', data: Buffer.from(shapesSample(i, { seed: 1, imageSize: 8 }).caption) }] });
  }
  return (await w.finish()).url;
}

async function readEpoch(url: string, spec: SetSpec, storeOptions?: Parameters<typeof openShardSet>[1]): Promise<{ rate: number; bad: number; lagMs: number }> {
  const set = await openShardSet(url, storeOptions);
  // Warm-up outside the timing: sharp/libvips, the JIT and the S3 client start slowly.
  const warm = new ShardSampleReader(set, { imageSize: spec.size, log: quiet });
  await warm.read(Array.from({ length: 64 }, (_, ordinal) => ({ epoch: 0, shard: 0, ordinal })));
  await warm.close();
  const plan = new EpochPlan(set.shards, { seed: 0, globalBatch: BATCH, windowShards: 4 });
  const reader = new ShardSampleReader(set, { imageSize: spec.size, log: quiet });
  const steps = Math.floor(set.samples / BATCH);
  // How long the JavaScript thread (where the training loop runs) is held up while reading.
  const lag = monitorEventLoopDelay({ resolution: 5 });
  lag.enable();
  const t0 = performance.now();
  let cursor = EpochPlan.start();
  let got = 0;
  for (let s = 0; s < steps; s++) {
    // Run 8 steps ahead, as a worker would.
    let ahead = cursor;
    for (let k = 0; k < 8; k++) {
      ahead = plan.advance(ahead);
      reader.prefetch(plan.batchAt(ahead));
    }
    got += (await reader.read(plan.batchAt(cursor))).samples.length;
    cursor = plan.advance(cursor);
  }
  const seconds = (performance.now() - t0) / 1000;
  lag.disable();
  await reader.close();
  await set.store.close();
  const bad = Object.values(reader.stats.bad).reduce((a, b) => a + b, 0);
  return { rate: got / seconds, bad, lagMs: lag.percentile(99) / 1e6 };
}

async function trainingConsumption(): Promise<{ tokenizer: number; parti: number }> {
  const { loadConfig } = await import('../src/config/load.ts');
  const { initBackend } = await import('../src/model/backend.ts');
  const { VitVqgan } = await import('../src/model/vit-vqgan.ts');
  const { PartiTrainable } = await import('../src/model/parti-training.ts');
  const cfg = loadConfig(path.join(import.meta.dirname, '..', 'configs', 'tiny.yaml'));
  await initBackend('wasm');
  const B = cfg.training.tokenizer.batchSize;
  const size = cfg.model.tokenizer.imageSize;
  const images = new Uint8Array(B * size * size * 3);
  const captions: string[] = [];
  for (let i = 0; i < B; i++) {
    const s = shapesSample(i, { seed: 0, imageSize: size });
    images.set(s.image, i * size * size * 3);
    captions.push(s.caption);
  }
  const ids = Array.from({ length: B }, (_, i) => i);
  const time = (fn: (step: number) => void): number => {
    fn(0); // warm-up (kernel compilation, allocation)
    const t0 = performance.now();
    const steps = 3;
    for (let s = 1; s <= steps; s++) fn(s);
    return (performance.now() - t0) / 1000 / steps;
  };
  const vq = new VitVqgan(cfg.model.tokenizer);
  const vqParams = vq.layout.initialize(0);
  const vqStep = time((step) => vq.computeGradients(vqParams, { ids, images }, { step, seed: 0 }));
  const parti = new PartiTrainable(cfg.model);
  const pParams = parti.layout.initialize(0);
  const tokens = vq.encode(vqParams, images, B);
  const batch = parti.makeBatch(ids, captions, tokens);
  const pStep = time((step) => parti.computeGradients(pParams, batch, { step, seed: 0 }));
  return { tokenizer: B / vqStep, parti: B / pStep };
}

const dir = await mkdtemp(path.join(tmpdir(), 'parti-bench-data-'));
const s3 = { endpoint: process.env.PARTI_BENCH_S3!, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } };
try {
  const fileStore = openStore(pathToFileURL(dir).href, { file: { fsync: false } });
  const s3Store = new S3Store(`s3://bench/data`, s3);
  const rows: { set: string; source: string; rate: number; bad: number; mb: number; lagMs: number }[] = [];
  for (const spec of SETS) {
    const images = await Promise.all(Array.from({ length: spec.samples }, (_, i) => encode(spec, i)));
    const mb = images.reduce((n, b) => n + b.length, 0) / spec.samples / 1024;
    const fileUrl = await writeSet(fileStore, spec, images);
    const s3Url = await writeSet(s3Store, spec, images);
    rows.push({ set: spec.name, source: 'file://', mb, ...(await readEpoch(fileUrl, spec)) });
    rows.push({ set: spec.name, source: 's3rver', mb, ...(await readEpoch(s3Url, spec, { storeOptions: { s3 } })) });
  }
  await fileStore.close();
  await s3Store.close();
  const need = await trainingConsumption();
  const consume = Math.max(need.tokenizer, need.parti);
  console.log(`data-read (reader on one core: taskset -c 0, sharp.concurrency(1); s3rver unpinned; global batch ${BATCH}, 8 steps of lookahead)`);
  console.log(`tiny training consumes (measured here, wasm, batch ${BATCH}): tokenizer stage ${need.tokenizer.toFixed(1)} samples/s, Parti stage ${need.parti.toFixed(1)} samples/s`);
  console.log(`${'set'.padEnd(9)} ${'source'.padEnd(8)} ${'KiB/img'.padStart(8)} ${'samples/s'.padStart(10)} ${'x tiny need'.padStart(12)} ${'loop lag p99'.padStart(13)} bad`);
  for (const r of rows) {
    const ratio = r.rate / consume;
    console.log(`${r.set.padEnd(9)} ${r.source.padEnd(8)} ${r.mb.toFixed(1).padStart(8)} ${r.rate.toFixed(0).padStart(10)} ${ratio.toFixed(0).padStart(11)}x ${`${r.lagMs.toFixed(1)} ms`.padStart(13)} ${r.bad}${ratio < 10 ? '  BELOW 10x' : ''}`);
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
