import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { Registry } from 'prom-client';
import type { DashboardConfig } from '../config/dashboard-schema.ts';
import { PartiError } from '../errors.ts';
import { log, tracer } from '../observability/log.ts';
import type { TrainingMetrics } from '../observability/metrics.ts';
import {
  historySeriesSchema,
  type HistoryResponse,
  type HistorySeries,
  type LiveUpdate,
  type OverviewResponse,
  type StepRecord,
} from './api-schema.ts';
import { DashboardAuth, resolveDashboardToken } from './dashboard-auth.ts';
import { downsampleLttb } from './history-downsample.ts';
import type { RunStateView } from './run-state.ts';

const trace = tracer('dashboard');

/** Options of {@link createDashboardServer}. */
export interface DashboardServerOptions {
  /** The job's state, read on every request and subscribed to for live updates. */
  view: RunStateView;
  /** Address to bind; default 127.0.0.1. */
  host?: string;
  /** Port; default 0 (a free one: read `port` or `url` off the result). */
  port?: number;
  /** Bearer token protecting the page, the API and /metrics; none by default. */
  token?: string;
  /** Bind a non-loopback host without a token (refused otherwise). */
  allowUnauthenticated?: boolean;
  /** The registry /metrics serves (e.g. `createTrainingMetrics().registry`); an empty one by default. */
  registry?: Registry;
  /** Points per chart the history is downsampled to (default 600). */
  historyPoints?: number;
  /** A comment line is sent on idle SSE streams this often, so proxies keep them open (default 15 s). */
  sseKeepAliveMs?: number;
  /** Live-update streams served at once (default 32); one more is answered 503 with Retry-After. */
  maxStreams?: number;
  /** Counts open and refused streams (`parti_dashboard_streams*`), when given. */
  metrics?: Pick<TrainingMetrics, 'dashboardStreams' | 'dashboardStreamsRefusedTotal'>;
}

/** A running dashboard server. */
export interface DashboardServer {
  /** The page's URL, e.g. http://127.0.0.1:8470/ (with the bound port). */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly server: Server;
  /** Live-update streams open now. */
  openStreams(): number;
  /** Ends live streams and open connections, then stops listening. */
  close(): Promise<void>;
}

/** The server options a config's `dashboard` section gives (token resolved from token, tokenFile or tokenEnv). */
export function dashboardServerOptions(
  config: DashboardConfig,
  parts: { view: RunStateView; metrics?: TrainingMetrics },
  env: NodeJS.ProcessEnv = process.env,
): DashboardServerOptions {
  const token = resolveDashboardToken(config, env);
  return {
    view: parts.view,
    host: config.host,
    port: config.port,
    allowUnauthenticated: config.allowUnauthenticated,
    historyPoints: config.historyPoints,
    maxStreams: config.maxStreams,
    ...(token !== undefined ? { token } : {}),
    ...(parts.metrics ? { registry: parts.metrics.registry, metrics: parts.metrics } : {}),
  };
}

const pageDir = fileURLToPath(new URL('./page/', import.meta.url));
const uplotDir = dirname(createRequire(import.meta.url).resolve('uplot'));

/** Files served as they are: URL path -> [file, content type]. */
const assets: Record<string, [string, string]> = {
  '/app.js': [join(pageDir, 'app.js'), 'text/javascript; charset=utf-8'],
  '/charts.js': [join(pageDir, 'charts.js'), 'text/javascript; charset=utf-8'],
  '/format.js': [join(pageDir, 'format.js'), 'text/javascript; charset=utf-8'],
  '/style.css': [join(pageDir, 'style.css'), 'text/css; charset=utf-8'],
  '/vendor/uPlot.esm.js': [join(uplotDir, 'uPlot.esm.js'), 'text/javascript; charset=utf-8'],
  '/vendor/uPlot.min.css': [join(uplotDir, 'uPlot.min.css'), 'text/css; charset=utf-8'],
};
/** Served without the token: what the login page needs. */
const publicAssets: Record<string, [string, string]> = {
  '/login.js': [join(pageDir, 'login.js'), 'text/javascript; charset=utf-8'],
  '/login.css': [join(pageDir, 'login.css'), 'text/css; charset=utf-8'],
};

const securityHeaders = {
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'content-security-policy': "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
};

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

const intParam = (name: string, min: number, max: number) =>
  z.coerce
    .number({ error: `${name}: must be a number` })
    .int(`${name}: must be an integer`)
    .min(min, `${name}: must be >= ${min}`)
    .max(max, `${name}: must be <= ${max}`)
    .optional();

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** Extra response headers (Retry-After). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/**
 * Starts the dashboard's HTTP server: the page (/), its JSON API (/api/...), live updates
 * (/api/stream, Server-Sent Events), /metrics (Prometheus text format), /healthz and /readyz.
 * See docs/dashboard-api.md. Without a token it refuses a non-loopback host (unless
 * `allowUnauthenticated`) and, on loopback, answers only requests whose Host is a loopback name
 * (so a web page elsewhere cannot read it through DNS rebinding).
 */
export async function createDashboardServer(options: DashboardServerOptions): Promise<DashboardServer> {
  const host = options.host ?? '127.0.0.1';
  const auth = new DashboardAuth(options.token);
  if (!auth.required && !isLoopback(host) && !options.allowUnauthenticated) {
    throw new PartiError(
      'config',
      `dashboard.host: ${host} is not loopback and no token is set; set dashboard.tokenFile (or $PARTI_DASHBOARD_TOKEN), or dashboard.allowUnauthenticated: true`,
    );
  }
  const { view } = options;
  const registry = options.registry ?? new Registry();
  const historyPoints = options.historyPoints ?? 600;
  const keepAliveMs = options.sseKeepAliveMs ?? 15_000;
  const streams = new Set<ServerResponse>();
  const maxStreams = options.maxStreams ?? 32;
  const guardHost = !auth.required && isLoopback(host);

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      const status = err instanceof HttpError ? err.status : 500;
      if (status === 500) log.error({ err, url: req.url }, 'dashboard request failed');
      if (err instanceof HttpError) for (const [k, v] of Object.entries(err.headers)) if (!res.headersSent) res.setHeader(k, v);
      if (!res.headersSent) sendJson(res, status, { error: err instanceof Error ? err.message : String(err) });
      else res.destroy();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://dashboard');
    const path = url.pathname;
    trace('request', { method: req.method, path });
    for (const [k, v] of Object.entries(securityHeaders)) res.setHeader(k, v);

    if (guardHost) {
      const hostName = (req.headers.host ?? '').replace(/:\d+$/, '');
      if (!isLoopback(hostName)) throw new HttpError(403, `Host ${hostName || '(none)'} is not a loopback name`);
    }
    // Probes: never behind the token (Kubernetes sends none).
    if (path === '/healthz') return sendText(res, 200, 'ok\n');
    if (path === '/readyz') return view.ready() ? sendText(res, 200, 'ready\n') : sendText(res, 503, 'not ready\n');
    const pub = publicAssets[path];
    if (pub) return sendFile(res, pub);

    if (path === '/api/session') {
      if (req.method !== 'POST') throw new HttpError(405, 'POST /api/session with an Authorization: Bearer header');
      if (!auth.required) return sendNoContent(res);
      if (!auth.bearerOk(req)) throw new HttpError(401, 'wrong or missing bearer token');
      res.setHeader('set-cookie', auth.sessionCookie());
      return sendNoContent(res);
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, `${req.method} is not allowed`);

    if (!auth.allowed(req)) {
      res.setHeader('www-authenticate', 'Bearer realm="parti dashboard"');
      if (path === '/' || path === '/index.html') return sendFile(res, [join(pageDir, 'login.html'), 'text/html; charset=utf-8'], 401);
      throw new HttpError(401, 'a bearer token is required');
    }

    if (path === '/' || path === '/index.html') return sendFile(res, [join(pageDir, 'index.html'), 'text/html; charset=utf-8']);
    const asset = assets[path];
    if (asset) return sendFile(res, asset);
    if (path === '/metrics') {
      const text = await registry.metrics();
      res.writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' });
      res.end(text);
      return;
    }
    if (path === '/api/stream') {
      if (req.method !== 'GET') throw new HttpError(405, 'GET /api/stream (Server-Sent Events)');
      return openStream(req, res);
    }
    if (path === '/api/overview') {
      const body: OverviewResponse = {
        job: view.job(),
        workers: [...view.workers()],
        checkpoints: [...view.checkpoints()],
        events: view.events(0, 200).events,
        skipped: view.skipped(),
        gallery: [...view.gallery()],
        galleryKeep: view.galleryKeep(),
        historyPoints,
        now: Date.now(),
      };
      return sendJson(res, 200, body);
    }
    if (path === '/api/job') return sendJson(res, 200, view.job());
    if (path === '/api/workers') return sendJson(res, 200, { workers: view.workers() });
    if (path === '/api/checkpoints') return sendJson(res, 200, { checkpoints: view.checkpoints() });
    if (path === '/api/skipped') return sendJson(res, 200, view.skipped());
    if (path === '/api/gallery') return sendJson(res, 200, { items: view.gallery() });
    if (path === '/api/events') {
      const q = parseQuery(url, { after: intParam('after', 0, Number.MAX_SAFE_INTEGER), limit: intParam('limit', 1, 5000) });
      return sendJson(res, 200, view.events(q.after ?? 0, q.limit ?? 500));
    }
    if (path === '/api/steps') {
      const q = parseQuery(url, { after: intParam('after', -1, Number.MAX_SAFE_INTEGER), limit: intParam('limit', 1, 10000) });
      const steps = view.steps();
      const start = firstIndexAbove(steps, q.after ?? -1);
      const limit = q.limit ?? 1000;
      const page = steps.slice(start, start + limit);
      const more = start + limit < steps.length;
      return sendJson(res, 200, more ? { steps: page, next: page.at(-1)!.step } : { steps: page });
    }
    if (path === '/api/history') return sendJson(res, 200, history(url));
    const png = /^\/api\/gallery\/([A-Za-z0-9_-]+)\/(?:image|attention\/(\d+))\.png$/.exec(path);
    if (png) {
      const bytes = view.galleryPng(png[1]!, png[2] === undefined ? undefined : Number(png[2]));
      if (!bytes) throw new HttpError(404, `no gallery image ${path}`);
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': bytes.byteLength, 'cache-control': 'private, max-age=86400, immutable' });
      res.end(req.method === 'HEAD' ? undefined : bytes);
      return;
    }
    throw new HttpError(404, `no such page: ${path}`);
  }

  function history(url: URL): HistoryResponse {
    const q = parseQuery(url, {
      series: z.string().optional(),
      points: intParam('points', 3, 10000),
      from: intParam('from', 0, Number.MAX_SAFE_INTEGER),
      to: intParam('to', 0, Number.MAX_SAFE_INTEGER),
    });
    const names = (q.series ?? 'loss,tokensPerSec,lr').split(',').filter(Boolean);
    const series: HistorySeries[] = [];
    for (const name of names) {
      const parsed = historySeriesSchema.safeParse(name);
      if (!parsed.success) throw new HttpError(400, `series: unknown series ${JSON.stringify(name)}; one of ${historySeriesSchema.options.join(', ')}`);
      series.push(parsed.data);
    }
    const all = view.steps();
    const start = firstIndexAbove(all, (q.from ?? 0) - 1);
    const end = q.to === undefined ? all.length : firstIndexAbove(all, q.to);
    const points = q.points ?? historyPoints;
    const out: HistoryResponse['series'] = {};
    for (const name of series) {
      const xs: number[] = [];
      const ys: number[] = [];
      for (let i = start; i < end; i++) {
        const v = all[i]![name];
        if (typeof v === 'number' && Number.isFinite(v)) {
          xs.push(all[i]!.step);
          ys.push(v);
        }
      }
      const d = downsampleLttb(xs, ys, points);
      out[name] = { step: d.x, value: d.y };
    }
    return { total: Math.max(0, end - start), lastStep: all.at(-1)?.step ?? 0, points, series: out };
  }

  function openStream(req: IncomingMessage, res: ServerResponse): void {
    if (streams.size >= maxStreams) {
      trace('stream refused', { streams: streams.size });
      options.metrics?.dashboardStreamsRefusedTotal.inc();
      throw new HttpError(
        503,
        `too many live-update streams: ${streams.size} open, at most ${maxStreams} (dashboard.maxStreams); close another dashboard tab or retry later`,
        { 'retry-after': '10' },
      );
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.write('retry: 3000\n\n');
    streams.add(res);
    options.metrics?.dashboardStreams.set(streams.size);
    const unsubscribe = view.subscribe((update: LiveUpdate) => {
      // A client that cannot keep up is dropped; it reconnects and reloads the overview.
      if (res.writableLength > 4 * 1024 * 1024) {
        trace('dropping a slow stream', { buffered: res.writableLength });
        res.destroy();
        return;
      }
      res.write(`event: ${update.type}\ndata: ${JSON.stringify(update)}\n\n`);
    });
    const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), keepAliveMs);
    keepAlive.unref();
    // A client that goes away (tab closed, network gone, a write error) frees its place at once.
    const done = () => {
      clearInterval(keepAlive);
      unsubscribe();
      if (streams.delete(res)) {
        options.metrics?.dashboardStreams.set(streams.size);
        trace('stream closed', { streams: streams.size });
      }
    };
    req.on('close', done);
    res.on('close', done);
    res.on('error', done);
    trace('stream opened', { streams: streams.size });
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'EADDRINUSE' || err.code === 'EACCES' || err.code === 'EADDRNOTAVAIL'
          ? new PartiError('config', `dashboard.port: cannot listen on ${host}:${options.port ?? 0} (${err.code})`)
          : err,
      ),
    );
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const urlHost = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  return {
    url: `http://${urlHost}:${port}/`,
    host,
    port,
    server,
    openStreams: () => streams.size,
    async close() {
      for (const res of streams) res.end();
      streams.clear();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/** Index of the first step record with step > `after` (records are sorted by step). */
function firstIndexAbove(steps: readonly StepRecord[], after: number): number {
  let lo = 0;
  let hi = steps.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (steps[mid]!.step <= after) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function parseQuery<S extends z.ZodRawShape>(url: URL, shape: S): z.infer<z.ZodObject<S>> {
  const raw: Record<string, string> = {};
  for (const key of Object.keys(shape)) {
    const v = url.searchParams.get(key);
    if (v !== null && v !== '') raw[key] = v;
  }
  const result = z.object(shape).safeParse(raw);
  if (!result.success) throw new HttpError(400, result.error.issues.map((i) => i.message).join('; '));
  return result.data;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(res.req?.method === 'HEAD' ? undefined : text);
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
  res.end(text);
}

function sendNoContent(res: ServerResponse): void {
  res.writeHead(204, { 'cache-control': 'no-store' });
  res.end();
}

async function sendFile(res: ServerResponse, [file, type]: [string, string], status = 200): Promise<void> {
  const body = await readFile(file);
  res.writeHead(status, { 'content-type': type, 'content-length': body.byteLength, 'cache-control': 'no-cache' });
  res.end(res.req?.method === 'HEAD' ? undefined : body);
}
