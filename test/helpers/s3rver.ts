import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { setPriority, tmpdir } from 'node:os';
import path from 'node:path';

/**
 * A throwaway S3 service for tests: s3rver on 127.0.0.1, on a free port, in a temp folder, with
 * one bucket. Use with `@aws-sdk/client-s3` and `forcePathStyle: true` (S3Store sets it for a
 * custom endpoint).
 *
 * Why a child process: s3rver encrypts ListObjectsV2 continuation tokens with DES, which the
 * OpenSSL 3 in Node 17+ only offers with `--openssl-legacy-provider`; without it every paginated
 * list (more than 1000 keys) answers 500. That flag cannot be switched on inside a running
 * process, and tests should not need it themselves, so s3rver runs in its own `node
 * --openssl-legacy-provider` child. The child exits when its stdin closes, so a test process that
 * dies (even by SIGKILL) never leaves it behind.
 */
export interface S3rverHandle {
  /** `http://127.0.0.1:PORT` */
  endpoint: string;
  bucket: string;
  region: string;
  /** s3rver's fixed test key pair (not a secret). */
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** The folder s3rver keeps objects in. */
  directory: string;
  /** The child's pid. */
  pid: number;
  /** Stops the server and removes its folder. */
  stop(): Promise<void>;
}

export interface S3rverOptions {
  /** Bucket to create (default `parti-test`). */
  bucket?: string;
  /** Give up starting after this long (default 15 s). */
  startTimeoutMs?: number;
  /**
   * Nice value for the s3rver process (default 0). Benchmarks set it high so that the fake service,
   * which stands in for a remote one, takes CPU only when the machine has some to spare.
   */
  niceness?: number;
}

const CHILD = `
const S3rver = require(process.argv[1]);
const [directory, bucket] = process.argv.slice(2);
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket }] });
server.run().then(
  (addr) => process.stdout.write(JSON.stringify({ port: addr.port }) + '\\n'),
  (err) => { process.stderr.write(String(err && err.stack || err) + '\\n'); process.exit(1); },
);
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
`;

export async function startS3rver(options: S3rverOptions = {}): Promise<S3rverHandle> {
  const bucket = options.bucket ?? 'parti-test';
  const directory = await mkdtemp(path.join(tmpdir(), 'parti-s3rver-'));
  const s3rverMain = createRequire(import.meta.url).resolve('s3rver');
  const child = spawn(process.execPath, ['--openssl-legacy-provider', '-e', CHILD, s3rverMain, directory, bucket], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  if (options.niceness && child.pid) {
    try {
      setPriority(child.pid, options.niceness);
    } catch {
      // not permitted: run at normal priority
    }
  }
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  try {
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`s3rver did not start within ${options.startTimeoutMs ?? 15000} ms: ${stderr}`)), options.startTimeoutMs ?? 15000);
      let out = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const line = out.split('\n')[0];
        if (out.includes('\n')) {
          clearTimeout(timer);
          try {
            resolve((JSON.parse(line!) as { port: number }).port);
          } catch {
            reject(new Error(`s3rver said: ${line}`));
          }
        }
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`s3rver exited (${code ?? signal}) before it listened: ${stderr}`));
      });
    });
    return {
      endpoint: `http://127.0.0.1:${port}`,
      bucket,
      region: 'us-east-1',
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      directory,
      pid: child.pid!,
      stop: () => stopChild(child, directory),
    };
  } catch (err) {
    await stopChild(child, directory);
    throw err;
  }
}

async function stopChild(child: ChildProcess, directory: string): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.stdin?.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }
  await rm(directory, { recursive: true, force: true });
}
