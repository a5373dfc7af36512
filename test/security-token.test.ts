// The job token and the job identity on the collective channel, with real gRPC servers on
// 127.0.0.1: peers without the token, with another token, another job id or another config hash
// are refused, and the error on BOTH sides says why (each worker subscribes to the other, so each
// is the refusing server of one link and the refused client of the other).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createGrpcCollectiveNode } from '../src/collective/grpc-transport.ts';
import type { CollectiveNode } from '../src/collective/collective-node.ts';
import { resolveJobSecurity } from '../src/security/job-security.ts';
import { securitySchema } from '../src/config/security-schema.ts';
import { PartiError } from '../src/errors.ts';

const nodes: CollectiveNode[] = [];
after(async () => {
  await Promise.all(nodes.map((n) => n.close()));
});

const TOKEN = 'token-of-this-job-0123456789';

interface Who {
  jobId?: string;
  token?: string | null;
  configHash?: string;
}

async function pair(x: Who, y: Who): Promise<PromiseSettledResult<Float32Array>[]> {
  const make = async (w: Who): Promise<CollectiveNode> => {
    const token = w.token === undefined ? TOKEN : w.token;
    const security = resolveJobSecurity(securitySchema.parse(token === null ? {} : { token }), {});
    const n = await createGrpcCollectiveNode({ jobId: w.jobId ?? 'job-a', configHash: w.configHash ?? 'hash-1', security, listen: '127.0.0.1:0', deadlineMs: 5000 });
    nodes.push(n);
    return n;
  };
  const [p, q] = await Promise.all([make(x), make(y)]);
  const peers = [p.address, q.address];
  p.configure({ epoch: 1, rank: 0, peers });
  q.configure({ epoch: 1, rank: 1, peers });
  return Promise.allSettled([p.allReduce(new Float32Array([1, 2, 3])), q.allReduce(new Float32Array([3, 2, 1]))]);
}

function refusals(results: PromiseSettledResult<Float32Array>[], why: RegExp): void {
  results.forEach((r, rank) => {
    assert.equal(r.status, 'rejected', `rank ${rank} was not refused`);
    const e = (r as PromiseRejectedResult).reason as PartiError;
    assert.ok(e instanceof PartiError, String(e));
    assert.equal(e.code, 'refused', `rank ${rank}: ${e.code} ${e.message}`);
    assert.match(e.message, why, `rank ${rank}`);
    assert.ok(!e.message.includes(TOKEN) && !e.message.includes('another-token'), 'the message must not contain a token');
  });
}

test('same job, token and config hash: the all-reduce runs', async () => {
  const [p, q] = await pair({}, {});
  assert.equal(p.status, 'fulfilled');
  assert.deepEqual([...(p as PromiseFulfilledResult<Float32Array>).value], [2, 2, 2]);
  assert.deepEqual([...(q as PromiseFulfilledResult<Float32Array>).value], [2, 2, 2]);
});

test('a peer without the token is refused, on both sides', async () => {
  refusals(await pair({}, { token: null }), /no job token presented|a job token was presented but this job has none/);
});

test('a peer with another token is refused, on both sides', async () => {
  refusals(await pair({}, { token: 'another-token-0123456789' }), /wrong job token/);
});

test('a peer of another job id is refused, on both sides', async () => {
  refusals(await pair({}, { jobId: 'job-b' }), /job id 'job-(a|b)' is not this worker's job 'job-(a|b)'/);
});

test('a peer with another config hash is refused, on both sides', async () => {
  refusals(await pair({}, { configHash: 'hash-2' }), /config hash 'hash-(1|2)' differs from this worker's 'hash-(1|2)'/);
});
