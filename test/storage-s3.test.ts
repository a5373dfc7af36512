import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { startS3rver, type S3rverHandle } from './helpers/s3rver.ts';
import { S3Store } from '../src/storage/s3-store.ts';
import { describeObjectStore } from '../src/storage/object-store-conformance.ts';
import { StorageError } from '../src/storage/storage-error.ts';

let server: S3rverHandle;
let prefixes = 0;

before(async () => {
  server = await startS3rver();
});
after(async () => {
  await server?.stop();
});

describeObjectStore('s3:// (s3rver)', {
  // Above the 5 MiB part size below, so large objects go up in three parts.
  largeSize: 12 << 20,
  atomicPut: false,
  async open() {
    const store = new S3Store(`s3://${server.bucket}/conformance-${++prefixes}`, {
      endpoint: server.endpoint,
      credentials: server.credentials,
      partSize: 5 << 20,
    });
    return { store, dispose: async () => {} };
  },
});

/** What the fault proxy does with one request. */
type Fault = { kind: 'pass' } | { kind: 'hang' } | { kind: 'status'; status: number; code: string } | { kind: 'cut'; afterBytes: number };

/**
 * An HTTP proxy in front of s3rver that injects faults: error answers (503 SlowDown, 500, 403) and
 * responses cut off in the middle of the body. Headers pass unchanged, so signatures still match.
 */
async function startFaultProxy(upstream: string, decide: (req: http.IncomingMessage, n: number) => Fault) {
  const seen: { method: string; url: string; range?: string }[] = [];
  const target = new URL(upstream);
  const proxy = http.createServer((req, res) => {
    seen.push({ method: req.method!, url: req.url!, range: req.headers.range });
    const fault = decide(req, seen.length);
    if (fault.kind === 'hang') return; // read nothing, answer nothing
    if (fault.kind === 'status') {
      req.resume();
      req.on('end', () => {
        res.writeHead(fault.status, { 'content-type': 'application/xml' });
        res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${fault.code}</Code><Message>injected</Message></Error>`);
      });
      return;
    }
    const up = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode!, upRes.headers);
        if (fault.kind === 'cut') {
          let sent = 0;
          upRes.on('data', (chunk: Buffer) => {
            if (sent + chunk.length >= fault.afterBytes) {
              res.write(chunk.subarray(0, fault.afterBytes - sent));
              sent = fault.afterBytes;
              upRes.destroy();
              res.socket?.destroy();
            } else {
              sent += chunk.length;
              res.write(chunk);
            }
          });
          upRes.on('end', () => res.end());
        } else {
          upRes.pipe(res);
        }
      },
    );
    up.on('error', () => res.socket?.destroy());
    req.pipe(up);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`,
    seen,
    close: () => new Promise<void>((resolve) => { proxy.closeAllConnections(); proxy.close(() => resolve()); }),
  };
}

describe('S3Store under faults', () => {
  it('retries 503 SlowDown with backoff and succeeds', async () => {
    let failures = 0;
    const proxy = await startFaultProxy(server.endpoint, (req) =>
      req.method === 'PUT' && failures++ < 2 ? { kind: 'status', status: 503, code: 'SlowDown' } : { kind: 'pass' },
    );
    const store = new S3Store(`s3://${server.bucket}/faults`, { endpoint: proxy.endpoint, credentials: server.credentials });
    try {
      const data = randomBytes(10_000);
      await store.put('slow/obj', data);
      assert.equal(proxy.seen.filter((r) => r.method === 'PUT').length, 3);
      assert.ok((await store.get('slow/obj')).equals(data));
    } finally {
      await store.close();
      await proxy.close();
    }
  });

  it('retries a failed part of a multipart upload without redoing the rest', async () => {
    let partFailures = 0;
    const proxy = await startFaultProxy(server.endpoint, (req) =>
      req.method === 'PUT' && /partNumber=2/.test(req.url!) && partFailures++ < 1
        ? { kind: 'status', status: 500, code: 'InternalError' }
        : { kind: 'pass' },
    );
    const store = new S3Store(`s3://${server.bucket}/faults`, {
      endpoint: proxy.endpoint,
      credentials: server.credentials,
      partSize: 5 << 20,
      partConcurrency: 1,
    });
    try {
      const data = randomBytes(11 << 20);
      await store.put('multi/obj', data);
      const partPuts = proxy.seen.filter((r) => r.method === 'PUT' && /partNumber=/.test(r.url));
      assert.equal(partPuts.length, 4, 'three parts, one of them twice');
      assert.ok((await store.get('multi/obj')).equals(data));
    } finally {
      await store.close();
      await proxy.close();
    }
  });

  it('gives up after maxAttempts on persistent 5xx with reason server, naming the key', async () => {
    const proxy = await startFaultProxy(server.endpoint, () => ({ kind: 'status', status: 500, code: 'InternalError' }));
    const store = new S3Store(`s3://${server.bucket}/faults`, { endpoint: proxy.endpoint, credentials: server.credentials, maxAttempts: 3 });
    try {
      await assert.rejects(store.put('down/obj', Buffer.from('x')), (err: unknown) => {
        assert.ok(err instanceof StorageError);
        assert.equal(err.reason, 'server');
        assert.match(err.message, /down\/obj/);
        return true;
      });
      assert.equal(proxy.seen.length, 3);
    } finally {
      await store.close();
      await proxy.close();
    }
  });

  it('does not retry 403 and never puts credentials in the message', async () => {
    const proxy = await startFaultProxy(server.endpoint, () => ({ kind: 'status', status: 403, code: 'AccessDenied' }));
    const credentials = { accessKeyId: 'AKIDSECRETLOOKING', secretAccessKey: 'verysecretvalue123' };
    const store = new S3Store(`s3://${server.bucket}/faults`, { endpoint: proxy.endpoint, credentials });
    try {
      await assert.rejects(store.get('denied/obj'), (err: unknown) => {
        assert.ok(err instanceof StorageError);
        assert.equal(err.reason, 'denied');
        assert.match(err.message, /denied\/obj/);
        assert.ok(!err.message.includes(credentials.accessKeyId) && !err.message.includes(credentials.secretAccessKey));
        assert.equal(err.cause, undefined);
        return true;
      });
      assert.equal(proxy.seen.length, 1);
    } finally {
      await store.close();
      await proxy.close();
    }
  });

  it('fails with reason network when nothing listens', async () => {
    const proxy = await startFaultProxy(server.endpoint, () => ({ kind: 'pass' }));
    const endpoint = proxy.endpoint;
    await proxy.close();
    const store = new S3Store(`s3://${server.bucket}/faults`, { endpoint, credentials: server.credentials, maxAttempts: 2 });
    try {
      await assert.rejects(store.head('gone/obj'), (err: unknown) => err instanceof StorageError && err.reason === 'network' && /gone\/obj/.test(err.message));
    } finally {
      await store.close();
    }
  });

  it('fails with reason timeout when the service stops answering', async () => {
    const proxy = await startFaultProxy(server.endpoint, () => ({ kind: 'hang' }));
    const store = new S3Store(`s3://${server.bucket}/faults`, { endpoint: proxy.endpoint, credentials: server.credentials, maxAttempts: 2, idleTimeoutMs: 300 });
    try {
      await assert.rejects(store.get('hung/obj'), (err: unknown) => err instanceof StorageError && err.reason === 'timeout' && /hung\/obj/.test(err.message));
      assert.equal(proxy.seen.length, 2, 'a timeout is retried');
    } finally {
      await store.close();
      await proxy.close();
    }
  });

  it('resumes a GET stream that breaks in the middle with a ranged request', async () => {
    const data = randomBytes(3 << 20);
    const direct = new S3Store(`s3://${server.bucket}/faults`, { endpoint: server.endpoint, credentials: server.credentials });
    await direct.put('resume/obj', data);
    await direct.close();
    let cuts = 0;
    const proxy = await startFaultProxy(server.endpoint, (req) =>
      req.method === 'GET' && cuts++ < 2 ? { kind: 'cut', afterBytes: 700_000 } : { kind: 'pass' },
    );
    const store = new S3Store(`s3://${server.bucket}/faults`, { endpoint: proxy.endpoint, credentials: server.credentials });
    try {
      assert.ok((await store.get('resume/obj')).equals(data));
      const gets = proxy.seen.filter((r) => r.method === 'GET');
      assert.equal(gets.length, 3);
      assert.equal(gets[0]!.range, undefined);
      // Each retry starts where the client's bytes stopped (at most the 700 000 the proxy let through).
      const from = gets.slice(1).map((g) => Number(/^bytes=(\d+)-$/.exec(g.range ?? '')?.[1]));
      assert.ok(from[0]! > 0 && from[0]! <= 700_000, `first resume at ${gets[1]!.range}`);
      assert.ok(from[1]! > from[0]! && from[1]! <= from[0]! + 700_000, `second resume at ${gets[2]!.range}`);
      cuts = 0;
      const part = await store.get('resume/obj', { start: 100, end: 2_000_099 });
      assert.ok(part.equals(data.subarray(100, 2_000_100)));
    } finally {
      await store.close();
      await proxy.close();
    }
  });
});
