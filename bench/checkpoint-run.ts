/**
 * Turns one committed cluster checkpoint of a run (RUN_DIR/checkpoints, step STEP) into a run
 * directory that `parti eval` and `parti generate` read (OUT/config.json, OUT/parti, and the run's
 * tokenizer), so agreement can be measured at intermediate steps of a run.
 *
 *   npx tsx bench/checkpoint-run.ts RUN_DIR STEP OUT
 */
import { cp, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { configHash, parseConfig } from '../src/config/load.ts';
import { checkpointUrl } from '../src/coordinator/protocol.ts';
import { PartiTrainable } from '../src/model/parti-training.ts';
import { saveTrainingState } from '../src/model/training-state.ts';
import { createOptimizer } from '../src/model/optimizer.ts';
import { loadCheckpoint } from '../src/storage/checkpoint-load.ts';
import { openStore } from '../src/storage/open-store.ts';
import { CheckpointShards } from '../src/worker/checkpoint-shards.ts';

const [run, stepArg, out] = process.argv.slice(2);
if (!run || !stepArg || !out) throw new Error('usage: bench/checkpoint-run.ts RUN_DIR STEP OUT');
const body = JSON.parse(await readFile(join(run, 'parti-job.json'), 'utf8')) as unknown;
const config = parseConfig(body, `${run}/parti-job.json`);
const hash = configHash(config);
const layout = new PartiTrainable(config.model).layout;
const store = openStore(checkpointUrl(config, run));
const step = Number(stepArg);
await loadCheckpoint(store, step, { configHash: hash, select: () => false });
const state = await new CheckpointShards(store, hash).load(step, 0, layout.size);
await store.close();
await mkdir(out, { recursive: true });
await saveTrainingState(join(out, 'parti'), {
  stage: 'parti',
  step,
  configHash: hash,
  layout: layout.toJSON(),
  params: state.params,
  optimizer: createOptimizer(config.training.parti.optimizer, layout).exportState(),
  extra: {},
});
await cp(join(run, 'tokenizer'), join(out, 'tokenizer'), { recursive: true });
await writeFile(join(out, 'config.json'), JSON.stringify({ configHash: hash, config }, null, 2));
console.log(`${out}: parti step ${step} of ${run}`);
