// `parti train --workers 2` as a user runs it: the launcher starts a coordinator and two workers
// as child processes on 127.0.0.1, restarts a worker that dies (or leaves after SIGTERM, exit
// 143), and on Ctrl-C (SIGINT) checkpoints and stops everything cleanly. The linear test model keeps it fast.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { childPids, Cluster, commandOf, freePort, linearConfig, watchStderr } from './orchestration-harness.ts';
import { scrapeUntil } from './helpers/prometheus-scrape.ts';

test('parti train --workers 2: a dead worker is restarted; SIGINT checkpoints and stops cleanly', { timeout: 120_000 }, async () => {
  const cluster = new Cluster('launcher');
  let tree: number[] = [];
  try {
    const cfg = cluster.config('job', linearConfig({ workers: 2 }, { steps: 400, stepDelayMs: 10 }, { checkpoint: { everySteps: 0, keep: 2, atEnd: true }, dashboard: { port: 0 } }));
    const launcher = cluster.spawn(['train', '--config', cfg, '--run-dir', join(cluster.dir, 'run'), '--workers', '2'], 'launcher');
    const out = watchStderr(launcher);
    const waitErr = (re: RegExp, ms: number) => out.until(String(re), (t) => re.test(t), ms);
    await waitErr(/parti step +10\//, 60_000);
    assert.match(out.text(), /dashboard: http:\/\/127\.0\.0\.1:\d+/);
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
    assert.doesNotMatch(out.text(), /giving up/);
    await new Promise((r) => setTimeout(r, 2000));
    tree = childPids(launcher.proc.pid!);
    await waitErr(/parti step +(2\d|[3-9]\d)\//, 60_000);
    launcher.proc.kill('SIGINT');
    await waitErr(/stopping: checkpoint/, 10_000);
    assert.equal(await launcher.exited, 0, out.text().slice(-2000));
    // Checkpoints are off but for changes that need one: the preempted worker took the job below
    // its minimum (a checkpoint before it waits), and the stop (a checkpoint at the last step).
    const steps = readdirSync(join(cluster.dir, 'run', 'checkpoints', 'manifests')).map((f) => Number(f.replace(/\.json$/, ''))).sort((a, b) => a - b);
    assert.ok(steps.length >= 1 && steps.length <= 2, `checkpoints committed: ${steps}`);
    const stoppedAt = Math.max(...[...out.text().matchAll(/parti step +(\d+)\//g)].map((m) => Number(m[1])));
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

test('parti train fails (exit 2, the worker\'s error) when a worker cannot run its config and the job is stopped', { timeout: 90_000 }, async () => {
  const cluster = new Cluster('launcher-bad-worker');
  try {
    // Two workers on one fixed collective port: the second cannot listen (a usage error, exit 2).
    const port = await freePort();
    const cfg = cluster.config('job', linearConfig({ workers: 2, workerPort: port }, { steps: 400, stepDelayMs: 10 }, { dashboard: { enabled: false } }));
    const launcher = cluster.spawn(['train', '--config', cfg, '--run-dir', join(cluster.dir, 'run'), '--workers', '2'], 'launcher');
    const out = watchStderr(launcher);
    const code = await Promise.race([launcher.exited, new Promise((r) => setTimeout(r, 60_000, 'no exit within 60 s').unref())]);
    const text = out.text();
    assert.match(text, /worker \d failed with a config or usage error \(exit 2; see .*worker-\d\.log\); stopping the job/);
    // Not reported as a trained job: one line with the worker's own error, exit 2 like the worker.
    assert.equal(code, 2, text.slice(-2000));
    assert.match(text, new RegExp(`^parti: worker \\d failed: collective listen 127\\.0\\.0\\.1:${port}: .*\\(see \\S*worker-\\d\\.log\\); the job was stopped$`, 'm'));
  } finally {
    await cluster.killAll();
    rmSync(cluster.dir, { recursive: true, force: true });
  }
});

test('parti train --worker-metrics-port 0: each worker serves its rank\'s /metrics, the launcher prints the URLs (again for a restarted worker)', { timeout: 90_000 }, async () => {
  const cluster = new Cluster('launcher-metrics');
  try {
    const cfg = cluster.config('job', linearConfig({ workers: 2 }, { steps: 400, stepDelayMs: 10 }, { dashboard: { enabled: false } }));
    const launcher = cluster.spawn(['train', '--config', cfg, '--run-dir', join(cluster.dir, 'run'), '--workers', '2', '--worker-metrics-port', '0'], 'launcher');
    const out = watchStderr(launcher);
    const urlsOf = (slot: number) => [...out.text().matchAll(new RegExp(`^worker ${slot} metrics: (http://127\\.0\\.0\\.1:\\d+/metrics)$`, 'gm'))].map((m) => m[1]!);
    await out.until('both workers\' metrics URLs', () => urlsOf(0).length === 1 && urlsOf(1).length === 1, 60_000);
    // (a worker has a rank once it has joined the ring: scrape until it reports a world of 2)
    const inRingOf2 = (url: string) => scrapeUntil(url, (m) => m.get('parti_worker_world_size') === 2, 30_000, 'a world size of 2');
    const ranks: number[] = [];
    for (const url of [urlsOf(0)[0]!, urlsOf(1)[0]!]) ranks.push((await inRingOf2(url)).get('parti_worker_rank')!);
    assert.deepEqual(ranks.sort(), [0, 1]);
    // A restarted worker serves again, and the launcher prints where.
    const killed = urlsOf(0)[0]!;
    const tree = childPids(launcher.proc.pid!).filter((p) => / worker /.test(commandOf(p)) && commandOf(p).includes('parti-final-w0.bin'));
    assert.equal(tree.length, 1, 'the worker of slot 0');
    process.kill(tree[0]!, 'SIGKILL');
    await out.until('a second URL for worker 0', () => urlsOf(0).length === 2, 30_000);
    await inRingOf2(urlsOf(0)[1]!);
    await assert.rejects(fetch(killed, { signal: AbortSignal.timeout(5000) }), Error, 'the killed worker\'s server is gone');
    launcher.proc.kill('SIGINT');
    assert.equal(await launcher.exited, 0, out.text().slice(-2000));
  } finally {
    await cluster.killAll();
  }
});

test('parti train --worker-metrics-port: a bad port, or a run with no workers, is a usage error naming the flag', { timeout: 60_000 }, async () => {
  const cluster = new Cluster('launcher-metrics-flag');
  try {
    const cfg = cluster.config('job', linearConfig({ workers: 2 }, { steps: 4 }, { dashboard: { enabled: false } }));
    for (const [extra, message] of [
      [['--worker-metrics-port', '70000'], /^parti: --worker-metrics-port: must be a port, 0\.\.65535 \(0 = any free\), got "70000"$/m],
      [['--worker-metrics-port', '65535'], /^parti: --worker-metrics-port: 65535 \+ 2 workers goes past port 65535$/m],
      [['--worker-metrics-port', '0', '--single-process'], /^parti: --worker-metrics-port: the workers serve it, and --single-process starts none$/m],
      [['--worker-metrics-port', '0', '--stage', 'tokenizer'], /^parti: --worker-metrics-port: the workers serve it, and --stage tokenizer starts none$/m],
    ] as const) {
      const run = cluster.spawn(['train', '--config', cfg, '--run-dir', join(cluster.dir, 'run'), '--workers', '2', ...extra], 'bad-flag');
      const out = watchStderr(run);
      const code = await Promise.race([run.exited, new Promise((r) => setTimeout(r, 30_000, 'no exit within 30 s').unref())]);
      assert.equal(code, 2, `${extra.join(' ')}: ${out.text()}`);
      assert.match(out.text(), message);
    }
  } finally {
    await cluster.killAll();
    rmSync(cluster.dir, { recursive: true, force: true });
  }
});
