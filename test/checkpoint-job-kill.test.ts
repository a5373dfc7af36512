// Checkpoints of a whole job, with real `parti train` processes (the launcher, a coordinator and
// worker processes) on the linear test model, checkpointing every step:
// - SIGKILL of the whole job (launcher, coordinator and workers at once) at random moments while
//   checkpoints upload, 20 times, restarting after each: `latest` always loads (its newest
//   manifest, no fallback), and the job finally finishes exactly once per sample and bitwise equal
//   to the uninterrupted run (same world size);
// - a job stopped with 2 workers and resumed with 3: exactly-once data across the change, and the
//   parameters within tolerance of the uninterrupted 2-worker run.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { childPids, Cluster, checkExactlyOnce, linearConfig, type Child } from './orchestration-harness.ts';
import { readLedger } from '../src/coordinator/ledger.ts';
import { configHash, parseConfig } from '../src/config/load.ts';
import { openStore } from '../src/storage/open-store.ts';
import { listCheckpointSteps, loadCheckpoint } from '../src/storage/checkpoint-load.ts';

const SAMPLES = 240;
const STEPS = 70;
const KILLS = 20;
const cluster = new Cluster('job-kill');
const config = linearConfig(
  { workers: 2, ledger: 'ledger.jsonl' },
  { dim: 20_000, steps: STEPS, batchSize: 24, microBatchSize: 12 },
  { checkpoint: { everySteps: 1, keep: 2, atEnd: true }, dashboard: { enabled: false } },
);
const cfg = cluster.config('job', config);
const hash = configHash(parseConfig(config, 'job'));

after(async () => {
  // A launcher's coordinator and workers are its children, not the harness's: when a test fails
  // half-way they would outlive a killed launcher (and write into the removed directory).
  const orphans = cluster.children.filter((c) => c.proc.exitCode === null && c.proc.signalCode === null).flatMap((c) => childPids(c.proc.pid!));
  await cluster.killAll();
  for (const pid of orphans) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await waitUntil(() => orphans.every((p) => !alive(p)), 10_000, 'the orphaned coordinator and workers gone').catch(() => {});
  rmSync(cluster.dir, { recursive: true, force: true });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function train(runDir: string, name: string, workers = 2): Child {
  return cluster.spawn(['train', '--config', cfg, '--run-dir', runDir, '--workers', String(workers)], name);
}

/** Committed steps (manifests) in a run directory, newest last. */
function manifestSteps(runDir: string): number[] {
  const dir = join(runDir, 'checkpoints', 'manifests');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .map((f) => /^(\d+)\.json$/.exec(f))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
}

/** Steps with objects but no manifest yet (an upload in flight, or abandoned by a kill). */
function uncommittedSteps(runDir: string): number[] {
  const dir = join(runDir, 'checkpoints', 'steps');
  if (!existsSync(dir)) return [];
  const newest = manifestSteps(runDir).at(-1) ?? -1;
  return readdirSync(dir)
    .map(Number)
    .filter((s) => Number.isInteger(s) && s > newest);
}

/** Waits for `until` (polling), failing after `ms` or when `child` exits first. */
async function waitUntil(until: () => boolean, ms: number, what: string, child?: Child, pollMs = 50): Promise<void> {
  const deadline = Date.now() + ms;
  while (!until()) {
    if (child && (child.proc.exitCode !== null || child.proc.signalCode !== null)) throw new Error(`${child.name} exited (${child.proc.exitCode ?? child.proc.signalCode}) before ${what}`);
    if (Date.now() > deadline) throw new Error(`no ${what} within ${ms} ms (see ${cluster.dir})`);
    await sleep(pollMs);
  }
}

/** Loads `latest` as a restarted coordinator would; it must be the newest manifest, loading without fallback. */
async function latestLoads(runDir: string): Promise<number | null> {
  const store = openStore(join(runDir, 'checkpoints'));
  try {
    const loaded = await loadCheckpoint(store, 'latest', { configHash: hash });
    const steps = await listCheckpointSteps(store);
    if (!loaded) {
      assert.deepEqual(steps, []);
      return null;
    }
    assert.deepEqual(loaded.warnings, [], 'latest loaded without falling back');
    assert.equal(loaded.manifest.step, steps.at(-1));
    return loaded.manifest.step;
  } finally {
    await store.close();
  }
}

function params(file: string): Float32Array {
  const b = readFileSync(file);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

let baseline: Float32Array | null = null;

/** The uninterrupted run with 2 workers (the reference of both tests). */
async function uninterrupted(): Promise<Float32Array> {
  if (baseline) return baseline;
  const runDir = join(cluster.dir, 'uninterrupted');
  const launcher = train(runDir, 'uninterrupted');
  assert.equal(await launcher.exited, 0, `see ${cluster.dir}/uninterrupted.log`);
  checkExactlyOnce(readLedger(join(runDir, 'ledger.jsonl')), STEPS, SAMPLES);
  baseline = params(join(runDir, 'parti-final-w0.bin'));
  assert.deepEqual(params(join(runDir, 'parti-final-w1.bin')), baseline);
  return baseline;
}

test(`the whole job SIGKILLed ${KILLS} times while checkpoints upload: latest always loads; the run finishes exactly once per sample, bitwise equal to the uninterrupted run`, { timeout: 420_000 }, async () => {
  const runDir = join(cluster.dir, 'killed');
  let rnd = 12345;
  const random = () => ((rnd = (Math.imul(rnd, 1103515245) + 12345) >>> 0) / 2 ** 32);
  let inFlight = 0;
  const resumedAt: (number | null)[] = [];
  for (let k = 0; k < KILLS; k++) {
    const before = manifestSteps(runDir).at(-1) ?? -1;
    const launcher = train(runDir, `train-${k}`);
    // training goes on (a new commit); then kill at a random moment once the next upload is seen
    // in flight (objects of a step without a manifest), so that every run progresses by a few steps
    // whatever the machine's speed
    await waitUntil(() => (manifestSteps(runDir).at(-1) ?? -1) > before, 90_000, `new checkpoint after step ${before} (run ${k})`, launcher);
    await waitUntil(() => uncommittedSteps(runDir).length > 0, 30_000, `a checkpoint upload in flight (run ${k})`, launcher, 5);
    await sleep(random() * 50);
    const pids = [launcher.proc.pid!, ...childPids(launcher.proc.pid!)];
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await waitUntil(() => pids.every((p) => !alive(p)), 10_000, 'every process of the job dead');
    if (uncommittedSteps(runDir).length > 0) inFlight++;
    resumedAt.push(await latestLoads(runDir));
  }
  assert.ok(inFlight > 0, `no kill landed while a checkpoint was uploading (${KILLS} kills)`);
  assert.ok((resumedAt.at(-1) ?? 0) < STEPS, `the job was still running at the last kill (latest steps: ${resumedAt.join(',')})`);

  const last = train(runDir, 'train-final');
  assert.equal(await last.exited, 0, `see ${cluster.dir}/train-final.log`);
  assert.equal(await latestLoads(runDir), STEPS);
  checkExactlyOnce(readLedger(join(runDir, 'ledger.jsonl')), STEPS, SAMPLES);
  const final = params(join(runDir, 'parti-final-w0.bin'));
  assert.deepEqual(final, await uninterrupted(), 'bitwise equal to the uninterrupted run');
  process.stderr.write(`# ${KILLS} kills (${inFlight} with a checkpoint upload in flight); latest after each: ${resumedAt.join(',')}\n`);
});

test('a job stopped with 2 workers resumes with 3: exactly-once data across the change; parameters within tolerance of the uninterrupted run', { timeout: 240_000 }, async () => {
  const runDir = join(cluster.dir, 'resized');
  const two = train(runDir, 'train-2-workers', 2);
  await waitUntil(() => (manifestSteps(runDir).at(-1) ?? -1) >= 30, 90_000, 'a checkpoint at step 30 or later', two);
  two.proc.kill('SIGINT'); // Ctrl-C: checkpoint at the next step boundary, then stop
  assert.equal(await two.exited, 0, `see ${cluster.dir}/train-2-workers.log`);
  const stoppedAt = await latestLoads(runDir);
  assert.ok(stoppedAt !== null && stoppedAt >= 30 && stoppedAt < STEPS, `stopped at ${stoppedAt}`);

  const three = train(runDir, 'train-3-workers', 3);
  assert.equal(await three.exited, 0, `see ${cluster.dir}/train-3-workers.log`);
  assert.equal(await latestLoads(runDir), STEPS);
  const ledger = readLedger(join(runDir, 'ledger.jsonl'));
  checkExactlyOnce(ledger, STEPS, SAMPLES);
  assert.deepEqual([...new Set(ledger.map((e) => e.worldSize))], [2, 3], 'two workers, then three');
  assert.equal(ledger.find((e) => e.worldSize === 3)!.step, stoppedAt, 'three workers from the checkpoint step on');
  const w = [0, 1, 2].map((i) => params(join(runDir, `parti-final-w${i}.bin`)));
  assert.deepEqual(w[1], w[0]);
  assert.deepEqual(w[2], w[0]);
  const reference = await uninterrupted();
  let d = 0;
  for (let i = 0; i < reference.length; i++) d = Math.max(d, Math.abs(w[0]![i]! - reference[i]!));
  assert.ok(d < 1e-4, `2 then 3 workers vs 2 throughout: max difference ${d}`);
});
