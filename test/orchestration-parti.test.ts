// The real Parti tiny model (configs/tiny.yaml, wasm backend) trained data-parallel by real
// coordinator and worker processes: 1 worker and 2 workers with the same global batch reach the
// same losses and parameters within float32 reduction-order tolerance.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadConfig } from '../src/config/load.ts';
import { Cluster, writeInitialTokenizer } from './orchestration-harness.ts';

const STEPS = 2;

async function run(workers: number): Promise<{ cluster: Cluster; losses: number[]; optimizerMs: number[] }> {
  const cluster = new Cluster(`parti${workers}`);
  const tiny = loadConfig('configs/tiny.yaml');
  tiny.data.synthetic.samples = 64;
  tiny.training.parti.steps = STEPS;
  tiny.training.parti.batchSize = 8;
  tiny.training.parti.microBatchSize = 4;
  tiny.runtime.backend = 'wasm';
  tiny.runtime.workers = workers;
  tiny.checkpoint.atEnd = false;
  tiny.checkpoint.everySteps = 0;
  const cfg = cluster.config('tiny', tiny);
  // A frozen image tokenizer at its initialization: the Parti stage only needs fixed codes.
  await writeInitialTokenizer(join(cluster.dir, 'tokenizer'), tiny);
  try {
    const c = await cluster.coordinator(cfg, ['--ledger', 'ledger.jsonl']);
    const ws = Array.from({ length: workers }, (_, i) => cluster.worker(cfg, c.address, `w${i}`));
    await c.waitFor(/"done":true/, 240_000);
    for (const w of ws) assert.equal(await w.exited, 0);
    const summaries = c.lines.filter((l) => l.startsWith('{"step"')).map((l) => JSON.parse(l) as { loss: number; optimizerMs: number });
    return { cluster, losses: summaries.map((x) => x.loss), optimizerMs: summaries.map((x) => x.optimizerMs) };
  } finally {
    await cluster.killAll();
  }
}

test('Parti tiny: 1 and 2 workers reach the same losses and parameters', { timeout: 400_000 }, async () => {
  const one = await run(1);
  const two = await run(2);
  assert.equal(one.losses.length, STEPS);
  assert.equal(two.losses.length, STEPS);
  for (let i = 0; i < STEPS; i++) assert.ok(Math.abs(one.losses[i]! - two.losses[i]!) < 1e-4 * Math.abs(one.losses[i]!), `step ${i} loss: ${one.losses[i]} vs ${two.losses[i]}`);
  // Each step's summary carries the previous update's optimizer time (none before the first).
  for (const r of [one, two]) {
    assert.equal(r.optimizerMs[0], 0);
    assert.ok(r.optimizerMs[1]! > 0, `step 1 summary: optimizerMs ${r.optimizerMs[1]}`);
  }
  const a = one.cluster.params('w0');
  const b = two.cluster.params('w0');
  assert.deepEqual(b, two.cluster.params('w1'), 'both ranks hold bitwise the same parameters');
  assert.equal(a.length, b.length);
  // AdamW's first updates are about lr * sign(g): where a gradient is ~0, reduction-order noise can
  // flip its sign, so a few parameters may differ by up to 2 * lr * steps; nearly all agree closely.
  let far = 0;
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    max = Math.max(max, d);
    if (d > 1e-5) far++;
  }
  assert.ok(max <= 2 * 1e-3 * STEPS + 1e-6, `max difference ${max}`);
  assert.ok(far / a.length < 0.01, `${far} of ${a.length} parameters differ by more than 1e-5`);
});
