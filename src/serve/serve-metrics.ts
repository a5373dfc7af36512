import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** The Prometheus metrics of `parti serve`, in a registry of their own (served at /metrics). */
export interface ServeMetrics {
  readonly registry: Registry;
  /** Answered requests by HTTP status code. */
  readonly requestsTotal: Counter<'code'>;
  /** Wall time of answered POST /v1/images requests (queue wait included), by status code. */
  readonly requestSeconds: Histogram<'code'>;
  /** Images generated. */
  readonly imagesTotal: Counter;
  /** Image tokens drawn (all rows' samples, without the unconditional rows). */
  readonly imageTokensTotal: Counter;
  /** Requests refused because the queue was full (429). */
  readonly rejectedTotal: Counter;
  /** Requests that hit their timeout (504). */
  readonly timeoutsTotal: Counter;
}

/** Creates the metrics; `state` is read at scrape time for the running/queued gauges. */
export function createServeMetrics(state: () => { running: number; queued: number }): ServeMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'parti_serve_' });
  const requestsTotal = new Counter({ name: 'parti_serve_requests_total', help: 'HTTP requests answered, by status code', labelNames: ['code'], registers: [registry] });
  const requestSeconds = new Histogram({
    name: 'parti_serve_request_seconds',
    help: 'Wall time of POST /v1/images requests (queue wait included), by status code',
    labelNames: ['code'],
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    registers: [registry],
  });
  const imagesTotal = new Counter({ name: 'parti_serve_images_total', help: 'Images generated', registers: [registry] });
  const imageTokensTotal = new Counter({ name: 'parti_serve_image_tokens_total', help: 'Image tokens drawn', registers: [registry] });
  const rejectedTotal = new Counter({ name: 'parti_serve_rejected_total', help: 'Requests refused with 429 (queue full)', registers: [registry] });
  const timeoutsTotal = new Counter({ name: 'parti_serve_timeouts_total', help: 'Requests that timed out (504)', registers: [registry] });
  new Gauge({
    name: 'parti_serve_running',
    help: 'Generations running now',
    registers: [registry],
    collect() {
      this.set(state().running);
    },
  });
  new Gauge({
    name: 'parti_serve_queued',
    help: 'Requests waiting for a generation slot',
    registers: [registry],
    collect() {
      this.set(state().queued);
    },
  });
  return { registry, requestsTotal, requestSeconds, imagesTotal, imageTokensTotal, rejectedTotal, timeoutsTotal };
}
