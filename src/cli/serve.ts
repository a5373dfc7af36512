import type { Command } from 'commander';
import { usageError } from '../errors.ts';

/** Raw flags of `parti serve`. */
interface ServeFlags {
  onnx: string;
  port: string;
  host: string;
  provider: string;
  threads?: string;
  spinning?: boolean;
  concurrency: string;
  queue: string;
  timeoutMs: string;
  maxBodyBytes: string;
  maxImages: string;
}

function int(flag: string, raw: string, min: number): number {
  const s = raw.trim();
  const v = Number(s);
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(v) || v < min) throw usageError(flag, `must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return v;
}

/**
 * `parti serve --onnx DIR --port P`: the HTTP image API (src/serve/image-server.ts) on ONNX
 * Runtime, from a `parti export onnx` directory. Prints `listening on URL` on stdout once ready;
 * SIGINT/SIGTERM stop accepting, let running requests end and exit.
 */
export function register(program: Command): void {
  program
    .command('serve')
    .description('Serve an ONNX export over HTTP: POST /v1/images, GET /healthz, GET /metrics (ONNX Runtime, no tfjs).')
    .requiredOption('--onnx <dir>', 'directory written by parti export onnx')
    .option('--port <port>', 'TCP port (0 picks a free one)', '8080')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--provider <name>', 'ONNX Runtime execution provider: cpu or cuda', 'cpu')
    .option('--threads <n>', 'ONNX Runtime intra-op threads (default: its choice)')
    .option('--spinning', "let ONNX Runtime's pool threads spin waiting for work (faster on an idle dedicated machine, much slower on a shared one)")
    .option('--concurrency <n>', 'generations at once', '1')
    .option('--queue <n>', 'requests that may wait for a slot before 429', '8')
    .option('--timeout-ms <ms>', 'per-request deadline, queue wait included', '60000')
    .option('--max-body-bytes <n>', 'largest request body', '16384')
    .option('--max-images <n>', 'most images per request', '8')
    .action(async (f: ServeFlags) => {
      const port = int('--port', f.port, 0);
      if (port > 65535) throw usageError('--port', `must be <= 65535, got ${port}`);
      if (f.provider !== 'cpu' && f.provider !== 'cuda') throw usageError('--provider', `must be cpu or cuda, got ${JSON.stringify(f.provider)}`);
      const opts = {
        port,
        host: f.host,
        concurrency: int('--concurrency', f.concurrency, 1),
        queueLimit: int('--queue', f.queue, 0),
        timeoutMs: int('--timeout-ms', f.timeoutMs, 1),
        maxBodyBytes: int('--max-body-bytes', f.maxBodyBytes, 64),
        maxImages: int('--max-images', f.maxImages, 1),
      };
      const threads = f.threads === undefined ? undefined : int('--threads', f.threads, 1);
      const { OnnxGenerator } = await import('../serve/onnx-generator.ts');
      const { startImageServer } = await import('../serve/image-server.ts');
      const gen = await OnnxGenerator.load(f.onnx, { provider: f.provider, intraOpThreads: threads, spinning: f.spinning ?? false });
      const running = await startImageServer(gen, opts);
      process.stdout.write(`listening on ${running.url}\n`);
      await new Promise<void>((resolve) => {
        const stop = () => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          void running.close().then(resolve);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
      await gen.release();
    });
}
