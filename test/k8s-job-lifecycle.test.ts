// The lifecycle a Kubernetes job goes through, with real `parti coordinator --when-finished serve`
// (what the Deployment runs) and `parti worker` processes (what the Indexed Job runs) on the linear
// test model: the exit codes the worker Job's podFailurePolicy reads (143 after SIGTERM, 75 when
// the coordinator was stopped or stayed unreachable, 0 only at the end), and a finished job that stays finished: the
// coordinator serves it instead of exiting, and a restarted coordinator serves it at once and tells
// late workers it has finished.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Cluster, checkExactlyOnce, linearConfig } from './orchestration-harness.ts';
import { EXIT_FINISHED, EXIT_JOB_STOPPED, EXIT_PREEMPTED, jobFinished, workerExitCode } from '../src/worker/worker-exit-code.ts';
import { Coordinator, type CoordinatorOptions } from '../src/coordinator/coordinator.ts';
import { StepPlan } from '../src/coordinator/step-samples.ts';
import { coordinatorService, fromGrpcError, JoinRefusedError, toGrpcStatus, type Command, type StopCommand } from '../src/coordinator/protocol.ts';
import { EpochPlan } from '../src/data/epoch-plan.ts';
import { createServer, type Server } from 'node:net';
import { rmSync } from 'node:fs';
import { parseConfig } from '../src/config/load.ts';
import { runCoordinator } from '../src/coordinator/coordinator-process.ts';

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

// The worker's exit code rests on the coordinator's typed answers: Stop.finished at the end and the
// JoinRefusal of a join after the end, as they cross the wire (the proto codec, the gRPC status
// mapping). This pins them to the real Coordinator: one that stops sending them fails here and not
// in a cluster (the worker's text fallback, for older coordinators, must not hide that).
test('the worker\'s exit-code rules match what the real coordinator says at the end, on a stop and to a late join', () => {
  const options = (): CoordinatorOptions => ({
    jobId: 'job', configHash: 'h', totalSteps: 1, microBatch: 2,
    plan: new StepPlan(new EpochPlan([{ samples: 20 }], { seed: 0, globalBatch: 4 })),
    targetWorkers: 1, minWorkers: 1, heartbeatMs: 50, failureTimeoutMs: 60_000, stepDeadlineMs: 60_000,
    zeroStage: 0, checkpointEvery: 0, checkpointAtEnd: false, checkpoints: null, ledgerFile: null,
  });
  const join = (c: Coordinator, name: string) => c.join({ jobId: 'job', configHash: 'h', workerName: name, collectiveAddress: `${name}:1`, paramCount: 10 }).workerId;
  const report = (c: Coordinator, workerId: string, kind: 'READY' | 'REDUCED', epoch: number, step: number) =>
    c.report({
      jobId: 'job', workerId, kind, epoch, step, loss: 1, nonFinite: false, computeMs: 1, allReduceMs: 1, optimizerMs: 0, samples: 1,
      optimizerStateBytes: 0, gradNorm: 0, error: '', checkpointObjectsJson: '', learningRate: 0, tokens: 0, allReduceBytes: 0, skippedSamples: {}, snapshotMs: 0,
    });
  /** A stop command as the worker's runtime decodes it. */
  const overTheWire = (stop: StopCommand): StopCommand => coordinatorService.commands.responseDeserialize(coordinatorService.commands.responseSerialize({ stop })).stop!;
  /** A late join's refusal as the worker's runtime sees it (through the gRPC status mapping). */
  const lateJoin = (c: Coordinator) => {
    try {
      join(c, 'late');
    } catch (err) {
      return fromGrpcError(toGrpcStatus(err), 'coordinator c:7070 join');
    }
    assert.fail('the late join was accepted');
  };

  // All steps run: Stop.finished says so (exit 0), signalled or not; so does a late join's JoinRefusal.
  const done = new Coordinator(options());
  try {
    const commands: Command[] = [];
    const id = join(done, 'a');
    done.attach(id, (cmd) => commands.push(cmd), () => {});
    const r = commands.at(-1)!.reconfigure!;
    report(done, id, 'READY', r.epoch, r.step);
    const s = commands.at(-1)!.step!;
    report(done, id, 'REDUCED', s.epoch, s.step);
    const sent = commands.find((c) => c.stop)?.stop;
    assert.ok(sent, `a stop command after the last step: ${JSON.stringify(commands.map((c) => Object.keys(c)[0]))}`);
    const stop = overTheWire(sent);
    assert.equal(stop.finished, true, `Stop.finished after the last step (${stop.reason})`);
    assert.equal(workerExitCode({ ...stop, signalled: false }), EXIT_FINISHED, stop.reason);
    assert.equal(workerExitCode({ ...stop, signalled: true }), EXIT_FINISHED, stop.reason);
    const refused = lateJoin(done);
    assert.equal(refused.code, 'refused');
    assert.ok(refused instanceof JoinRefusedError, `a typed refusal: ${refused.message}`);
    assert.equal(refused.refusal.finished, true, refused.message);
    assert.ok(jobFinished({ reason: refused.message, finished: refused.refusal.finished }), refused.message);
  } finally {
    done.close();
  }

  // Stopped before the end (a rollout): not finished, 75 (143 when the worker itself was signalled).
  const stopped = new Coordinator(options());
  try {
    const commands: Command[] = [];
    const id = join(stopped, 'a');
    stopped.attach(id, (cmd) => commands.push(cmd), () => {});
    stopped.requestStop('SIGTERM');
    const r = commands.find((c) => c.reconfigure)?.reconfigure;
    if (r && !commands.some((c) => c.stop)) report(stopped, id, 'READY', r.epoch, r.step);
    const s = commands.at(-1)?.step;
    if (s && !commands.some((c) => c.stop)) report(stopped, id, 'REDUCED', s.epoch, s.step);
    const sent = commands.find((c) => c.stop)?.stop;
    assert.ok(sent, `a stop command: ${JSON.stringify(commands.map((c) => Object.keys(c)[0]))}`);
    assert.equal(stopped.step, 0, 'stopped before its last step');
    const stop = overTheWire(sent);
    assert.equal(stop.finished, false, `Stop.finished before the last step (${stop.reason})`);
    assert.equal(workerExitCode({ ...stop, signalled: false }), EXIT_JOB_STOPPED, stop.reason);
    assert.equal(workerExitCode({ ...stop, signalled: true }), EXIT_PREEMPTED, stop.reason);
    // A worker joining the stopped job is not told it has finished (that would exit 0 and complete
    // its Indexed Job index): it gets a retryable answer and tries again.
    const late = lateJoin(stopped);
    assert.notEqual(late.code, 'refused', late.message);
    assert.ok(!(late instanceof JoinRefusedError), late.message);
    assert.ok(!jobFinished({ reason: late.message }), late.message);
    assert.match(late.message, /stopped at step 0 of \d+ \(SIGTERM\); try again when it resumes/);
  } finally {
    stopped.close();
  }
});

function listen(port: number): Promise<Server> {
  const server = createServer();
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '0.0.0.0', () => resolve(server));
  });
}

// In a cluster the dashboard must have its configured port (the Service and probes use it): when it
// is taken the coordinator fails, and must leave nothing behind (its gRPC server, signal handlers).
test('a coordinator whose dashboard port is taken fails and closes its service and signal handlers', { timeout: 30_000 }, async () => {
  const cluster = new Cluster('k8s-dashboard-port');
  const taken = await listen(0);
  try {
    const dashboardPort = (taken.address() as { port: number }).port;
    const probe = await listen(0);
    const grpcPort = (probe.address() as { port: number }).port;
    await new Promise((r) => probe.close(r));
    const config = parseConfig(linearConfig({ workers: 1 }, { steps: 4 }, { dashboard: { host: '0.0.0.0', port: dashboardPort, allowUnauthenticated: true } }), 'job');
    const listeners = ['SIGINT', 'SIGTERM'].map((s) => process.listenerCount(s));
    await assert.rejects(runCoordinator(config, { runDir: cluster.dir, host: '0.0.0.0', port: grpcPort }), new RegExp(`dashboard\\.port: cannot listen on 0\\.0\\.0\\.0:${dashboardPort} \\(EADDRINUSE\\)`));
    assert.deepEqual(['SIGINT', 'SIGTERM'].map((s) => process.listenerCount(s)), listeners, 'signal handlers removed');
    // the coordinator's gRPC port is free again
    await new Promise((r) => listen(grpcPort).then((s) => s.close(r)));
  } finally {
    await new Promise((r) => taken.close(r));
    rmSync(cluster.dir, { recursive: true, force: true });
  }
});

// A worker pod deleted while its coordinator is away (both pods being replaced): it has no
// membership and nothing in flight, so it leaves at once with 143, not after runtime.reconnectMs
// (120 s by default, the pod's whole grace period: the kubelet's SIGKILL, 137, would count as a failure).
test('a worker told to leave while it cannot reach its coordinator leaves at once with 143', { timeout: 60_000 }, async () => {
  const cluster = new Cluster('k8s-leave-joining');
  try {
    const probe = await listen(0);
    const port = (probe.address() as { port: number }).port;
    await new Promise((r) => probe.close(r));
    const cfg = cluster.config('job', linearConfig({ workers: 1, reconnectMs: 120_000 }, { steps: 4 }, { dashboard: { enabled: false } }));
    // (its 'worker started' line is at level info, whatever the suite runs with)
    const level = process.env.PARTI_LOG_LEVEL;
    process.env.PARTI_LOG_LEVEL = 'info';
    const orphan = cluster.worker(cfg, `127.0.0.1:${port}`, 'orphan');
    if (level === undefined) delete process.env.PARTI_LOG_LEVEL;
    else process.env.PARTI_LOG_LEVEL = level;
    let stderr = '';
    orphan.proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const deadline = Date.now() + 20_000;
    while (!/worker started; joining the coordinator/.test(stderr)) {
      assert.ok(Date.now() < deadline && orphan.proc.exitCode === null, `the worker did not start: ${stderr.slice(-1000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    orphan.proc.kill('SIGTERM');
    assert.equal(await within(orphan.exited, 20_000, 'the worker after SIGTERM'), EXIT_PREEMPTED);
    assert.match(stderr, /left while joining the coordinator/);
  } finally {
    await cluster.killAll();
    rmSync(cluster.dir, { recursive: true, force: true });
  }
});
