// What the dashboard's gallery costs the coordinator: configs/tiny.yaml (or --config FILE), a
// committed checkpoint of initialized Parti parameters in a temporary file store, an initialized
// image tokenizer, and the real GalleryGenerator (its own thread, nice 10) sampling the prompts of
// four checkpoint commits. Prints the thread's warm-up, each generation's time, and the main
// thread's event-loop delay meanwhile (what heartbeats and the dashboard would feel).
//   npx tsx bench/dashboard-gallery.ts [--config configs/tiny.yaml] [--prompts 4]
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { configHash, loadConfig } from '../src/config/load.ts';
import { gallerySchema } from '../src/config/dashboard-schema.ts';
import { GalleryGenerator } from '../src/dashboard/gallery-generator.ts';
import { RunStateStore } from '../src/dashboard/run-state.ts';
import { createOptimizer } from '../src/model/optimizer.ts';
import { partiLayout } from '../src/model/parti.ts';
import { saveTrainingState } from '../src/model/training-state.ts';
import { VitVqgan } from '../src/model/vit-vqgan.ts';
import { commitManifest, writeCheckpointObject } from '../src/storage/checkpoint-commit.ts';
import { openStore } from '../src/storage/open-store.ts';

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1]! : dflt;
};
const config = loadConfig(arg('--config', 'configs/tiny.yaml'));
const promptCount = Number(arg('--prompts', '4'));
const prompts = ['a red circle', 'two blue squares', 'a small green triangle on the left', 'a yellow star'].slice(0, promptCount);
const dir = mkdtempSync(join(tmpdir(), 'parti-bench-gallery-'));
try {
  const hash = configHash(config);
  const vq = new VitVqgan(config.model.tokenizer);
  await saveTrainingState(join(dir, 'tokenizer'), {
    stage: 'tokenizer',
    step: 0,
    configHash: hash,
    layout: vq.layout.toJSON(),
    params: vq.layout.initialize(config.training.seed),
    optimizer: createOptimizer(config.training.tokenizer.optimizer, vq.layout).exportState(),
    extra: {},
  });
  const storeUrl = join(dir, 'checkpoints');
  const store = openStore(storeUrl);
  const params = partiLayout(config.model).initialize(config.training.seed);
  const steps = [100, 200, 300, 400];
  for (const step of steps) {
    const ref = await writeCheckpointObject(store, step, 'params.bin', params);
    await commitManifest(store, { step, worldSize: 1, configHash: hash, config, cursor: null, rng: null, objects: [ref] }, { keep: 10 });
  }
  await store.close();
  const runState = new RunStateStore({ jobId: 'bench', name: 'bench', configHash: hash, galleryKeep: 100 });
  const gallery = gallerySchema.parse({ prompts, everySteps: 100 });
  const gen = new GalleryGenerator({ store: runState, gallery, source: { config, configHash: hash, checkpointStore: storeUrl, tokenizerDir: join(dir, 'tokenizer') } });
  // The sampling thread does not keep a process alive (the coordinator's servers do): this does.
  const alive = setInterval(() => {}, 1000);
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  let t = performance.now();
  gen.warm();
  // The first generation includes what warm() has not finished (thread start, tsx, tfjs, tokenizer).
  for (const [i, step] of steps.entries()) {
    t = performance.now();
    gen.checkpointCommitted(step);
    await gen.idle();
    const ms = performance.now() - t;
    const items = runState.gallery().filter((g) => g.step === step);
    const maps = items.reduce((n, g) => n + g.attention.length, 0);
    console.log(`step ${step}: ${items.length} images, ${maps} attention maps in ${(ms / 1000).toFixed(2)} s${i === 0 ? ' (with thread start and warm-up)' : ''}`);
  }
  delay.disable();
  console.log(`counts ${JSON.stringify(gen.counts)}`);
  console.log(`main-thread event-loop delay meanwhile: max ${(delay.max / 1e6).toFixed(1)} ms, p99 ${(delay.percentile(99) / 1e6).toFixed(1)} ms, mean ${(delay.mean / 1e6).toFixed(1)} ms`);
  console.log(`params ${params.length} (${(params.byteLength / 2 ** 20).toFixed(1)} MiB), image tokens ${config.model.tokenizer.imageSize / config.model.tokenizer.patchSize} ^2, rss ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB, load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  await gen.close();
  clearInterval(alive);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
