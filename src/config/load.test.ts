import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { configHash, loadConfig, parseConfigText } from './load.ts';
import { PartiError } from '../errors.ts';

test('every config in configs/ loads', () => {
  const files = readdirSync('configs').filter((f) => f.endsWith('.yaml'));
  assert.ok(files.includes('tiny.yaml'));
  for (const f of files) loadConfig(`configs/${f}`);
});

function configError(yaml: string): string {
  try {
    parseConfigText(yaml, 'bad.yaml');
  } catch (err) {
    assert.ok(err instanceof PartiError);
    assert.equal(err.code, 'config');
    return err.message;
  }
  assert.fail('expected a config error');
}

test('a bad field names its path and what is allowed', () => {
  const tiny = loadConfig('configs/tiny.yaml');
  const base = JSON.parse(JSON.stringify(tiny));
  base.model.image.heads = 3; // 128 % 3 != 0
  assert.match(configError(JSON.stringify(base)), /bad\.yaml: model\.image\.heads: heads must divide dModel/);
  base.model.image.heads = 4;
  base.runtime.backend = 'gpu';
  assert.match(configError(JSON.stringify(base)), /runtime\.backend: .*"auto"\|"tensorflow"\|"wasm"\|"cpu"/);
  base.runtime.backend = 'wasm';
  base.training.parti.optimizer.type = 'sgd';
  assert.match(configError(JSON.stringify(base)), /training\.parti\.optimizer\.type/);
  base.training.parti.optimizer.type = 'adamw';
  base.model.text.layrs = 2;
  assert.match(configError(JSON.stringify(base)), /model\.text: Unrecognized key: "layrs"/);
});

test('a missing section says it is required; bad YAML names the line', () => {
  assert.match(configError('model: {}\n'), /bad\.yaml: model\.text: required/);
  assert.match(configError('model: [\n'), /bad\.yaml: line \d+: invalid YAML/);
});

test('the config hash covers the computation and nothing else', () => {
  const tiny = loadConfig('configs/tiny.yaml');
  const h = configHash(tiny);
  assert.match(h, /^[0-9a-f]{16}$/);
  assert.equal(configHash(structuredClone(tiny)), h, 'stable');
  const moreWorkers = structuredClone(tiny);
  moreWorkers.runtime.workers = 4;
  moreWorkers.training.logEvery = 1;
  assert.equal(configHash(moreWorkers), h, 'world size and logging are not in the hash');
  const otherSeed = structuredClone(tiny);
  otherSeed.training.seed = 7;
  assert.notEqual(configHash(otherSeed), h);
  const otherLr = structuredClone(tiny);
  otherLr.training.parti.optimizer.lr = 0.5;
  assert.notEqual(configHash(otherLr), h);
  const tuned = structuredClone(tiny);
  Object.assign(tuned.collective, { bucketMiB: 7, chunkKiB: 512, inflight: 3, streams: 4, deadlineMs: 5000, maxMessageMiB: 16, flowControlWindowMiB: 8, v8InitialOldSpaceMiB: 0 });
  assert.equal(configHash(tuned), h, 'all-reduce transport tuning is not in the hash');
  // A tuning field the code of the run did not know yet (added later with a default) leaves it alone.
  const older = structuredClone(tiny) as unknown as { collective: Record<string, unknown> };
  delete older.collective.v8InitialOldSpaceMiB;
  assert.equal(configHash(older as unknown as typeof tiny), h);
  const compressed = structuredClone(tiny);
  compressed.collective.compress = 'bf16';
  assert.notEqual(configHash(compressed), h, 'wire compression changes the sums: hashed');
});
