// Secrets never leave a run: a real job (`parti coordinator` + 2 `parti worker` processes on
// 127.0.0.1, the linear test model, checkpoints to the run directory, the dashboard with a token)
// runs with planted secret values in its environment and config: S3 keys, a session token, the
// job token, the dashboard token, and a TLS private key. Afterwards every output is searched for
// them: every process's stdout and stderr, every file of the run directory, /metrics, the JSON API
// and the answers to wrong tokens, plus the error output of a worker the job refuses.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { stringify } from 'yaml';
import { Cluster, freePort, linearConfig } from './orchestration-harness.ts';
import { createDevCertificates } from '../src/security/dev-certificates.ts';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? filesUnder(p) : e.isFile() ? [p] : [];
  });
}

test('planted secrets appear in no output of a real run', { timeout: 120_000 }, async () => {
  const tag = randomBytes(6).toString('hex');
  const secrets: Record<string, string> = {
    AWS_ACCESS_KEY_ID: `AKIA${randomBytes(8).toString('hex').toUpperCase()}`,
    AWS_SECRET_ACCESS_KEY: `planted-s3-secret-${tag}-wJalrXUtnFEMI`,
    AWS_SESSION_TOKEN: `planted-session-${tag}-FwoGZXIvYXdzE`,
    PARTI_JOB_TOKEN: `planted-job-token-${tag}-0123456789`,
    PARTI_DASHBOARD_TOKEN: `planted-dashboard-token-${tag}`,
  };
  const configToken = `planted-config-token-${tag}-abcdef`;
  const configDashboardToken = `planted-config-dash-${tag}-abcdef`;
  Object.assign(process.env, secrets);
  cleanups.push(() => {
    for (const k of Object.keys(secrets)) delete process.env[k];
  });

  const cluster = new Cluster('secrets');
  cleanups.push(() => cluster.killAll());
  const certs = await createDevCertificates({ out: join(cluster.dir, '..', `parti-secrets-certs-${tag}`), days: 1 });
  const keyBody = readFileSync(certs.workerKey, 'utf8').split('\n').filter((l) => l && !l.startsWith('-----'));
  const port = await freePort();
  const job = linearConfig(
    { workers: 2, minWorkers: 2 },
    { steps: 30, stepDelayMs: 20 },
    {
      dashboard: { port, token: configDashboardToken },
      checkpoint: { everySteps: 4, keep: 2, atEnd: true },
      security: { token: configToken, tls: { ca: certs.ca, cert: certs.workerCert, key: certs.workerKey } },
    },
  );
  const cfg = cluster.config('job', job);
  const coordinator = await cluster.coordinator(cfg);
  const workers = [cluster.worker(cfg, coordinator.address, 'w0'), cluster.worker(cfg, coordinator.address, 'w1')];

  // A worker of another configuration (its config hash differs): refused, with errors on both sides.
  const otherCfg = join(cluster.dir, 'other.yaml');
  writeFileSync(otherCfg, stringify({ ...job, training: { ...(job as { training: object }).training, seed: 2 } }));
  const stranger = cluster.worker(otherCfg, coordinator.address, 'stranger');

  const base = `http://127.0.0.1:${port}`;
  const answers: string[] = [];
  const get = async (path: string, token?: string): Promise<number> => {
    const r = await fetch(`${base}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {}, signal: AbortSignal.timeout(10_000) });
    const headers: string[] = [];
    r.headers.forEach((v, k) => headers.push(`${k}: ${v}`));
    answers.push(`${path} ${r.status} ${headers.join('; ')} ${await r.text()}`);
    return r.status;
  };
  const deadline = Date.now() + 30_000;
  while ((await fetch(`${base}/readyz`).then((r) => r.status, () => 0)) !== 200) {
    assert.ok(Date.now() < deadline, 'the dashboard did not become ready');
    await new Promise((r) => setTimeout(r, 200));
  }
  await coordinator.waitFor(/"step"/, 60_000);
  const token = configDashboardToken; // the config's token wins over the environment's
  for (const path of ['/metrics', '/api/overview', '/api/workers', '/api/events', '/api/checkpoints', '/api/history']) assert.equal(await get(path, token), 200, path);
  assert.equal(await get('/api/overview', 'wrong-token'), 401);
  assert.equal(await get('/metrics'), 401);
  await coordinator.waitFor(/"done":true/, 60_000);
  for (const path of ['/metrics', '/api/overview', '/api/events', '/api/checkpoints']) await get(path, token).catch(() => 0);
  for (const w of workers) assert.equal(await w.exited, 0);
  assert.notEqual(await stranger.exited, 0, 'the worker of another config must be refused');
  await cluster.killAll();

  const outputs: [string, string][] = [
    ...cluster.children.map((c) => [`${c.name} stdout`, c.lines.join('\n')] as [string, string]),
    ...answers.map((a, i) => [`HTTP answer ${i}`, a] as [string, string]),
    ...filesUnder(cluster.dir)
      .filter((f) => f !== cfg && f !== otherCfg) // the inputs themselves
      .map((f) => [relative(cluster.dir, f), readFileSync(f).toString('latin1')] as [string, string]),
  ];
  assert.ok(outputs.some(([name]) => name.startsWith('checkpoints/') || name.includes('manifests')), `the run wrote checkpoints: ${outputs.map(([n]) => n).join(', ')}`);
  assert.ok(outputs.some(([name, text]) => name === 'stranger.log' && /config hash/.test(text)), 'the refused worker says why');
  const planted = [...Object.values(secrets), configToken, configDashboardToken, ...keyBody];
  const leaks: string[] = [];
  for (const [name, text] of outputs) {
    for (const s of planted) {
      for (const form of [s, Buffer.from(s).toString('base64')]) if (text.includes(form)) leaks.push(`${name} contains ${form.slice(0, 24)}…`);
    }
  }
  assert.deepEqual(leaks, [], `secrets leaked:\n${leaks.join('\n')}`);
  assert.ok(statSync(cluster.dir).isDirectory());
  // Passed: the run directory and certificates go (a failure keeps them for reading).
  rmSync(cluster.dir, { recursive: true, force: true });
  rmSync(join(cluster.dir, '..', `parti-secrets-certs-${tag}`), { recursive: true, force: true });
});
