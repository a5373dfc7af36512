import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

/** Runs a snippet in a fresh process (the logger reads its environment once) and returns its stderr lines. */
function run(code: string, env: Record<string, string>): string[] {
  const out = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    env: { ...process.env, PARTI_LOG_FORMAT: 'json', PARTI_TRACE: '', ...env },
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(out.status, 0, out.stderr);
  return out.stderr.split('\n').filter((l) => l.startsWith('{'));
}

const snippet = `
import { log, bindProcessLog, stepLog, tracer } from './src/observability/log.ts';
const ring = tracer('ring');
const other = tracer('other');
bindProcessLog({ role: 'worker', job: 'tiny-1', rank: 1 });
stepLog(42).info({ loss: 1.5 }, 'step done');
ring('chunk sent', { bytes: 10 });
other('never shown');
log.info('plain');
`;

test('log lines are JSON with job, rank, role and step bindings; tracers follow PARTI_TRACE', () => {
  const lines = run(snippet, { PARTI_TRACE: 'ring' }).map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(lines.length, 3, JSON.stringify(lines));
  const [step, trace, plain] = lines;
  assert.deepEqual(
    { job: step!.job, rank: step!.rank, role: step!.role, step: step!.step, loss: step!.loss, msg: step!.msg },
    { job: 'tiny-1', rank: 1, role: 'worker', step: 42, loss: 1.5, msg: 'step done' },
  );
  assert.equal(trace!.trace, 'ring');
  assert.equal(trace!.bytes, 10);
  assert.equal(trace!.rank, 1, 'a tracer made before bindProcessLog still carries the bindings');
  assert.equal(plain!.msg, 'plain');
  assert.equal(plain!.step, undefined);
});

test('tracers are off without PARTI_TRACE and all on with *', () => {
  assert.equal(run(snippet, {}).length, 2);
  assert.equal(run(snippet, { PARTI_TRACE: '*' }).length, 4);
});

test('PARTI_LOG_FORMAT=pretty writes one readable line per entry: who, where, message, the rest', () => {
  const out = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', snippet], {
    env: { ...process.env, PARTI_LOG_FORMAT: 'pretty', PARTI_TRACE: 'ring' },
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(out.status, 0, out.stderr);
  const lines = out.stderr.trim().split('\n');
  assert.equal(lines.length, 3, out.stderr);
  assert.match(lines[0]!, /^\[\d\d:\d\d:\d\d\] INFO: worker 1 step 42 step done \{"job":"tiny-1","loss":1\.5\}$/);
  assert.match(lines[1]!, /INFO: worker 1 \[ring\] chunk sent \{"job":"tiny-1","bytes":10\}$/);
  assert.match(lines[2]!, /INFO: worker 1 plain \{"job":"tiny-1"\}$/);
});

test('secrets never reach a log line: known tokens, added secrets, Bearer values, secret-named fields', () => {
  const code = `
import { log, addLogSecret } from './src/observability/log.ts';
addLogSecret('from-a-token-file-0123');
log.info({ url: 'http://x/#token=dash-token-abcdef123456', token: 'anything', nested: { authorization: 'Basic zzz' } }, 'sign in with dash-token-abcdef123456');
log.warn('header was Bearer abc.def and file from-a-token-file-0123');
log.error({ err: new Error('bad token dash-token-abcdef123456') }, 'failed');
`;
  const lines = run(code, { PARTI_DASHBOARD_TOKEN: 'dash-token-abcdef123456' });
  assert.equal(lines.length, 3);
  const text = lines.join('\n');
  for (const secret of ['dash-token-abcdef123456', 'anything', 'Basic zzz', 'abc.def', 'from-a-token-file-0123']) assert.ok(!text.includes(secret), `${secret} leaked: ${text}`);
  const [first, second, third] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(first!.msg, 'sign in with [redacted]');
  assert.equal(first!.url, 'http://x/#token=[redacted]');
  assert.deepEqual([first!.token, first!.nested], ['[redacted]', { authorization: '[redacted]' }]);
  assert.equal(second!.msg, 'header was Bearer [redacted] and file [redacted]');
  const err = third!.err as { message: string; stack: string };
  assert.equal(err.message, 'bad token [redacted]');
  assert.match(err.stack, /^Error: bad token \[redacted\]\n\s+at /);
});
