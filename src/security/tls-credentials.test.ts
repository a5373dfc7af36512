import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isLoopbackHost, resolveBindAddress } from './tls-credentials.ts';

function recorder(): { lines: string[]; logger: { info(o: object, m: string): void; warn(o: object, m: string): void } } {
  const lines: string[] = [];
  return { lines, logger: { info: (_o, m) => lines.push(`info ${m}`), warn: (_o, m) => lines.push(`warn ${m}`) } };
}

test('without TLS a non-loopback address becomes 127.0.0.1 and the log says so', () => {
  const r = recorder();
  assert.equal(resolveBindAddress('0.0.0.0:7071', { service: 'collective', tls: false, policy: 'loopback', logger: r.logger }), '127.0.0.1:7071');
  assert.match(r.lines[0]!, /^warn collective: no TLS certificates configured; binding 127\.0\.0\.1:7071 instead of 0\.0\.0\.0:7071/);
});

test('with TLS, on loopback, or with as-configured the address stays, and is logged', () => {
  const r = recorder();
  assert.equal(resolveBindAddress('0.0.0.0:1', { service: 's', tls: true, policy: 'loopback', logger: r.logger }), '0.0.0.0:1');
  assert.equal(resolveBindAddress('127.0.0.1:2', { service: 's', tls: false, policy: 'loopback', logger: r.logger }), '127.0.0.1:2');
  assert.equal(resolveBindAddress('10.0.0.5:3', { service: 's', tls: false, policy: 'as-configured', logger: r.logger }), '10.0.0.5:3');
  assert.deepEqual(r.lines.map((l) => l.split(' ')[0]), ['info', 'info', 'warn']);
  assert.ok(isLoopbackHost('localhost') && isLoopbackHost('[::1]') && isLoopbackHost('127.0.0.2') && !isLoopbackHost('0.0.0.0'));
  assert.throws(() => resolveBindAddress('nohostport', { service: 's', tls: false, policy: 'loopback' }), /must be host:port/);
});
