import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { REDACTED, SecretRedactor, redactConfig } from './secret-redactor.ts';
import { JobToken } from './job-token.ts';
import { constantTimeEqual } from './constant-time.ts';
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { configHash, parseConfig } from '../config/load.ts';

const KEY = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';

test('known secrets are removed from text, also base64- and URL-encoded; short values are ignored', () => {
  const r = SecretRedactor.fromEnv({ AWS_SECRET_ACCESS_KEY: KEY, PARTI_JOB_TOKEN: 'tok' }, ['dashboard-token-0123456789']);
  assert.equal(r.redact(`key=${KEY}!`), `key=${REDACTED}!`);
  assert.equal(r.redact(`b64 ${Buffer.from(KEY).toString('base64')}`), `b64 ${REDACTED}`);
  assert.equal(r.redact(`url ${encodeURIComponent(KEY)}`), `url ${REDACTED}`);
  assert.equal(r.redact('x dashboard-token-0123456789 y'), `x ${REDACTED} y`);
  assert.equal(r.redact('tok stays: too short to tell from words'), 'tok stays: too short to tell from words');
});

test('secret shapes are removed whatever their value', () => {
  const r = new SecretRedactor();
  const pem = '-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----';
  assert.equal(r.redact(`a ${pem} b`), `a ${REDACTED} b`);
  assert.equal(r.redact('-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI (cut'), REDACTED);
  assert.equal(r.redact('id AKIAIOSFODNN7EXAMPLE.'), `id ${REDACTED}.`);
  assert.equal(r.redact('Authorization: Bearer abc.def-123'), `Authorization: Bearer ${REDACTED}`);
  assert.equal(r.redact('aws_secret_access_key = zzz123, next'), `aws_secret_access_key = ${REDACTED}, next`);
  assert.equal(r.redact('{"password":"hunter22"}'), `{"password":"${REDACTED}"}`);
  assert.equal(r.redact('ordinary text, step 42, loss 1.5'), 'ordinary text, step 42, loss 1.5');
});

test('values: secret-named keys are replaced, strings redacted, errors flattened, cycles cut', () => {
  const r = new SecretRedactor([KEY]);
  const cyclic: Record<string, unknown> = { note: `has ${KEY}` };
  cyclic.self = cyclic;
  const out = r.redactValue({ token: 'abc', secretAccessKey: 'x', nested: [{ authorization: 'Bearer q' }], tokenFile: '/etc/t', cyclic, err: new Error(`failed with ${KEY}`) });
  assert.deepEqual(out, {
    token: REDACTED, secretAccessKey: REDACTED, nested: [{ authorization: REDACTED }], tokenFile: '/etc/t',
    cyclic: { note: `has ${REDACTED}`, self: '[cycle]' }, err: { name: 'Error', message: `failed with ${REDACTED}` },
  });
  const e = r.redactError(Object.assign(new Error(`s3 said ${KEY}`), { code: 'storage' }));
  assert.equal(e.message, `s3 said ${REDACTED}`);
  assert.ok(!e.stack!.includes(KEY));
  assert.equal((e as Error & { code: string }).code, 'storage');
});

test('a config loses its tokens, keeps the rest, and still parses with the same hash', () => {
  const tiny = parseYaml(readFileSync('configs/tiny.yaml', 'utf8')) as Record<string, unknown>;
  const config = parseConfig({
    ...tiny,
    security: { token: 'job-token-0123456789abcdef', tokenFile: '/run/secrets/token' },
    dashboard: { token: 'dash-token-0123456789abcdef' },
  });
  const out = redactConfig(config);
  assert.equal(out.security.token, undefined);
  assert.equal(out.dashboard.token, undefined);
  assert.equal(configHash(parseConfig(out)), configHash(config), 'still a config, with the same hash');
  assert.equal(out.security.tokenFile, '/run/secrets/token');
  assert.equal(out.model.text.dModel, config.model.text.dModel);
  assert.ok(!JSON.stringify(out).includes('0123456789abcdef'));
});

test('a JobToken never prints its value; matches in constant time', () => {
  const t = JobToken.fromString('s3cret-token-0123456789');
  assert.equal(String(t), '[redacted job token]');
  assert.equal(JSON.stringify({ t }), '{"t":"[redacted job token]"}');
  assert.ok(!inspect({ t }).includes('0123456789'));
  assert.ok(t.matches('s3cret-token-0123456789'));
  assert.ok(!t.matches('s3cret-token-0123456780'));
  assert.ok(!t.matches(undefined));
  assert.ok(JobToken.none().matches(new Uint8Array(0)));
  assert.throws(() => JobToken.fromString('short'), /job token: must be 16\.\.4096 bytes, got 5/);
  assert.ok(constantTimeEqual('', new Uint8Array(0)));
  assert.ok(!constantTimeEqual('a', 'ab'));
});

test('JobToken.resolve: token, then file, then environment; an unreadable file is an error', () => {
  assert.equal(JobToken.resolve({ tokenEnv: 'T' }, { T: '  env-token-0123456789  ' }).text(), 'env-token-0123456789');
  assert.equal(JobToken.resolve({ tokenEnv: 'T' }, {}).present, false);
  assert.throws(() => JobToken.resolve({ tokenFile: '/nonexistent/token' }, {}), /security\.tokenFile: cannot read \/nonexistent\/token \(ENOENT\)/);
});
