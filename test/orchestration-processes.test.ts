// Real `parti coordinator` and `parti worker` processes on 127.0.0.1 with the linear test model:
// data-parallel equivalence, SIGKILL chaos (waiting for replacements: bitwise; elastic: within
// tolerance), SIGTERM leaving at a step boundary, and a coordinator killed and recovered from its
// checkpoint. Every test has a deadline and kills its children in `finally`.
import { test } from 'node:test';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { Cluster, checkExactlyOnce, freePort, linearConfig, type Child } from './orchestration-harness.ts';

const SAMPLES = 240;
const STEPS = 40;
const BATCH = 24;

/** Runs a job to the end with `n` workers; returns the cluster (params of w0..). */
async function uninterrupted(name: string, n: number, runtime: Record<string, unknown> = {}): Promise<Cluster> {
  const cluster = new Cluster(name);
  try {
    const cfg = cluster.config('job', linearConfig({ workers: n, ...runtime }, { steps: STEPS }));
    const c = await cluster.coordinator(cfg, ['--ledger', 'ledger.jsonl']);
    const workers = Array.from({ length: n }, (_, i) => cluster.worker(cfg, c.address, `w${i}`));
    await c.waitFor(/"done":true/, 60_000);
    for (const w of workers) assert.equal(await w.exited, 0);
    assert.equal(await c.exited, 0);
    checkExactlyOnce(cluster.ledger(), STEPS, SAMPLES);
    const last = c.lines.filter((l) => l.startsWith('{"step"')).at(-1)!;
    const bytes = (JSON.parse(last) as { optimizerStateBytes: number[] }).optimizerStateBytes;
    // the linear model has 49 parameters and 2 float32 Adam moments each
    const expected = runtime.zeroStage === 1 ? [24 * 8, 25 * 8] : Array(n).fill(49 * 8);
    assert.deepEqual(bytes, expected, 'optimizer-state bytes per worker');
    return cluster;
  } finally {
    await cluster.killAll();
  }
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

let baseline2: Float32Array | null = null;

test('1, 2 and 3 worker processes reach the same parameters; ranks agree bitwise', { timeout: 120_000 }, async () => {
  const one = await uninterrupted('eq1', 1);
  const two = await uninterrupted('eq2', 2);
  const three = await uninterrupted('eq3', 3);
  baseline2 = two.params('w0');
  assert.deepEqual(two.params('w1'), baseline2);
  assert.deepEqual(three.params('w0'), three.params('w2'));
  assert.ok(maxDiff(one.params('w0'), baseline2) < 1e-4, `1 vs 2 workers: ${maxDiff(one.params('w0'), baseline2)}`);
  assert.ok(maxDiff(one.params('w0'), three.params('w0')) < 1e-4);
  // (bitwise reproducibility across runs of the same world size: the chaos and recovery tests
  // compare their final parameters to this run's)
});

test('ZeRO-1 across processes: the same parameters as the unsharded run within tolerance, half the optimizer state per worker', { timeout: 90_000 }, async () => {
  baseline2 ??= (await uninterrupted('base2z', 2)).params('w0');
  const zero = await uninterrupted('zero', 2, { zeroStage: 1 });
  assert.deepEqual(zero.params('w0'), zero.params('w1'));
  const d = maxDiff(zero.params('w0'), baseline2);
  assert.ok(d < 1e-5, `ZeRO-1 vs unsharded: ${d}`);
});

/**
 * SIGKILLs a random worker `kills` times at random moments (between 0.3 and 1.2 s apart), restarting
 * each killed worker after `restartDelayMs` as Kubernetes would. Returns the workers alive at the end.
 */
async function chaos(cluster: Cluster, cfg: string, address: string, workers: Child[], kills: number, restartDelayMs: number, seed: number): Promise<Child[]> {
  let rnd = seed;
  const random = () => ((rnd = (Math.imul(rnd, 1103515245) + 12345) >>> 0) / 2 ** 32);
  let next = workers.length;
  const live = [...workers];
  const restarts: Promise<void>[] = [];
  for (let k = 0; k < kills; k++) {
    await new Promise((r) => setTimeout(r, 300 + random() * 900));
    const victim = live.splice(Math.floor(random() * live.length), 1)[0]!;
    victim.proc.kill('SIGKILL');
    restarts.push(
      (async () => {
        await victim.exited;
        await new Promise((r) => setTimeout(r, restartDelayMs));
        live.push(cluster.worker(cfg, address, `w${next++}`));
      })(),
    );
  }
  await Promise.all(restarts);
  return live;
}

test('minimum world size = N: SIGKILLed workers are replaced, the run finishes exactly-once and bitwise equal to an uninterrupted one', { timeout: 150_000 }, async () => {
  baseline2 ??= (await uninterrupted('base2', 2)).params('w0');
  const cluster = new Cluster('chaos-strict');
  try {
    const cfg = cluster.config('job', linearConfig({ workers: 2, minWorkers: 2 }, { steps: STEPS, stepDelayMs: 12 }));
    const c = await cluster.coordinator(cfg, ['--ledger', 'ledger.jsonl']);
    const workers = [cluster.worker(cfg, c.address, 'w0'), cluster.worker(cfg, c.address, 'w1')];
    await c.waitFor(/"step":2,/, 60_000);
    const live = await chaos(cluster, cfg, c.address, workers, 3, 200, 7);
    await c.waitFor(/"done":true/, 90_000);
    for (const w of live) assert.equal(await w.exited, 0);
    checkExactlyOnce(cluster.ledger(), STEPS, SAMPLES);
    assert.ok(cluster.ledger().every((e) => e.worldSize === 2), 'every committed step ran on 2 workers');
    for (const w of live) assert.deepEqual(cluster.params(w.name), baseline2);
  } finally {
    await cluster.killAll();
  }
});

test('ZeRO-1 with a SIGKILLed worker: the lost optimizer shard comes back from the checkpoint; exactly-once, same parameters within tolerance', { timeout: 150_000 }, async () => {
  baseline2 ??= (await uninterrupted('base2zk', 2)).params('w0');
  const cluster = new Cluster('zero-kill');
  try {
    const cfg = cluster.config(
      'job',
      linearConfig({ workers: 2, minWorkers: 2, zeroStage: 1 }, { steps: STEPS, stepDelayMs: 12 }, { checkpoint: { everySteps: 5, keep: 2, atEnd: false } }),
    );
    const c = await cluster.coordinator(cfg, ['--ledger', 'ledger.jsonl']);
    const workers = [cluster.worker(cfg, c.address, 'w0'), cluster.worker(cfg, c.address, 'w1')];
    await c.waitFor(/"step":12,/, 60_000);
    const live = await chaos(cluster, cfg, c.address, workers, 1, 200, 3);
    await c.waitFor(/"done":true/, 90_000);
    for (const w of live) assert.equal(await w.exited, 0);
    checkExactlyOnce(cluster.ledger(), STEPS, SAMPLES);
    const d = maxDiff(cluster.params(live[0]!.name), baseline2);
    assert.ok(d < 1e-5, `ZeRO-1 after a restore vs unsharded: ${d}`);
    assert.match(readFileSync(join(cluster.dir, 'coordinator.log'), 'utf8'), /restoring checkpoint \d+/);
    assert.deepEqual(cluster.params(live[0]!.name), cluster.params(live[1]!.name));
  } finally {
    await cluster.killAll();
  }
});

test('elastic: with 3 workers and a minimum of 2, SIGKILLs shrink the ring, the run goes on and stays exactly-once and within tolerance', { timeout: 150_000 }, async () => {
  baseline2 ??= (await uninterrupted('base2e', 2)).params('w0');
  const cluster = new Cluster('chaos-elastic');
  try {
    const cfg = cluster.config('job', linearConfig({ workers: 3, minWorkers: 2 }, { steps: STEPS, stepDelayMs: 12 }));
    const c = await cluster.coordinator(cfg, ['--ledger', 'ledger.jsonl']);
    const workers = [0, 1, 2].map((i) => cluster.worker(cfg, c.address, `w${i}`));
    await c.waitFor(/"step":2,/, 60_000);
    const live = await chaos(cluster, cfg, c.address, workers, 3, 1500, 11);
    await c.waitFor(/"done":true/, 90_000);
    for (const w of live) assert.equal(await w.exited, 0);
    checkExactlyOnce(cluster.ledger(), STEPS, SAMPLES);
    const sizes = new Set(cluster.ledger().map((e) => e.worldSize));
    assert.ok(sizes.has(2), `the ring shrank to 2 at some point (sizes ${[...sizes]})`);
    const d = maxDiff(cluster.params(live[0]!.name), baseline2);
    assert.ok(d < 1e-4, `elastic run vs uninterrupted: max difference ${d}`);
  } finally {
    await cluster.killAll();
  }
});

test('a frozen worker (SIGSTOP: its connections stay open) is declared dead by missed heartbeats; the job goes on; thawed, it rejoins', { timeout: 120_000 }, async () => {
  const cluster = new Cluster('sigstop');
  try {
    const cfg = cluster.config('job', linearConfig({ workers: 3, minWorkers: 2, heartbeatMs: 200, failureTimeoutMs: 1500 }, { steps: STEPS, stepDelayMs: 15 }));
    const c = await cluster.coordinator(cfg, ['--ledger', 'ledger.jsonl']);
    const workers = [0, 1, 2].map((i) => cluster.worker(cfg, c.address, `w${i}`));
    await c.waitFor(/"step":3,/, 60_000);
    workers[2]!.proc.kill('SIGSTOP');
    const frozenAt = Date.now();
    await c.waitFor(/"worldSize":2,/, 30_000);
    const detectedMs = Date.now() - frozenAt;
    workers[2]!.proc.kill('SIGCONT');
    await c.waitFor(/"done":true/, 90_000);
    for (const w of workers) assert.equal(await w.exited, 0, `${w.name} finished cleanly`);
    checkExactlyOnce(cluster.ledger(), STEPS, SAMPLES);
    const log = readFileSync(join(cluster.dir, 'coordinator.log'), 'utf8');
    assert.match(log, /is gone: no heartbeat for \d+ ms/);
    assert.ok(detectedMs < 15_000, `the job went on without the frozen worker after ${detectedMs} ms`);
    const sizes = cluster.ledger().map((e) => e.worldSize);
    assert.equal(sizes.at(-1), 3, `the thawed worker rejoined (world sizes ${sizes.join(',')})`);
  } finally {
    for (const w of cluster.children) if (w.proc.exitCode === null) w.proc.kill('SIGCONT');
    await cluster.killAll();
  }
});

test('SIGTERM: a worker leaves at a step boundary without losing work; the others go on', { timeout: 90_000 }, async () => {
  const cluster = new Cluster('sigterm');
  try {
    const cfg = cluster.config('job', linearConfig({ workers: 3, minWorkers: 2 }, { steps: 30, stepDelayMs: 10 }));
    const c = await cluster.coordinator(cfg, ['--ledger', 'ledger.jsonl']);
    const workers = [0, 1, 2].map((i) => cluster.worker(cfg, c.address, `w${i}`));
    await c.waitFor(/"step":5,/, 60_000);
    workers[1]!.proc.kill('SIGTERM');
    // 143 = 128 + SIGTERM: left before the end, so an Indexed Job runs that index again
    assert.equal(await workers[1]!.exited, 143, 'the leaver exits at a step boundary, not as done');
    await c.waitFor(/"done":true/, 60_000);
    assert.equal(await workers[0]!.exited, 0);
    assert.equal(await workers[2]!.exited, 0);
    checkExactlyOnce(cluster.ledger(), 30, SAMPLES);
    const ledger = cluster.ledger();
    assert.equal(ledger[0]!.worldSize, 3);
    assert.equal(ledger.at(-1)!.worldSize, 2);
    assert.ok(!c.lines.join('\n').includes('abort'), 'nothing was aborted');
    assert.ok(!/aborting epoch/.test(cluster.children[0]!.lines.join('')));
  } finally {
    await cluster.killAll();
  }
});

test('the coordinator SIGKILLed: a restarted one recovers from the latest checkpoint, workers reconnect, bitwise equal result', { timeout: 150_000 }, async () => {
  baseline2 ??= (await uninterrupted('base2c', 2)).params('w0');
  const cluster = new Cluster('coord-kill');
  try {
    const port = await freePort();
    const cfg = cluster.config(
      'job',
      linearConfig({ workers: 2, minWorkers: 2 }, { steps: STEPS, stepDelayMs: 10 }, { checkpoint: { everySteps: 6, keep: 2, atEnd: true } }),
    );
    const first = await cluster.coordinator(cfg, ['--ledger', 'ledger.jsonl', '--port', String(port)], 'coordinator-1');
    const workers = [cluster.worker(cfg, first.address, 'w0'), cluster.worker(cfg, first.address, 'w1')];
    await first.waitFor(/"step":15,/, 60_000);
    first.proc.kill('SIGKILL');
    await first.exited;
    const second = await cluster.coordinator(cfg, ['--ledger', 'ledger.jsonl', '--port', String(port)], 'coordinator-2');
    await second.waitFor(/"done":true/, 90_000);
    for (const w of workers) assert.equal(await w.exited, 0, 'workers reconnected and finished');
    checkExactlyOnce(cluster.ledger(), STEPS, SAMPLES);
    const firstStep = JSON.parse(second.lines.find((l) => l.startsWith('{"step"'))!) as { step: number };
    assert.ok(firstStep.step >= 6 && firstStep.step % 6 === 0, `resumed at a checkpoint step (${firstStep.step})`);
    assert.deepEqual(cluster.params('w0'), baseline2);
    assert.deepEqual(cluster.params('w1'), baseline2);
  } finally {
    await cluster.killAll();
  }
});
