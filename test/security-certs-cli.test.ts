// `parti certs init` as a user runs it: writes a CA and certificates that openssl verifies, keys
// readable by the owner only, and refuses to overwrite them or take a bad flag (exit 2, one line).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTlsMaterial } from '../src/security/tls-credentials.ts';

const BIN = join(import.meta.dirname, '..', 'bin', 'parti.mjs');
const dir = mkdtempSync(join(tmpdir(), 'parti-certs-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function parti(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('parti certs init writes a CA and role certificates that verify, with private keys 0600', () => {
  const out = join(dir, 'tls');
  const r = parti('certs', 'init', '--out', out, '--host', 'parti-coordinator.default.svc', '--host', '10.0.0.7');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /security: \{ tls: \{ ca: .*ca\.crt, cert: .*worker\.crt/);
  for (const role of ['coordinator', 'worker']) {
    assert.match(execFileSync('openssl', ['verify', '-CAfile', join(out, 'ca.crt'), join(out, `${role}.crt`)], { encoding: 'utf8' }), /: OK/);
    const text = execFileSync('openssl', ['x509', '-in', join(out, `${role}.crt`), '-noout', '-ext', 'subjectAltName,extendedKeyUsage'], { encoding: 'utf8' });
    assert.match(text, /DNS:parti, DNS:localhost, IP Address:127\.0\.0\.1, DNS:parti-coordinator\.default\.svc, IP Address:10\.0\.0\.7/);
    assert.match(text, /TLS Web Server Authentication, TLS Web Client Authentication/);
    loadTlsMaterial({ ca: join(out, 'ca.crt'), cert: join(out, `${role}.crt`), key: join(out, `${role}.key`) });
  }
  for (const key of ['ca.key', 'coordinator.key', 'worker.key']) assert.equal(statSync(join(out, key)).mode & 0o777, 0o600, key);
  assert.ok(!r.stdout.includes('PRIVATE KEY'), 'no key material on stdout');

  const again = parti('certs', 'init', '--out', out);
  assert.equal(again.status, 2);
  assert.match(again.stderr, /--out: .*ca\.crt exists; pass --force/);
  assert.equal(parti('certs', 'init', '--out', out, '--force').status, 0);
});

test('parti certs init: bad flags are one-line usage errors', () => {
  const days = parti('certs', 'init', '--out', join(dir, 'x'), '--days', '0');
  assert.equal(days.status, 2);
  assert.match(days.stderr, /--days: must be an integer in 1\.\.3650, got "0"/);
  const host = parti('certs', 'init', '--out', join(dir, 'y'), '--host', 'bad host!');
  assert.equal(host.status, 2);
  assert.match(host.stderr, /--host: 'bad host!' is neither a DNS name nor an IP address/);
});
