// A real job behind mutual TLS and a job token: `parti coordinator` + 2 `parti worker` processes on
// 127.0.0.1 with certificates from `parti certs init`'s code and the token in a file (as a mounted
// Secret gives it). The job runs to the end over mTLS on both channels (coordinator and ring); a
// worker with another token is refused by the coordinator and says why; a worker whose
// certificate comes from another CA never gets in.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster, linearConfig } from './orchestration-harness.ts';
import { createDevCertificates } from '../src/security/dev-certificates.ts';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

test('a job over mTLS with a job token; a wrong token and a foreign CA are refused', { timeout: 120_000 }, async () => {
  const cluster = new Cluster('mtls-job');
  cleanups.push(() => cluster.killAll());
  const a = await createDevCertificates({ out: join(cluster.dir, 'tls-a'), days: 1 });
  const b = await createDevCertificates({ out: join(cluster.dir, 'tls-b'), days: 1 });
  const tokenFile = join(cluster.dir, 'token');
  writeFileSync(tokenFile, 'the-job-token-0123456789\n', { mode: 0o600 });
  const wrongTokenFile = join(cluster.dir, 'wrong-token');
  writeFileSync(wrongTokenFile, 'another-token-0123456789\n', { mode: 0o600 });
  const cfg = (name: string, tls: object, token: string, runtime: object = {}) =>
    cluster.config(name, linearConfig({ workers: 2, minWorkers: 2, ...runtime }, { steps: 8 }, { security: { tls, tokenFile: token, tokenEnv: 'PARTI_TEST_UNSET_TOKEN' } }));
  const coordinatorCfg = cfg('coordinator', { ca: a.ca, cert: a.coordinatorCert, key: a.coordinatorKey }, tokenFile);
  const workerCfg = cfg('worker', { ca: a.ca, cert: a.workerCert, key: a.workerKey }, tokenFile);

  const coordinator = await cluster.coordinator(coordinatorCfg);
  const wrongToken = cluster.worker(cfg('wrong-token', { ca: a.ca, cert: a.workerCert, key: a.workerKey }, wrongTokenFile), coordinator.address, 'wrong-token');
  const foreign = cluster.worker(cfg('foreign', { ca: b.ca, cert: b.workerCert, key: b.workerKey }, tokenFile, { reconnectMs: 3000 }), coordinator.address, 'foreign');
  assert.notEqual(await wrongToken.exited, 0, 'a worker with another token is refused');
  assert.notEqual(await foreign.exited, 0, 'a worker of another CA never joins');

  const workers = [cluster.worker(workerCfg, coordinator.address, 'w0'), cluster.worker(workerCfg, coordinator.address, 'w1')];
  await coordinator.waitFor(/"done":true/, 90_000);
  for (const w of workers) assert.equal(await w.exited, 0);
  assert.deepEqual(cluster.params('w0'), cluster.params('w1'), 'the ranks agree (the ring ran over mTLS)');

  const log = (name: string) => readFileSync(join(cluster.dir, `${name}.log`), 'utf8');
  assert.match(log('wrong-token'), /coordinator \S+ join: wrong job token/, 'the refused worker says why');
  assert.match(log('foreign'), /cannot reach the coordinator[^\n]*certificate/, 'the foreign worker says its certificate chain failed');
  assert.match(log('coordinator'), /refused a call: wrong job token/, 'the coordinator says why');
  assert.match(log('coordinator'), /mutual TLS on 127\.0\.0\.1/);
  assert.match(log('w0'), /collective: mutual TLS on/);
  assert.ok(!log('wrong-token').includes('the-job-token-0123456789') && !log('coordinator').includes('another-token-0123456789'), 'no token value in any log');
  // Passed: the run directory goes (a failure keeps it for reading).
  rmSync(cluster.dir, { recursive: true, force: true });
});
