import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// A job token read from security.tokenFile (the cluster's mounted Secret) or written in the config
// is redacted from every log line of the process, like one from the environment.
test('a job token from security.tokenFile or security.token never reaches a log line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'parti-job-token-'));
  try {
    const file = join(dir, 'token');
    writeFileSync(file, 'file-token-0123456789abcdef\n');
    const code = `
import { JobToken } from './src/security/job-token.ts';
import { log } from './src/observability/log.ts';
JobToken.resolve({ tokenFile: ${JSON.stringify(file)} });
JobToken.resolve({ token: 'inline-token-0123456789abcdef' });
log.info('peer sent file-token-0123456789abcdef and inline-token-0123456789abcdef');
`;
    const out = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
      cwd: join(import.meta.dirname, '..', '..'),
      env: { ...process.env, PARTI_LOG_FORMAT: 'json', PARTI_LOG_LEVEL: 'info' },
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(out.status, 0, out.stderr);
    const line = out.stderr.trim().split('\n').find((l) => l.includes('peer sent'));
    assert.ok(line, out.stderr);
    assert.equal((JSON.parse(line) as { msg: string }).msg, 'peer sent [redacted] and [redacted]');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
