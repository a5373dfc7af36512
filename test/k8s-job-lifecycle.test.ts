// The lifecycle a Kubernetes job goes through, with real `parti coordinator --when-finished serve`
// (what the Deployment runs) and `parti worker` processes (what the Indexed Job runs) on the linear
// test model: the exit codes the worker Job's podFailurePolicy reads (143 after SIGTERM, 75 when
// the coordinator was stopped or stayed unreachable, 0 only at the end), and a finished job that stays finished: the
// coordinator serves it instead of exiting, and a restarted coordinator serves it at once and tells
// late workers it has finished.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Cluster, checkExactlyOnce, linearConfig } from './orchestration-harness.ts';
import { EXIT_FINISHED, EXIT_JOB_STOPPED, EXIT_PREEMPTED } from '../src/worker/worker-exit-code.ts';

const SAMPLES = 240;
const STEPS = 24;

/** Resolves with `p`'s value, or rejects naming `what` after `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([p, new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms).unref())]);
}

async function healthz(dashboard: string): Promise<number> {
  const res = await fetch(new URL('/healthz', dashboard), { signal: AbortSignal.timeout(5000) });
  return res.status;
}

test('exit codes for the Job (143 preempted, 75 coordinator stopped, 0 done) and a finished job that stays finished across coordinator restarts', { timeout: 150_000 }, async () => {
  const cluster = new Cluster('k8s-lifecycle');
  try {
    const cfg = cluster.config(
      'job',
      linearConfig({ workers: 2, reconnectMs: 10_000 }, { steps: STEPS, stepDelayMs: 30 }, { checkpoint: { everySteps: 4, keep: 2, atEnd: true }, dashboard: { port: 0 } }),
    );
    const serve = ['--ledger', 'ledger.jsonl', '--when-finished', 'serve', '--port', '0'];

    // A worker preempted mid-job leaves at a step boundary with 143; the Job starts a replacement.
    const c1 = await cluster.coordinator(cfg, serve, 'coordinator-1');
    const w0 = cluster.worker(cfg, c1.address, 'w0');
    const w1 = cluster.worker(cfg, c1.address, 'w1');
    await c1.waitFor(/"step":4,/, 60_000);
    w1.proc.kill('SIGTERM');
    assert.equal(await within(w1.exited, 30_000, 'the preempted worker'), EXIT_PREEMPTED);
    const w1b = cluster.worker(cfg, c1.address, 'w1b');
    await c1.waitFor(/"step":10,/, 60_000);

    // The coordinator's pod goes away (a drain, a rollout): it checkpoints and stops the job, its
    // workers exit 75 (run them again, not counted), it exits 0 and the Deployment starts another.
    c1.proc.kill('SIGTERM');
    assert.equal(await within(w0.exited, 30_000, 'w0 after the coordinator stopped'), EXIT_JOB_STOPPED);
    assert.equal(await within(w1b.exited, 30_000, 'w1b after the coordinator stopped'), EXIT_JOB_STOPPED);
    assert.equal(await within(c1.exited, 30_000, 'coordinator-1'), 0);
    assert.match(c1.lines.find((l) => l.startsWith('{"done"'))!, /"finished":false/);

    // The new coordinator resumes; replacement workers finish the job and exit 0 (their indexes complete).
    const c2 = await cluster.coordinator(cfg, serve, 'coordinator-2');
    const dashboard2 = (await c2.waitFor(/^dashboard: (\S+)/, 30_000))[1]!;
    const w0c = cluster.worker(cfg, c2.address, 'w0c');
    const w1c = cluster.worker(cfg, c2.address, 'w1c');
    const done2 = await c2.waitFor(/^\{"done":true.*/, 90_000);
    assert.match(done2[0], new RegExp(`"step":${STEPS},.*"finished":true`));
    assert.equal(await within(w0c.exited, 30_000, 'w0c'), EXIT_FINISHED);
    assert.equal(await within(w1c.exited, 30_000, 'w1c'), EXIT_FINISHED);
    checkExactlyOnce(cluster.ledger(), STEPS, SAMPLES);
    const firstResumed = JSON.parse(c2.lines.find((l) => l.startsWith('{"step"'))!) as { step: number };
    assert.ok(firstResumed.step >= 8 && firstResumed.step % 4 === 0, `resumed at a checkpoint step (${firstResumed.step})`);

    // Finished: the coordinator does not exit (a Deployment would restart it), its dashboard answers,
    // and a late worker (the replacement of one preempted at the very end) is told the job is done.
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(c2.proc.exitCode, null, 'the finished coordinator keeps serving');
    assert.equal(await healthz(dashboard2), 200);
    const late = cluster.worker(cfg, c2.address, 'late');
    assert.equal(await within(late.exited, 30_000, 'the late worker'), EXIT_FINISHED);
    c2.proc.kill('SIGTERM');
    assert.equal(await within(c2.exited, 30_000, 'coordinator-2 on SIGTERM'), 0);

    // A worker whose coordinator stays unreachable for runtime.reconnectMs (its pod is being
    // replaced) exits 75 too: the Job starts it again without counting a failure.
    const impatient = cluster.config('impatient', linearConfig({ workers: 2, reconnectMs: 1000 }, { steps: STEPS, stepDelayMs: 30 }, { checkpoint: { everySteps: 4, keep: 2, atEnd: true }, dashboard: { port: 0 } }));
    const orphan = cluster.worker(impatient, c2.address, 'orphan');

    // A coordinator restarted on the finished job (its pod was rescheduled) trains nothing: it
    // serves the finished job at once and workers that join exit 0.
    const c3 = await cluster.coordinator(cfg, serve, 'coordinator-3');
    const done3 = await c3.waitFor(/^\{"done":true.*/, 30_000);
    assert.match(done3[0], new RegExp(`"step":${STEPS},.*"finished":true`));
    const dashboard3 = (await c3.waitFor(/^dashboard: (\S+)/, 30_000))[1]!;
    assert.equal(await healthz(dashboard3), 200);
    const again = cluster.worker(cfg, c3.address, 'again');
    assert.equal(await within(again.exited, 30_000, 'a worker of the finished job'), EXIT_FINISHED);
    assert.equal(await within(orphan.exited, 30_000, 'the worker without a coordinator'), EXIT_JOB_STOPPED);
    assert.equal(c3.proc.exitCode, null, 'still serving');
    assert.ok(!c3.lines.some((l) => l.startsWith('{"step"')), 'no step trained again');
    checkExactlyOnce(cluster.ledger(), STEPS, SAMPLES);
    c3.proc.kill('SIGTERM');
    assert.equal(await within(c3.exited, 30_000, 'coordinator-3 on SIGTERM'), 0);
  } finally {
    await cluster.killAll();
  }
});
