// `parti train --workers 2` as a user runs it: the launcher starts a coordinator and two workers
// as child processes on 127.0.0.1, restarts a worker that dies (or leaves after SIGTERM, exit
// 143), and on Ctrl-C (SIGINT) checkpoints and stops everything cleanly. The linear test model keeps it fast.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Cluster, linearConfig } from './orchestration-harness.ts';

function childPids(pid: number): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function commandOf(pid: number): string {
  try {
    return execFileSync('ps', ['-o', 'args=', '-p', String(pid)], { encoding: 'utf8' });
  } catch {
    return '';
  }
}

test('parti train --workers 2: a dead worker is restarted; SIGINT checkpoints and stops cleanly', { timeout: 120_000 }, async () => {
  const cluster = new Cluster('launcher');
  let tree: number[] = [];
  try {
    const cfg = cluster.config('job', linearConfig({ workers: 2 }, { steps: 400, stepDelayMs: 10 }, { checkpoint: { everySteps: 0, keep: 2, atEnd: true }, dashboard: { port: 0 } }));
    const launcher = cluster.spawn(['train', '--config', cfg, '--run-dir', join(cluster.dir, 'run'), '--workers', '2'], 'launcher');
    const stderr: string[] = [];
    launcher.proc.stderr!.on('data', (d: Buffer) => stderr.push(d.toString()));
    const waitErr = async (re: RegExp, ms: number) => {
      const until = Date.now() + ms;
      while (!re.test(stderr.join(''))) {
        assert.ok(Date.now() < until, `launcher did not print ${re} within ${ms} ms: ${stderr.join('').slice(-2000)}`);
        assert.equal(launcher.proc.exitCode, null, `launcher exited early: ${stderr.join('').slice(-2000)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    await waitErr(/parti step +10\//, 60_000);
    assert.match(stderr.join(''), /dashboard: http:\/\/127\.0\.0\.1:\d+/);
    tree = childPids(launcher.proc.pid!);
    const workers = tree.filter((p) => / worker /.test(commandOf(p)));
    assert.equal(workers.length, 2, 'two worker processes');
    process.kill(workers[0]!, 'SIGKILL');
    await waitErr(/worker \d died \(SIGKILL\); restarting it/, 30_000);
    await new Promise((r) => setTimeout(r, 2000));
    tree = childPids(launcher.proc.pid!);
    // A worker preempted (SIGTERM) leaves at a step boundary with 143: started again, not a crash.
    const survivor = tree.filter((p) => / worker /.test(commandOf(p))).find((p) => p !== workers[0]);
    assert.ok(survivor, 'the worker that was not killed');
    process.kill(survivor, 'SIGTERM');
    await waitErr(/worker \d left before the end \(exit 143\); starting it again/, 30_000);
    assert.doesNotMatch(stderr.join(''), /giving up/);
    await new Promise((r) => setTimeout(r, 2000));
    tree = childPids(launcher.proc.pid!);
    await waitErr(/parti step +(2\d|[3-9]\d)\//, 60_000);
    launcher.proc.kill('SIGINT');
    await waitErr(/stopping: checkpoint/, 10_000);
    assert.equal(await launcher.exited, 0, stderr.join('').slice(-2000));
    // Checkpoints are off but for changes that need one: the preempted worker took the job below
    // its minimum (a checkpoint before it waits), and the stop (a checkpoint at the last step).
    const steps = readdirSync(join(cluster.dir, 'run', 'checkpoints', 'manifests')).map((f) => Number(f.replace(/\.json$/, ''))).sort((a, b) => a - b);
    assert.ok(steps.length >= 1 && steps.length <= 2, `checkpoints committed: ${steps}`);
    const stoppedAt = Math.max(...[...stderr.join('').matchAll(/parti step +(\d+)\//g)].map((m) => Number(m[1])));
    assert.ok(steps.at(-1)! >= stoppedAt, `the stop committed a checkpoint at or after the last step printed (${stoppedAt}): ${steps}`);
    assert.equal(childPids(launcher.proc.pid!).length, 0);
  } finally {
    for (const pid of [...tree, ...childPids(cluster.children[0]?.proc.pid ?? -1)]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await cluster.killAll();
  }
});

/** A TCP port nothing listens on now. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

test('parti train fails (exit 2, the worker\'s error) when a worker cannot run its config and the job is stopped', { timeout: 90_000 }, async () => {
  const cluster = new Cluster('launcher-bad-worker');
  try {
    // Two workers on one fixed collective port: the second cannot listen (a usage error, exit 2).
    const port = await freePort();
    const cfg = cluster.config('job', linearConfig({ workers: 2, workerPort: port }, { steps: 400, stepDelayMs: 10 }, { dashboard: { enabled: false } }));
    const launcher = cluster.spawn(['train', '--config', cfg, '--run-dir', join(cluster.dir, 'run'), '--workers', '2'], 'launcher');
    const stderr: string[] = [];
    launcher.proc.stderr!.on('data', (d: Buffer) => stderr.push(d.toString()));
    const code = await Promise.race([launcher.exited, new Promise((r) => setTimeout(r, 60_000, 'no exit within 60 s').unref())]);
    const text = stderr.join('');
    assert.match(text, /worker \d failed with a config or usage error \(exit 2; see .*worker-\d\.log\); stopping the job/);
    // Not reported as a trained job: one line with the worker's own error, exit 2 like the worker.
    assert.equal(code, 2, text.slice(-2000));
    assert.match(text, new RegExp(`^parti: worker \\d failed: collective listen 127\\.0\\.0\\.1:${port}: .*\\(see \\S*worker-\\d\\.log\\); the job was stopped$`, 'm'));
  } finally {
    await cluster.killAll();
    rmSync(cluster.dir, { recursive: true, force: true });
  }
});
