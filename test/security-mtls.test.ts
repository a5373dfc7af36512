// Mutual TLS on the collective channel, with real gRPC servers on 127.0.0.1 and certificates made
// by `parti certs init`'s code (openssl): a client without a certificate, or with one from another
// CA, is refused in the TLS handshake; the right one reaches the service; a ring of workers with
// the right certificates all-reduces, and a worker from another CA cannot join it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { createDevCertificates, type DevCertificateFiles } from '../src/security/dev-certificates.ts';
import { resolveJobSecurity, type JobSecurity } from '../src/security/job-security.ts';
import { loadTlsMaterial } from '../src/security/tls-credentials.ts';
import { securitySchema } from '../src/config/security-schema.ts';
import { createGrpcCollectiveNode } from '../src/collective/grpc-transport.ts';
import type { CollectiveNode } from '../src/collective/collective-node.ts';
import { decodeFrame, encodeSubscribeRequest, type Frame, type SubscribeRequest } from '../src/collective/frame.ts';
import { PartiError } from '../src/errors.ts';

let dir: string;
let a: DevCertificateFiles;
let b: DevCertificateFiles;
const nodes: CollectiveNode[] = [];
const clients: grpc.Client[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'parti-mtls-'));
  a = await createDevCertificates({ out: join(dir, 'a'), days: 2 });
  b = await createDevCertificates({ out: join(dir, 'b'), days: 2 });
});

after(async () => {
  for (const c of clients) c.close();
  await Promise.all(nodes.map((n) => n.close()));
  if (dir) await rm(dir, { recursive: true, force: true });
});

function security(files: DevCertificateFiles, role: 'worker' | 'coordinator' = 'worker'): JobSecurity {
  const cert = role === 'worker' ? files.workerCert : files.coordinatorCert;
  const key = role === 'worker' ? files.workerKey : files.coordinatorKey;
  return resolveJobSecurity(securitySchema.parse({ tls: { ca: files.ca, cert, key }, token: 'a-job-token-of-16+bytes' }), {});
}

async function node(sec: JobSecurity): Promise<CollectiveNode> {
  const n = await createGrpcCollectiveNode({ jobId: 'mtls', listen: '127.0.0.1:0', security: sec, deadlineMs: 5000, configHash: 'h1' });
  nodes.push(n);
  return n;
}

/** Opens one Subscribe stream as a bare gRPC client and reports how it ended (or that it stayed open). */
async function subscribe(address: string, creds: grpc.ChannelCredentials, req: Partial<SubscribeRequest>): Promise<{ code: grpc.status | 'open'; details: string }> {
  const client = new grpc.Client(address, creds, { 'grpc.ssl_target_name_override': 'parti', 'grpc.enable_retries': 0 });
  clients.push(client);
  const full: SubscribeRequest = { jobId: 'mtls', epoch: 0, rank: 1, stream: 0, jobToken: new Uint8Array(Buffer.from('a-job-token-of-16+bytes')), configHash: 'h1', ...req };
  const call = client.makeServerStreamRequest<SubscribeRequest, Frame>('/parti.collective.v1.Collective/Subscribe', encodeSubscribeRequest, decodeFrame, full, { deadline: Date.now() + 10_000 });
  return new Promise((resolve) => {
    // A stream that the server accepted stays open (parked until the node configures its epoch).
    const open = setTimeout(() => {
      call.cancel();
      resolve({ code: 'open', details: '' });
    }, 1500);
    call.on('error', (err: grpc.ServiceError) => {
      clearTimeout(open);
      resolve({ code: err.code, details: err.details });
    });
    call.on('data', () => {});
  });
}

test('mTLS: no client certificate, or one from another CA, is refused in the handshake; the right one gets in', async () => {
  const server = await node(security(a));
  const caA = await readFile(a.ca);
  const noCert = await subscribe(server.address, grpc.credentials.createSsl(caA), {});
  assert.equal(noCert.code, grpc.status.UNAVAILABLE, `no client certificate: ${JSON.stringify(noCert)}`);
  const otherCa = await subscribe(server.address, grpc.credentials.createSsl(caA, await readFile(b.workerKey), await readFile(b.workerCert)), {});
  assert.equal(otherCa.code, grpc.status.UNAVAILABLE, `certificate from another CA: ${JSON.stringify(otherCa)}`);
  const plaintext = await subscribe(server.address, grpc.credentials.createInsecure(), {});
  assert.equal(plaintext.code, grpc.status.UNAVAILABLE, `plaintext client: ${JSON.stringify(plaintext)}`);
  // The right certificate passes TLS: the service itself answers, refusing a wrong job id...
  const right = grpc.credentials.createSsl(caA, await readFile(a.coordinatorKey), await readFile(a.coordinatorCert));
  const wrongJob = await subscribe(server.address, right, { jobId: 'other' });
  assert.equal(wrongJob.code, grpc.status.PERMISSION_DENIED, JSON.stringify(wrongJob));
  assert.match(wrongJob.details, /job id 'other' is not this worker's job 'mtls'/);
  // ...and keeping a correct subscription open.
  const ok = await subscribe(server.address, grpc.credentials.createSsl(caA, await readFile(a.workerKey), await readFile(a.workerCert)), {});
  assert.equal(ok.code, 'open', JSON.stringify(ok));
});

test('mTLS: a ring of workers with certificates of the job CA all-reduces', async () => {
  const ring = await Promise.all([node(security(a)), node(security(a, 'coordinator')), node(security(a))]);
  const peers = ring.map((n) => n.address);
  ring.forEach((n, rank) => n.configure({ epoch: 1, rank, peers }));
  const out = await Promise.all(ring.map((n, r) => n.allReduce(Float32Array.from({ length: 1000 }, (_, i) => i + r), { op: 'sum' })));
  for (const o of out) assert.deepEqual([o[0], o[999]], [3, 3 * 999 + 3]);
});

test('mTLS: a worker whose certificate comes from another CA cannot join the ring; both sides fail fast', async () => {
  const good = await node(security(a));
  const stranger = await node(security(b));
  const peers = [good.address, stranger.address];
  good.configure({ epoch: 1, rank: 0, peers });
  stranger.configure({ epoch: 1, rank: 1, peers });
  const results = await Promise.allSettled([good.allReduce(new Float32Array(64)), stranger.allReduce(new Float32Array(64))]);
  for (const r of results) {
    assert.equal(r.status, 'rejected');
    const e = (r as PromiseRejectedResult).reason as PartiError;
    assert.ok(e instanceof PartiError && ['collective-aborted', 'refused'].includes(e.code), String(e));
  }
});

test('TLS files are checked at start: a key of another certificate, a certificate of another CA', () => {
  assert.throws(() => loadTlsMaterial({ ca: a.ca, cert: a.workerCert, key: a.coordinatorKey }), (e: unknown) => e instanceof PartiError && e.code === 'config' && /security\.tls\.key: .* is not the key of the certificate/.test(e.message));
  assert.throws(() => loadTlsMaterial({ ca: a.ca, cert: b.workerCert, key: b.workerKey }), /security\.tls\.cert: .* is not signed by the CA/);
  assert.throws(() => loadTlsMaterial({ ca: a.ca, cert: join(dir, 'missing.crt'), key: a.workerKey }), /security\.tls\.cert: cannot read .*missing\.crt \(ENOENT\)/);
  const m = loadTlsMaterial({ ca: a.ca, cert: a.workerCert, key: a.workerKey });
  assert.match(m.subject, /parti-worker/);
});
