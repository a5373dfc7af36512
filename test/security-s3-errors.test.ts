// Storage errors carry no credentials: an S3 store (s3rver on 127.0.0.1) reached with planted,
// wrong credentials from the AWS environment fails every operation; the errors' messages, stacks,
// and what a log line would print of them (util.inspect, JSON, pino's err serializer) hold neither
// the secret key, the session token, nor the access key id.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { inspect } from 'node:util';
import pino from 'pino';
import { startS3rver, type S3rverHandle } from './helpers/s3rver.ts';
import { openStore } from '../src/storage/open-store.ts';

let server: S3rverHandle;
const tag = randomBytes(6).toString('hex');
const planted = {
  AWS_ACCESS_KEY_ID: `AKIA${randomBytes(8).toString('hex').toUpperCase()}`,
  AWS_SECRET_ACCESS_KEY: `planted-secret-${tag}-wJalrXUtnFEMIK7MDENG`,
  AWS_SESSION_TOKEN: `planted-session-${tag}-IQoJb3JpZ2luX2VjE`,
};

before(async () => {
  server = await startS3rver();
  Object.assign(process.env, planted, { AWS_ENDPOINT_URL_S3: server.endpoint, AWS_REGION: server.region });
});

after(async () => {
  for (const k of [...Object.keys(planted), 'AWS_ENDPOINT_URL_S3', 'AWS_REGION']) delete process.env[k];
  await server?.stop();
});

test('S3 errors with planted credentials name no secret', { timeout: 60_000 }, async () => {
  const store = openStore(`s3://${server.bucket}/secrets`, { s3: { maxAttempts: 1 } });
  const errors: unknown[] = [];
  for (const op of [
    () => store.put('a/b.bin', Buffer.from('x')),
    () => store.get('a/b.bin'),
    () => store.head('a/b.bin'),
    () => store.list('a/'),
    () => store.delete('a/b.bin'),
  ]) {
    await op().then(
      () => errors.push(new Error('the operation succeeded with wrong credentials')),
      (err: unknown) => errors.push(err),
    );
  }
  await store.close();
  const lines: string[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => lines.push(s) });
  for (const err of errors) logger.error({ err }, 'storage failed');
  const texts = errors.flatMap((e) => [String(e), (e as Error).stack ?? '', inspect(e, { depth: 6 }), JSON.stringify(e)]).concat(lines);
  assert.ok(errors.every((e) => e instanceof Error && !/succeeded/.test(e.message)), `every operation fails: ${errors.map(String).join(' | ')}`);
  // They fail for the credentials (not, say, a refused connection): s3rver checks signatures.
  assert.ok(errors.some((e) => /signature|access denied|forbidden|403|InvalidAccessKeyId/i.test(String(e))), errors.map(String).join(' | '));
  const leaks = Object.entries(planted).filter(([, v]) => texts.some((t) => t.includes(v)));
  assert.deepEqual(leaks.map(([k]) => k), [], `errors carry ${leaks.map(([k]) => k).join(', ')}`);
});
