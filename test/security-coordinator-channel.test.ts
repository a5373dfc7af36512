// The coordinator's gRPC service definition (proto/coordinator.proto) served behind the security
// layer a coordinator wires in (src/security/grpc-security.ts), on 127.0.0.1: mutual TLS plus the
// job token on every call. Wrong certificates fail the handshake; a missing or wrong token is
// refused before the handler runs, with a clear status on the caller's side.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { coordinatorService, type JoinReply, type JoinRequest } from '../src/coordinator/protocol.ts';
import { createDevCertificates, type DevCertificateFiles } from '../src/security/dev-certificates.ts';
import { resolveJobSecurity, type JobSecurity } from '../src/security/job-security.ts';
import { bindSecure, secureClient, secureServerOptions } from '../src/security/grpc-security.ts';
import { securitySchema } from '../src/config/security-schema.ts';

const TOKEN = 'coordinator-channel-token-0123';
let dir: string;
let a: DevCertificateFiles;
let b: DevCertificateFiles;
let server: grpc.Server;
let address: string;
const joins: JoinRequest[] = [];
const clients: grpc.Client[] = [];

function sec(files: DevCertificateFiles | null, token: string | null, role: 'worker' | 'coordinator' = 'worker'): JobSecurity {
  const tls = files && { ca: files.ca, cert: role === 'worker' ? files.workerCert : files.coordinatorCert, key: role === 'worker' ? files.workerKey : files.coordinatorKey };
  return resolveJobSecurity(securitySchema.parse({ ...(tls ? { tls } : {}), ...(token ? { token } : {}) }), {});
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'parti-coord-sec-'));
  a = await createDevCertificates({ out: join(dir, 'a'), days: 1 });
  b = await createDevCertificates({ out: join(dir, 'b'), days: 1 });
  const security = sec(a, TOKEN, 'coordinator');
  server = new grpc.Server({ ...secureServerOptions(security, 'coordinator') });
  const reject = (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'not in this test' }, null);
  server.addService(coordinatorService, {
    join: (call: grpc.ServerUnaryCall<JoinRequest, JoinReply>, cb: grpc.sendUnaryData<JoinReply>) => {
      joins.push(call.request);
      cb(null, { workerId: 'w1', jobId: 'job', configHash: 'h', heartbeatMs: 500 });
    },
    heartbeat: reject, report: reject, leave: reject,
    commands: (call: grpc.ServerWritableStream<unknown, unknown>) => call.end(),
  } as unknown as grpc.UntypedServiceImplementation);
  ({ address } = await bindSecure(server, '127.0.0.1:0', security, 'coordinator'));
});

after(async () => {
  for (const c of clients) c.close();
  server?.forceShutdown();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const Client = grpc.makeGenericClientConstructor(coordinatorService, 'Coordinator');

function join_(security: JobSecurity): Promise<{ ok: true; reply: JoinReply } | { ok: false; code: grpc.status; details: string }> {
  const { credentials, options } = secureClient(security);
  const c = new Client(address, credentials, { ...options, 'grpc.enable_retries': 0 }) as unknown as grpc.Client & {
    join(r: JoinRequest, o: grpc.CallOptions, cb: grpc.requestCallback<JoinReply>): void;
  };
  clients.push(c);
  return new Promise((resolve) =>
    c.join({ jobId: 'job', configHash: 'h', workerName: 'w', collectiveAddress: '127.0.0.1:1', paramCount: 10 }, { deadline: Date.now() + 10_000 }, (err, reply) =>
      resolve(err ? { ok: false, code: err.code, details: err.details } : { ok: true, reply: reply! }),
    ),
  );
}

test('coordinator channel: the right certificate and token join', async () => {
  const r = await join_(sec(a, TOKEN));
  assert.ok(r.ok, JSON.stringify(r));
  assert.equal(joins.length, 1);
});

test('coordinator channel: no client certificate, or one of another CA, fails the handshake; the handler never runs', async () => {
  const before_ = joins.length;
  for (const s of [sec(null, TOKEN), sec(b, TOKEN)]) {
    const r = await join_(s);
    assert.ok(!r.ok && r.code === grpc.status.UNAVAILABLE, JSON.stringify(r));
  }
  assert.equal(joins.length, before_);
});

test('coordinator channel: a missing or wrong token is refused before the handler, and says which', async () => {
  const before_ = joins.length;
  const none = await join_(sec(a, null));
  assert.ok(!none.ok && none.code === grpc.status.PERMISSION_DENIED && /^refused: no job token presented/.test(none.details), JSON.stringify(none));
  const wrong = await join_(sec(a, 'another-token-of-enough-length'));
  assert.ok(!wrong.ok && wrong.code === grpc.status.PERMISSION_DENIED && /^refused: wrong job token$/.test(wrong.details), JSON.stringify(wrong));
  assert.equal(joins.length, before_);
});
