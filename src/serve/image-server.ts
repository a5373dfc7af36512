import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PartiError } from '../errors.ts';
import { gridPng, imagePng } from '../generate/image-grid.ts';
import { log } from '../observability/log.ts';
import { AdmissionQueue, QueueFullError } from './admission-queue.ts';
import { parseImageRequest, type ImageRequest, type RequestDefaults, type RequestLimits } from './image-request.ts';
import type { OnnxSamplerSettings } from './onnx-generator.ts';
import { createServeMetrics, type ServeMetrics } from './serve-metrics.ts';

/**
 * The HTTP API of `parti serve`:
 *
 * - POST /v1/images {prompt, n, cfg, top_k, top_p, temperature, seed, format?} -> image/png (the
 *   image, or a grid when n > 1) or, with `Accept: application/json` or `"format": "json"`,
 *   {images: [{index, png (base64), tokens}], ...}.
 * - GET /healthz -> {status: "ok", model, running, queued}; GET /metrics -> Prometheus text.
 *
 * Errors are JSON {error, field?, message}: 400 invalid body (the field named), 404/405, 413 body
 * too large, 429 queue full (Retry-After), 504 timeout, 500 otherwise. Each request has a
 * deadline covering its queue wait and generation; generation stops between decoder steps when it
 * passes or the client disconnects.
 */

/** What the server generates with (OnnxGenerator in production; a fake in tests). */
export interface ImageBackend {
  readonly imageSize: number;
  readonly channels: number;
  /** Image tokens per image. */
  readonly imageTokens: number;
  /** Sampling defaults for absent fields. */
  readonly defaults: RequestDefaults;
  /** Shown by /healthz. */
  readonly info: Record<string, unknown>;
  generate(prompt: string, n: number, settings: OnnxSamplerSettings, opts: { signal: AbortSignal }): Promise<{ tokens: Int32Array[]; images: Uint8Array[]; truncated: boolean }>;
}

/** Options of the server (`parti serve` flags). */
export interface ImageServerOptions {
  /** Port (0 picks a free one) and host. */
  port: number;
  host?: string;
  /** Generations at once (default 1). */
  concurrency?: number;
  /** Requests that may wait for a slot before 429 (default 8). */
  queueLimit?: number;
  /** Per-request deadline in ms, queue wait included (default 60000). */
  timeoutMs?: number;
  /** Largest request body in bytes (default 16 KiB). */
  maxBodyBytes?: number;
  /** Most images per request (default 8). */
  maxImages?: number;
  /** Longest prompt in characters (default 2000). */
  maxPromptChars?: number;
}

/** A running server. */
export interface RunningImageServer {
  server: Server;
  /** The bound port (useful with port 0). */
  port: number;
  url: string;
  metrics: ServeMetrics;
  queue: AdmissionQueue;
  /** Stops accepting, waits for open requests to end, closes. */
  close(): Promise<void>;
}

class HttpProblem extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
    readonly field?: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const data = Buffer.from(`${JSON.stringify(body)}\n`);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': String(data.length), ...headers });
  res.end(data);
}

/** Reads the body up to `limit` bytes; more is a 413. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new HttpProblem(413, 'body_too_large', `the request body is ${declared} bytes; at most ${limit} are accepted`));
      return;
    }
    const parts: Buffer[] = [];
    let size = 0;
    let failed = false;
    req.on('data', (chunk: Buffer) => {
      if (failed) return;
      size += chunk.length;
      if (size > limit) {
        failed = true;
        reject(new HttpProblem(413, 'body_too_large', `the request body is over ${limit} bytes`));
        return;
      }
      parts.push(chunk);
    });
    req.on('end', () => {
      if (!failed) resolve(Buffer.concat(parts));
    });
    req.on('error', (err) => {
      if (!failed) reject(err);
    });
  });
}

function wantsJson(req: IncomingMessage, request: ImageRequest): boolean {
  if (request.format) return request.format === 'json';
  const accept = String(req.headers.accept ?? '');
  return /application\/json/i.test(accept) && !/image\/png/i.test(accept);
}

/** Starts the HTTP server on `backend`. */
export async function startImageServer(backend: ImageBackend, opts: ImageServerOptions): Promise<RunningImageServer> {
  const queue = new AdmissionQueue(opts.concurrency ?? 1, opts.queueLimit ?? 8);
  const metrics = createServeMetrics(() => ({ running: queue.running, queued: queue.queued }));
  const limits: RequestLimits = { maxImages: opts.maxImages ?? 8, maxPromptChars: opts.maxPromptChars ?? 2000 };
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const maxBody = opts.maxBodyBytes ?? 16 * 1024;
  const slog = log.child({ role: 'serve' });

  async function images(req: IncomingMessage, res: ServerResponse): Promise<number> {
    const started = performance.now();
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    // A client that goes away cancels its generation.
    const onClose = () => {
      if (!res.writableEnded) controller.abort();
    };
    res.on('close', onClose);
    let status = 500;
    try {
      const raw = await readBody(req, maxBody);
      let body: unknown;
      try {
        body = JSON.parse(raw.toString('utf8'));
      } catch (err) {
        throw new HttpProblem(400, 'invalid_request', `the body is not JSON (${(err as Error).message})`, '(body)');
      }
      const parsed = parseImageRequest(body, limits, backend.defaults);
      if (!parsed.ok) throw new HttpProblem(400, 'invalid_request', `${parsed.problem.field}: ${parsed.problem.message}`, parsed.problem.field);
      const r = parsed.request;
      let release: () => void;
      try {
        release = await queue.acquire(controller.signal);
      } catch (err) {
        if (err instanceof QueueFullError) {
          metrics.rejectedTotal.inc();
          throw new HttpProblem(429, 'busy', err.message, undefined, { 'retry-after': '1' });
        }
        throw err;
      }
      let out: Awaited<ReturnType<ImageBackend['generate']>>;
      try {
        out = await backend.generate(r.prompt, r.n, { cfg: r.cfg, topK: r.topK, topP: r.topP, temperature: r.temperature, seed: r.seed }, { signal: controller.signal });
      } finally {
        release();
      }
      metrics.imagesTotal.inc(out.images.length);
      metrics.imageTokensTotal.inc(out.images.length * backend.imageTokens);
      const set = { images: out.images, size: backend.imageSize, channels: backend.channels };
      const headers = { 'x-parti-seed': String(r.seed), 'x-parti-truncated': out.truncated ? '1' : '0' };
      status = 200;
      if (wantsJson(req, r)) {
        sendJson(
          res,
          200,
          {
            prompt: r.prompt,
            truncated: out.truncated,
            settings: { n: r.n, cfg: r.cfg, top_k: r.topK, top_p: r.topP, temperature: r.temperature, seed: r.seed },
            size: backend.imageSize,
            images: out.images.map((_, i) => ({ index: i, png: imagePng(set, i).toString('base64'), tokens: Array.from(out.tokens[i]!) })),
            ms: Math.round(performance.now() - started),
          },
          headers,
        );
      } else {
        const png = r.n === 1 ? imagePng(set, 0) : gridPng(set);
        res.writeHead(200, { 'content-type': 'image/png', 'content-length': String(png.length), ...headers });
        res.end(png);
      }
      return status;
    } catch (err) {
      let p: HttpProblem;
      if (err instanceof HttpProblem) p = err;
      else if (err instanceof PartiError && err.code === 'deadline') {
        metrics.timeoutsTotal.inc();
        p = new HttpProblem(504, 'timeout', `the request did not finish within ${timeoutMs} ms`);
      } else {
        slog.error({ err: (err as Error).message }, 'generation failed');
        p = new HttpProblem(500, 'internal', (err as Error).message);
      }
      status = p.status;
      if (!res.headersSent && !res.destroyed) {
        const extra = p.status === 413 ? { ...p.headers, connection: 'close' } : p.headers;
        sendJson(res, p.status, { error: p.error, ...(p.field ? { field: p.field } : {}), message: p.message }, extra);
      }
      return status;
    } finally {
      clearTimeout(timer);
      res.off('close', onClose);
      metrics.requestSeconds.observe({ code: String(status) }, (performance.now() - started) / 1000);
    }
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const done = (status: number) => metrics.requestsTotal.inc({ code: String(status) });
    if (url.pathname === '/v1/images') {
      if (req.method !== 'POST') {
        sendJson(res, 405, { error: 'method_not_allowed', message: 'use POST /v1/images' }, { allow: 'POST' });
        done(405);
        return;
      }
      void images(req, res).then(done);
      return;
    }
    if (url.pathname === '/healthz' && req.method === 'GET') {
      sendJson(res, 200, { status: 'ok', model: backend.info, running: queue.running, queued: queue.queued });
      done(200);
      return;
    }
    if (url.pathname === '/metrics' && req.method === 'GET') {
      void metrics.registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': metrics.registry.contentType });
          res.end(text);
          done(200);
        },
        (err: Error) => {
          sendJson(res, 500, { error: 'internal', message: err.message });
          done(500);
        },
      );
      return;
    }
    sendJson(res, 404, { error: 'not_found', message: `no route ${req.method} ${url.pathname} (POST /v1/images, GET /healthz, GET /metrics)` });
    done(404);
  });
  server.requestTimeout = timeoutMs + 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(err.code === 'EADDRINUSE' ? new PartiError('usage', `--port: ${opts.port} is in use on ${opts.host ?? '127.0.0.1'}`) : err),
    );
    server.listen(opts.port, opts.host ?? '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const host = opts.host ?? '127.0.0.1';
  return {
    server,
    port,
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    metrics,
    queue,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  };
}
