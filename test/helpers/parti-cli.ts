/**
 * Runs the `parti` CLI as a user would: a separate Node process on bin/parti.mjs. Shared by the
 * command tests (generate, eval, serve, data) so each checks behaviour, not process plumbing.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';

/** bin/parti.mjs of this checkout. */
export const PARTI_BIN = join(import.meta.dirname, '..', '..', 'bin', 'parti.mjs');

/** Exit code (-1 when killed by the deadline or a signal) and the two streams. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options of {@link runParti}. */
export interface RunPartiOptions {
  /** Deadline of the whole command; it is killed past it (default 120 s). */
  timeoutMs?: number;
  /** Extra environment on top of this process's (default: JSON logs, so they can be told apart). */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** Runs `parti ARGS…`; resolves with its result, never rejects on a non-zero exit. */
export function runParti(args: readonly string[], o: RunPartiOptions = {}): Promise<CliResult> {
  const env = { ...process.env, PARTI_LOG_FORMAT: 'json', ...o.env };
  return new Promise((resolve) => {
    execFile(process.execPath, [PARTI_BIN, ...args], { timeout: o.timeoutMs ?? 120_000, env, cwd: o.cwd, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** stderr without pino's JSON log lines: what the command said to its user. */
export function userLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'));
}
