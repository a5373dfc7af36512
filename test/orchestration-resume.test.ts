// `--resume latest|STEP` with real `parti coordinator` / `parti worker` / `parti train` processes on
// the linear test model: a job resumed from an earlier committed step goes on from exactly that
// step and ends bitwise where the uninterrupted run ended; a step that is not committed fails with
// one line naming it; a value that is not a step is a usage error (exit 2).
import { test } from 'node:test';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { Cluster, checkExactlyOnce, linearConfig } from './orchestration-harness.ts';

const SAMPLES = 240;
const STEPS = 10;
const RESUME_AT = 4;

/** Step lines (`{"step":...}`) a coordinator printed, in order. */
function stepsOf(lines: string[]): number[] {
  return lines.filter((l) => l.startsWith('{"step"')).map((l) => (JSON.parse(l) as { step: number }).step);
}

test('--resume STEP continues from exactly that committed step and ends bitwise equal to the uninterrupted run; --resume 999 and --resume foo fail', { timeout: 120_000 }, async () => {
  const cluster = new Cluster('resume');
  try {
    const cfg = cluster.config('job', linearConfig({ workers: 1 }, { steps: STEPS }, { checkpoint: { everySteps: 2, keep: 10, atEnd: true } }));
    // the uninterrupted run, committing checkpoints at steps 2, 4, 6, 8 and 10
    const first = await cluster.coordinator(cfg, ['--ledger', 'ledger.jsonl']);
    const w0 = cluster.worker(cfg, first.address, 'w0');
    await first.waitFor(/"done":true/, 60_000);
    assert.equal(await w0.exited, 0);
    assert.equal(await first.exited, 0);
    checkExactlyOnce(cluster.ledger(), STEPS, SAMPLES);
    const uninterrupted = cluster.params('w0');

    // resume from an earlier committed step (not the latest)
    const resumed = await cluster.coordinator(cfg, ['--ledger', 'ledger.jsonl', '--resume', String(RESUME_AT)], 'coordinator-resumed');
    const w1 = cluster.worker(cfg, resumed.address, 'w1');
    await resumed.waitFor(/"done":true/, 60_000);
    assert.equal(await w1.exited, 0);
    assert.equal(await resumed.exited, 0);
    const steps = stepsOf(resumed.lines);
    assert.equal(steps[0], RESUME_AT, `first step after --resume ${RESUME_AT}: ${JSON.stringify(steps)}`);
    assert.deepEqual(steps, Array.from({ length: STEPS - RESUME_AT }, (_, i) => RESUME_AT + i));
    // the ledger was cut back to step RESUME_AT, then steps RESUME_AT.. were committed once each
    checkExactlyOnce(cluster.ledger(), STEPS, SAMPLES);
    assert.match(readFileSync(join(cluster.dir, 'coordinator-resumed.log'), 'utf8'), new RegExp(`restoring checkpoint ${RESUME_AT}\\b`));
    assert.deepEqual(cluster.params('w1'), uninterrupted, 'resumed run ends bitwise equal to the uninterrupted one');

    // an explicit step that is not committed: one line naming it and the committed steps, no fallback
    const missing = cluster.spawn(['coordinator', '--config', cfg, '--run-dir', cluster.dir, '--port', '0', '--resume', '999'], 'coordinator-999');
    assert.equal(await missing.exited, 1);
    const errors = readFileSync(join(cluster.dir, 'coordinator-999.log'), 'utf8').split('\n').filter((l) => l.startsWith('parti: '));
    assert.equal(errors.length, 1, errors.join('\n'));
    assert.match(errors[0]!, /--resume 999: no committed checkpoint at step 999 .*committed steps: .*\b4\b/);
    assert.ok(!missing.lines.some((l) => l.startsWith('coordinator listening')), 'it did not start the job');

    // the same through `parti train`: the launcher repeats the coordinator's line
    const trainMissing = cluster.spawn(['train', '--config', cfg, '--run-dir', cluster.dir, '--resume', '999'], 'train-999');
    assert.equal(await trainMissing.exited, 1);
    const trainErrors = readFileSync(join(cluster.dir, 'train-999.log'), 'utf8').split('\n').filter((l) => l.startsWith('parti: '));
    assert.equal(trainErrors.length, 1, trainErrors.join('\n'));
    assert.match(trainErrors[0]!, /--resume 999: no committed checkpoint at step 999/);

    // not a step: usage errors, exit 2, before anything starts
    for (const [cmd, value] of [['coordinator', 'foo'], ['coordinator', '-1'], ['train', 'foo'], ['train', '2.5']] as const) {
      const bad = cluster.spawn([cmd, '--config', cfg, '--run-dir', cluster.dir, '--resume', value], `bad-${cmd}-${value}`);
      assert.equal(await bad.exited, 2, `${cmd} --resume ${value}`);
      assert.match(readFileSync(join(cluster.dir, `bad-${cmd}-${value}.log`), 'utf8'), /--resume/);
    }
  } finally {
    await cluster.killAll();
  }
});
