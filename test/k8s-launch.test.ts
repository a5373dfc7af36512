import { test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { PartiError } from '../src/errors.ts';
import { applyJob, applyTokenizerJob } from '../src/launch/job-apply.ts';
import { deleteJob } from '../src/launch/job-delete.ts';
import { buildJobObjects, buildTokenizerJob } from '../src/launch/job-objects.ts';
import { formatJobStatus, jobLogs, jobStatus } from '../src/launch/job-status.ts';
import { FakeKubernetesApi } from './helpers/k8s-fake-api-server.ts';
import { writeClusterConfig } from './helpers/k8s-kustomize.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CONFIG = writeClusterConfig('tiny');
const IMAGE = 'registry.example.com/parti:0.1.0-cpu';
const NS = 'ml-team';
const run = promisify(execFile);

let fake: FakeKubernetesApi;
let kubeconfig: string;

beforeEach(async () => {
  fake = new FakeKubernetesApi();
  await fake.start();
  fake.namespaces.add(NS);
  kubeconfig = fake.writeKubeconfig(NS);
  fake.put('secrets', NS, { metadata: { name: 'parti-s3' }, data: { AWS_ACCESS_KEY_ID: 'eA==' } });
  fake.put('secrets', NS, { metadata: { name: 'parti-dashboard' }, data: { token: 'eA==' } });
});

afterEach(async () => {
  await fake.stop();
});

const expected = (workers = 2, image = IMAGE) =>
  buildJobObjects({ name: 'tiny', configText: readFileSync(CONFIG, 'utf8'), image, workers, gpusPerWorker: 0, namespace: NS });

/** Requests that change something. */
const writes = () => fake.requests.filter((r) => r.method !== 'GET').map((r) => `${r.method} ${r.path}`);

async function rejection(promise: Promise<unknown>): Promise<PartiError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof PartiError, `expected a PartiError, got ${err}`);
    assert.ok(!err.message.includes('\n'), `one line: ${err.message}`);
    return err;
  }
  assert.fail('expected a rejection');
}

test('launch checks the namespace and Secrets, then creates the objects in order with the bodies it built', async () => {
  const result = await applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig });
  const want = expected();
  assert.equal(result.namespace, NS);
  assert.deepEqual(
    result.applied.map((a) => `${a.kind}/${a.name} ${a.action}`),
    [`ConfigMap/${want.configMap.metadata!.name} created`, 'Service/tiny-coordinator created', 'Service/tiny-workers created', 'Deployment/tiny-coordinator created', 'Job/tiny-workers created'],
  );
  assert.deepEqual(fake.summary(), [
    `GET /api/v1/namespaces/${NS}`,
    `GET /api/v1/namespaces/${NS}/secrets/parti-s3`,
    `GET /api/v1/namespaces/${NS}/secrets/parti-dashboard`,
    `GET /apis/batch/v1/namespaces/${NS}/jobs/tiny-workers`,
    `POST /api/v1/namespaces/${NS}/configmaps`,
    `POST /api/v1/namespaces/${NS}/services`,
    `POST /api/v1/namespaces/${NS}/services`,
    `POST /apis/apps/v1/namespaces/${NS}/deployments`,
    `POST /apis/batch/v1/namespaces/${NS}/jobs`,
  ]);
  // What reached the server is exactly what was built (nothing dropped by the client's serializer).
  const posted = fake.requests.filter((r) => r.method === 'POST').map((r) => r.body);
  assert.deepEqual(posted, JSON.parse(JSON.stringify([want.configMap, want.coordinatorService, want.workersService, want.coordinator, want.workers])));
  for (const r of fake.requests) {
    assert.equal(r.authorization, 'Bearer fake-token');
    if (r.method === 'POST') assert.equal(r.contentType, 'application/json');
  }
});

test('launching again answers 409s: Services and Deployment are merge-patched, the ConfigMap and Job kept, a new worker count resizes the Job', async () => {
  await applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig });
  fake.requests.length = 0;
  const again = await applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig });
  assert.deepEqual(
    again.applied.map((a) => a.action),
    ['unchanged', 'configured', 'configured', 'configured', 'unchanged'],
  );
  const patches = fake.requests.filter((r) => r.method === 'PATCH');
  assert.deepEqual(
    patches.map((r) => `${r.path} ${r.contentType}`),
    [
      `/api/v1/namespaces/${NS}/services/tiny-coordinator application/merge-patch+json`,
      `/api/v1/namespaces/${NS}/services/tiny-workers application/merge-patch+json`,
      `/apis/apps/v1/namespaces/${NS}/deployments/tiny-coordinator application/merge-patch+json`,
    ],
  );
  assert.deepEqual(patches[2]!.body, JSON.parse(JSON.stringify(expected().coordinator)));

  fake.requests.length = 0;
  const scaled = await applyJob({ configFile: CONFIG, image: IMAGE, workers: 4, kubeconfig });
  assert.equal(scaled.applied.at(-1)!.action, 'scaled');
  const jobPatch = fake.requests.find((r) => r.method === 'PATCH' && r.path.endsWith('/jobs/tiny-workers'))!;
  assert.deepEqual(jobPatch.body, { spec: { parallelism: 4, completions: 4 } });
  assert.equal(fake.get('jobs', NS, 'tiny-workers')!.spec && (fake.get('jobs', NS, 'tiny-workers') as any).spec.completions, 4);
  const coordinatorEnv = (fake.get('deployments', NS, 'tiny-coordinator') as any).spec.template.spec.containers[0].env;
  assert.equal(coordinatorEnv.find((e: any) => e.name === 'PARTI_WORKERS').value, '4');
});

test('a Job with another image, or one that has ended, is refused before anything changes', async () => {
  await applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig });
  fake.requests.length = 0;
  const err = await rejection(applyJob({ configFile: CONFIG, image: 'registry.example.com/parti:0.2.0-cpu', workers: 2, kubeconfig }));
  assert.equal(err.code, 'refused');
  assert.match(err.message, /job tiny-workers already exists in namespace ml-team .*parti launch delete --job tiny/);
  assert.deepEqual(writes(), []);

  (fake.get('jobs', NS, 'tiny-workers') as any).status = { conditions: [{ type: 'Failed', status: 'True', reason: 'BackoffLimitExceeded' }] };
  const ended = await rejection(applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig }));
  assert.equal(
    ended.message,
    'job tiny-workers in namespace ml-team has ended (Failed: BackoffLimitExceeded); to run it again, delete it first with `parti launch delete --job tiny` (the checkpoints stay)',
  );
  assert.deepEqual(writes(), []);
});

test('a missing Secret is a one-line error naming it and how to create it; nothing is created', async () => {
  fake.objects.delete(`secrets/${NS}/parti-s3`);
  const err = await rejection(applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig }));
  assert.equal(err.code, 'usage');
  assert.match(err.message, /^secret parti-s3 not found in namespace ml-team: create it first, e\.g\. `kubectl -n ml-team create secret generic parti-s3 --from-literal=AWS_ACCESS_KEY_ID=/);
  assert.deepEqual(writes(), []);
});

test('403 answers: a forbidden create is a one-line refusal; a forbidden Secret or namespace read is only a warning', async () => {
  fake.forbidden.add('create jobs');
  const err = await rejection(applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig }));
  assert.equal(err.code, 'refused');
  assert.equal(
    err.message,
    'create job tiny-workers in namespace ml-team: forbidden: jobs.batch is forbidden: User "system:serviceaccount:ci:tester" cannot create resource "jobs" in API group "batch" in the namespace "ml-team"',
  );

  fake.forbidden.clear();
  fake.forbidden.add('get secrets');
  fake.forbidden.add('get namespaces');
  const result = await applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig });
  assert.equal(result.applied.at(-1)!.action, 'created');
});

test('404 answers: a missing namespace is named; unreachable clusters and bad configs are one-line errors', async () => {
  const missing = await rejection(applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig, namespace: 'nope' }));
  assert.equal(missing.code, 'usage');
  assert.match(missing.message, /^namespace nope not found/);
  assert.deepEqual(writes(), []);

  // A namespace we may not read, then missing when creating: the 404 on create still names it.
  fake.forbidden.add('get namespaces');
  fake.forbidden.add('get secrets');
  const onCreate = await rejection(applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig, namespace: 'gone' }));
  assert.match(onCreate.message, /^namespace gone not found \(create configmap tiny-config-\w+ in namespace gone: namespaces "gone" not found \(HTTP 404\)\)$/);

  fake.stall = true;
  const hung = await rejection(applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig, requestTimeoutMs: 300 }));
  assert.equal(hung.code, 'deadline');
  assert.equal(hung.message, `read namespace ml-team: no answer from the Kubernetes API at ${fake.url} in time`);
  fake.stall = false;

  const url = fake.url;
  await fake.stop();
  const unreachable = await rejection(applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig }));
  assert.equal(unreachable.code, 'refused');
  assert.equal(unreachable.message, `read namespace ml-team: cannot reach the Kubernetes API at ${url} (ECONNREFUSED)`);

  const badConfig = await rejection(applyJob({ configFile: path.join(ROOT, 'package.json'), image: IMAGE, workers: 2, kubeconfig }));
  assert.equal(badConfig.code, 'config');
  assert.match(badConfig.message, /package\.json: model: required \(object\) \(and 2 more\)$/);
  const local = await rejection(applyJob({ configFile: path.join(ROOT, 'configs/tiny.yaml'), image: IMAGE, workers: 2, kubeconfig }));
  assert.match(local.message, /tiny\.yaml: dashboard\.host: must be 0\.0\.0\.0 in a cluster .*got 127\.0\.0\.1$/);
  const fileCheckpoints = await rejection(
    applyJob({ configFile: writeClusterConfig('tiny', [['url: s3://YOUR-BUCKET/parti', 'url: file:///var/lib/parti/ckpt']]), image: IMAGE, workers: 2, kubeconfig }),
  );
  assert.match(fileCheckpoints.message, /checkpoint\.url: must be s3:\/\/bucket\/prefix in a cluster .*got file:\/\/\/var\/lib\/parti\/ckpt$/);
  const noFinalCheckpoint = await rejection(
    applyJob({ configFile: writeClusterConfig('tiny', [['everySteps: 50\n', 'everySteps: 50\n  atEnd: false\n']]), image: IMAGE, workers: 2, kubeconfig }),
  );
  assert.match(noFinalCheckpoint.message, /checkpoint\.atEnd: must be true in a cluster/);
  const localTokenizer = await rejection(
    applyJob({ configFile: writeClusterConfig('tiny', [[/tokenizerFrom: .*/, 'tokenizerFrom: runs/tiny']]), image: IMAGE, workers: 2, kubeconfig }),
  );
  assert.match(localTokenizer.message, /training\.tokenizerFrom: must be s3:\/\/bucket\/prefix in a cluster .*got runs\/tiny$/);
  const tooFew = await rejection(
    applyJob({ configFile: writeClusterConfig('tiny', [['workers: 2\n', 'workers: 2\n  minWorkers: 3\n']]), image: IMAGE, workers: 2, kubeconfig }),
  );
  assert.equal(tooFew.message, "--workers: 2 is fewer than the config's runtime.minWorkers (3): the job would never start");
  const badFlag = await rejection(applyJob({ configFile: CONFIG, image: IMAGE, workers: 0, kubeconfig }));
  assert.equal(badFlag.message, '--workers: an integer from 1 to 10000, got 0');
});

/** Pods as the Job controller and the Deployment would make them. */
function seedPods(): void {
  const labels = (component: string) => ({ 'app.kubernetes.io/name': 'parti', 'app.kubernetes.io/instance': 'tiny', 'app.kubernetes.io/component': component });
  const running = { phase: 'Running', containerStatuses: [{ name: 'c', ready: true, restartCount: 0, image: IMAGE, imageID: '', state: { running: {} } }] };
  fake.put('pods', NS, { metadata: { name: 'tiny-coordinator-7d9f-abcde', labels: labels('coordinator') }, spec: { containers: [{ name: 'coordinator' }], nodeName: 'node-a' }, status: running });
  for (const index of [1, 0]) {
    fake.put('pods', NS, {
      metadata: { name: `tiny-workers-${index}-x${index}`, labels: { ...labels('worker'), 'job-name': 'tiny-workers', 'batch.kubernetes.io/job-completion-index': String(index) } },
      spec: { containers: [{ name: 'worker' }], nodeName: 'node-b' },
      status:
        index === 1
          ? { phase: 'Running', containerStatuses: [{ name: 'worker', ready: false, restartCount: 2, image: IMAGE, imageID: '', state: { waiting: { reason: 'CrashLoopBackOff' } } }] }
          : running,
    });
  }
  fake.podLogs.set(`${NS}/tiny-coordinator-7d9f-abcde`, 'coordinator up\njob started\n');
  fake.podLogs.set(`${NS}/tiny-workers-0-x0`, 'joined as rank 0\nstep 1\nstep 2\n');
  fake.podLogs.set(`${NS}/tiny-workers-1-x1`, 'joined as rank 1\n');
}

test('mutual TLS: a config with security.tls needs the parti-tls Secret and files where it is mounted; without TLS it must bind as configured', async () => {
  const mtls = writeClusterConfig('tiny', [
    ['  plaintextBind: as-configured\n  # tls: ', '  tls: '],
    ['  # tokenFile: ', '  tokenFile: '],
  ]);
  assert.match(readFileSync(mtls, 'utf8'), /^ {2}tls: \{ ca: \/etc\/parti\/tls\/ca\.crt/m);
  const missing = await rejection(applyJob({ configFile: mtls, image: IMAGE, workers: 2, kubeconfig }));
  assert.match(missing.message, /^secret parti-tls not found in namespace ml-team: create it first, e\.g\. `kubectl -n ml-team create secret generic parti-tls .*parti certs init --out DIR/);
  assert.deepEqual(writes(), []);
  // mounted optionally, so a Secret without a key the config reads would only show as failing pods
  fake.put('secrets', NS, { metadata: { name: 'parti-tls' }, data: { 'ca.crt': 'eA==' } });
  const incomplete = await rejection(applyJob({ configFile: mtls, image: IMAGE, workers: 2, kubeconfig }));
  assert.match(incomplete.message, /^secret parti-tls in namespace ml-team has no key coordinator\.crt, coordinator\.key, worker\.crt, worker\.key, token \(/);
  assert.deepEqual(writes(), []);
  const b64 = 'eA==';
  fake.put('secrets', NS, { metadata: { name: 'parti-tls' }, data: { 'ca.crt': b64, 'coordinator.crt': b64, 'coordinator.key': b64, 'worker.crt': b64, 'worker.key': b64, token: b64 } });
  await applyJob({ configFile: mtls, image: IMAGE, workers: 2, kubeconfig });
  assert.ok(fake.summary().includes(`GET /api/v1/namespaces/${NS}/secrets/parti-tls`));
  // every pod mounts the Secret, with its own role's certificate under the names the config uses
  for (const [kind, role] of [['deployments', 'coordinator'], ['jobs', 'worker']] as const) {
    const spec = (fake.get(kind, NS, kind === 'jobs' ? 'tiny-workers' : 'tiny-coordinator') as any).spec.template.spec;
    const tls = spec.volumes.find((v: any) => v.name === 'tls').secret;
    assert.equal(tls.secretName, 'parti-tls');
    assert.deepEqual(tls.items.map((i: any) => `${i.key}->${i.path}`), ['ca.crt->ca.crt', `${role}.crt->tls.crt`, `${role}.key->tls.key`, 'token->token']);
    assert.deepEqual(spec.containers[0].volumeMounts.find((m: any) => m.name === 'tls'), { name: 'tls', mountPath: '/etc/parti/tls', readOnly: true });
  }

  const elsewhere = await rejection(
    applyJob({ configFile: writeClusterConfig('tiny', [['  plaintextBind: as-configured\n  # tls: { ca: /etc/parti/tls/ca.crt', '  tls: { ca: /home/me/ca.crt']]), image: IMAGE, workers: 2, kubeconfig }),
  );
  assert.match(elsewhere.message, /security\.tls\.ca: must be a file in \/etc\/parti\/tls\/ in a cluster .*got \/home\/me\/ca\.crt$/);
  // `..` does not lead out of the mount
  const escaping = await rejection(
    applyJob({ configFile: writeClusterConfig('tiny', [['  plaintextBind: as-configured\n  # tls: { ca: /etc/parti/tls/ca.crt', '  tls: { ca: /etc/parti/tls/../../../home/me/ca.crt']]), image: IMAGE, workers: 2, kubeconfig }),
  );
  assert.match(escaping.message, /security\.tls\.ca: must be a file in \/etc\/parti\/tls\/ in a cluster .*got \/etc\/parti\/tls\/\.\.\/\.\.\/\.\.\/home\/me\/ca\.crt$/);
  const tokenElsewhere = await rejection(applyJob({ configFile: writeClusterConfig('tiny', [['  # tokenFile: /etc/parti/tls/token', '  tokenFile: /var/run/parti/token']]), image: IMAGE, workers: 2, kubeconfig }));
  assert.match(tokenElsewhere.message, /security\.tokenFile: must be a file in \/etc\/parti\/tls\/ in a cluster .*got \/var\/run\/parti\/token$/);
  const loopback = await rejection(applyJob({ configFile: writeClusterConfig('tiny', [['plaintextBind: as-configured', 'plaintextBind: loopback']]), image: IMAGE, workers: 2, kubeconfig }));
  assert.match(loopback.message, /security: set tls \(files in \/etc\/parti\/tls\/\) or plaintextBind: as-configured in a cluster/);
});

test('status, logs and delete', async () => {
  await applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig });
  seedPods();
  const job = fake.get('jobs', NS, 'tiny-workers') as any;
  job.status = { active: 2, ready: 1, succeeded: 0, failed: 1 };
  (fake.get('deployments', NS, 'tiny-coordinator') as any).status = { readyReplicas: 1 };

  const status = await jobStatus('tiny', { kubeconfig });
  assert.equal(status.phase, 'running');
  assert.deepEqual(status.coordinator, { ready: 1, replicas: 1, image: IMAGE });
  assert.deepEqual(status.workers, { workers: 2, active: 2, ready: 1, succeeded: 0, failed: 1, conditions: [] });
  assert.deepEqual(
    status.pods.map((p) => [p.name, p.component, p.index, p.ready, p.restarts, p.reason]),
    [
      ['tiny-coordinator-7d9f-abcde', 'coordinator', undefined, true, 0, undefined],
      ['tiny-workers-0-x0', 'worker', 0, true, 0, undefined],
      ['tiny-workers-1-x1', 'worker', 1, false, 2, 'CrashLoopBackOff'],
    ],
  );
  const text = formatJobStatus(status);
  assert.match(text, /^job tiny in namespace ml-team: running$/m);
  assert.match(text, /tiny-workers-1-x1 +worker +1 +Running +no +2 +node-b +CrashLoopBackOff/);
  const listed = fake.requests.find((r) => r.path === `/api/v1/namespaces/${NS}/pods`)!;
  assert.equal(listed.query.labelSelector, 'app.kubernetes.io/name=parti,app.kubernetes.io/instance=tiny');

  let out = '';
  await jobLogs('tiny', { kubeconfig, tail: 1 }, (t) => (out += t));
  assert.equal(out, '[tiny-coordinator-7d9f-abcde] job started\n[tiny-workers-0-x0] step 2\n[tiny-workers-1-x1] joined as rank 1\n');
  out = '';
  await jobLogs('tiny', { kubeconfig, component: 'worker', index: 0 }, (t) => (out += t));
  assert.equal(out, 'joined as rank 0\nstep 1\nstep 2\n');
  out = '';
  await jobLogs('tiny', { kubeconfig, component: 'worker', follow: true }, (t) => (out += t));
  assert.deepEqual(out.split('\n').filter(Boolean).sort(), ['[tiny-workers-0-x0] joined as rank 0', '[tiny-workers-0-x0] step 1', '[tiny-workers-0-x0] step 2', '[tiny-workers-1-x1] joined as rank 1']);
  const followed = fake.requests.filter((r) => r.path.endsWith('/log') && r.query.follow === 'true');
  assert.equal(followed.length, 2);
  const noPods = await rejection(jobLogs('tiny', { kubeconfig, component: 'worker', index: 7 }, () => {}));
  assert.match(noPods.message, /^no pods of job tiny in namespace ml-team match/);

  fake.requests.length = 0;
  const { deleted } = await deleteJob('tiny', { kubeconfig });
  assert.deepEqual(
    deleted.map((d) => `${d.kind}/${d.name}`),
    ['Job/tiny-workers', 'Deployment/tiny-coordinator', 'Service/tiny-coordinator', 'Service/tiny-workers', `ConfigMap/${expected().configMap.metadata!.name}`],
  );
  const jobDelete = fake.requests.find((r) => r.method === 'DELETE' && r.path.endsWith('/jobs/tiny-workers'))!;
  assert.equal(jobDelete.query.propagationPolicy, 'Background');
  // The Secrets are the user's: they stay.
  assert.ok(fake.get('secrets', NS, 'parti-s3'));
  assert.deepEqual([...fake.objects.keys()].filter((k) => !k.startsWith('secrets/') && !k.startsWith('pods/') ), []);

  const gone = await rejection(deleteJob('tiny', { kubeconfig }));
  assert.equal(gone.message, 'job tiny not found in namespace ml-team (pass --namespace if it runs elsewhere)');
  const noStatus = await rejection(jobStatus('other', { kubeconfig }));
  assert.match(noStatus.message, /^job other not found in namespace ml-team/);
  fake.forbidden.add('delete deployments');
  await applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig });
  const forbidden = await rejection(deleteJob('tiny', { kubeconfig }));
  assert.equal(forbidden.code, 'refused');
  assert.match(forbidden.message, /^delete deployment tiny-coordinator in namespace ml-team: forbidden: /);
});

test('the tokenizer stage: one Job that trains and publishes the tokenizer to training.tokenizerFrom; status, logs and delete know it', async () => {
  const result = await applyTokenizerJob({ configFile: CONFIG, image: IMAGE, kubeconfig });
  assert.equal(result.publishTo, 's3://YOUR-BUCKET/parti-tokenizer');
  const want = buildTokenizerJob({ name: 'tiny', configText: readFileSync(CONFIG, 'utf8'), image: IMAGE, workers: 2, gpusPerWorker: 0, namespace: NS }, result.publishTo);
  assert.deepEqual(result.applied.map((a) => `${a.kind}/${a.name} ${a.action}`), [`ConfigMap/${want.configMap.metadata!.name} created`, 'Job/tiny-tokenizer created']);
  assert.deepEqual(fake.summary(), [
    `GET /api/v1/namespaces/${NS}`,
    `GET /api/v1/namespaces/${NS}/secrets/parti-s3`,
    `GET /apis/batch/v1/namespaces/${NS}/jobs/tiny-tokenizer`,
    `POST /api/v1/namespaces/${NS}/configmaps`,
    `POST /apis/batch/v1/namespaces/${NS}/jobs`,
  ]);
  const posted = fake.requests.filter((r) => r.method === 'POST').map((r) => r.body);
  assert.deepEqual(posted, JSON.parse(JSON.stringify([want.configMap, want.tokenizer])));
  // The same ConfigMap as the Parti stage's, one pod that trains the stage and publishes it.
  assert.equal(want.configMap.metadata!.name, expected().configMap.metadata!.name);
  const pod = want.tokenizer.spec!.template.spec!;
  assert.deepEqual(pod.containers[0]!.args, ['train', '--config', '/etc/parti/config.yaml', '--run-dir', '/var/lib/parti', '--stage', 'tokenizer', '--publish-tokenizer', 's3://YOUR-BUCKET/parti-tokenizer']);
  assert.deepEqual(pod.containers[0]!.envFrom, [{ secretRef: { name: 'parti-s3' } }]);
  assert.equal(pod.restartPolicy, 'Never');
  assert.deepEqual([want.tokenizer.spec!.completions, want.tokenizer.spec!.backoffLimit], [1, 2]);
  assert.deepEqual(pod.containers[0]!.resources, expected().workers.spec!.template.spec!.containers[0]!.resources);

  // Again while it runs: nothing changes. Once it has ended: refused (delete it to train again).
  fake.requests.length = 0;
  const again = await applyTokenizerJob({ configFile: CONFIG, image: IMAGE, kubeconfig });
  assert.deepEqual(again.applied.map((a) => a.action), ['unchanged', 'unchanged']);
  const job = fake.get('jobs', NS, 'tiny-tokenizer') as any;
  job.status = { active: 1 };
  const labels = { 'app.kubernetes.io/name': 'parti', 'app.kubernetes.io/instance': 'tiny', 'app.kubernetes.io/component': 'tokenizer', 'job-name': 'tiny-tokenizer' };
  fake.put('pods', NS, {
    metadata: { name: 'tiny-tokenizer-q7x2p', labels },
    spec: { containers: [{ name: 'tokenizer' }], nodeName: 'node-a' },
    status: { phase: 'Running', containerStatuses: [{ name: 'tokenizer', ready: true, restartCount: 0, image: IMAGE, imageID: '', state: { running: {} } }] },
  });
  fake.podLogs.set(`${NS}/tiny-tokenizer-q7x2p`, 'tokenizer step 10/300\n');
  const running = await jobStatus('tiny', { kubeconfig });
  assert.equal(running.phase, 'running');
  assert.deepEqual(running.tokenizer, { active: 1, succeeded: 0, failed: 0, conditions: [] });
  assert.deepEqual(running.pods.map((p) => [p.name, p.component]), [['tiny-tokenizer-q7x2p', 'tokenizer']]);
  assert.match(formatJobStatus(running), /^tokenizer stage: 1 active, 0 succeeded, 0 failed$/m);
  let out = '';
  await jobLogs('tiny', { kubeconfig, component: 'tokenizer' }, (t) => (out += t));
  assert.equal(out, 'tokenizer step 10/300\n');

  job.status = { succeeded: 1, conditions: [{ type: 'Complete', status: 'True' }] };
  assert.equal((await jobStatus('tiny', { kubeconfig })).phase, 'succeeded');
  fake.requests.length = 0;
  const ended = await rejection(applyTokenizerJob({ configFile: CONFIG, image: IMAGE, kubeconfig }));
  assert.match(ended.message, /^job tiny-tokenizer in namespace ml-team has ended \(Complete\); to run it again, delete it first/);
  assert.deepEqual(writes(), []);

  // The Parti stage next: its ConfigMap is there already; the job's phase is now the workers'.
  const parti = await applyJob({ configFile: CONFIG, image: IMAGE, workers: 2, kubeconfig });
  assert.equal(parti.applied[0]!.action, 'unchanged');
  assert.equal((await jobStatus('tiny', { kubeconfig })).phase, 'pending');
  const { deleted } = await deleteJob('tiny', { kubeconfig });
  assert.ok(deleted.some((d) => `${d.kind}/${d.name}` === 'Job/tiny-tokenizer'), JSON.stringify(deleted));
  assert.deepEqual([...fake.objects.keys()].filter((k) => !k.startsWith('secrets/') && !k.startsWith('pods/')), []);

  // A test-model config has no tokenizer to train.
  const linear = await rejection(applyTokenizerJob({ configFile: writeClusterConfig('tiny', [['runtime:\n', 'runtime:\n  testModel: { kind: linear }\n']]), image: IMAGE, kubeconfig }));
  assert.match(linear.message, /runtime\.testModel: the test model has no image tokenizer to train/);
});

test('the CLI: `parti launch k8s` prints what it did; a missing Secret exits 2 with one line on stderr', async () => {
  const env = { ...process.env, KUBECONFIG: kubeconfig, PARTI_LOG_LEVEL: 'warn' };
  const args = ['bin/parti.mjs', 'launch', 'k8s', '--config', CONFIG, '--image', IMAGE, '--workers', '2'];
  const { stdout } = await run(process.execPath, args, { cwd: ROOT, env, timeout: 60_000 });
  assert.match(stdout, /^configmap\/tiny-config-\w{10} created\nservice\/tiny-coordinator created\nservice\/tiny-workers created\ndeployment\.apps\/tiny-coordinator created\njob\.batch\/tiny-workers created\n/);
  assert.match(stdout, /kubectl -n ml-team port-forward service\/tiny-coordinator 8470/);
  const tok = await run(process.execPath, [...args.slice(0, -2), '--stage', 'tokenizer'], { cwd: ROOT, env, timeout: 60_000 });
  assert.match(tok.stdout, /^configmap\/tiny-config-\w{10} unchanged\njob\.batch\/tiny-tokenizer created\nwatch it: {2}parti launch logs --job tiny --component tokenizer --follow --namespace ml-team\n/);

  fake.objects.delete(`secrets/${NS}/parti-dashboard`);
  const failed = await run(process.execPath, args, { cwd: ROOT, env, timeout: 60_000 }).then(
    () => assert.fail('expected exit code 2'),
    (err: { code: number; stdout: string; stderr: string }) => err,
  );
  assert.equal(failed.code, 2);
  assert.equal(failed.stdout, '');
  const lines = failed.stderr.split('\n').filter(Boolean);
  assert.equal(lines.length, 1, failed.stderr);
  assert.match(lines[0]!, /^parti: secret parti-dashboard not found in namespace ml-team: create it first/);
});
