import { z } from 'zod';

/** Sample images generated every K steps from fixed prompts, shown in the dashboard's gallery. */
export const gallerySchema = z.strictObject({
  /** Fixed prompts to sample from; an empty list turns the gallery off. */
  prompts: z.array(z.string().min(1).max(512)).max(16).default([]),
  /** Generate a sample of every prompt every this many optimizer steps; 0 turns the gallery off. */
  everySteps: z.number().int().min(0).default(0),
  /**
   * At least this many seconds between the starts of two generations: a run whose checkpoints come
   * faster than that (a small model, a short everySteps) is sampled at the first due checkpoint
   * after the wait, the newest one, instead of on every one. 0: no wait.
   */
  minIntervalSeconds: z.number().min(0).max(86_400).default(5),
  /** Gallery items kept in the coordinator's memory (oldest dropped first). */
  keep: z.number().int().min(1).max(1000).default(48),
  /** Also render the decoder's cross-attention maps (one per text token) when the model offers them. */
  attentionMaps: z.boolean().default(true),
});
export type GalleryConfig = z.infer<typeof gallerySchema>;

/**
 * The coordinator's HTTP server: the dashboard page, its JSON API, live updates (SSE), /metrics,
 * /healthz and /readyz. None of it changes what is computed, so the section is not in the config hash.
 */
export const dashboardSchema = z.strictObject({
  /** Serve the dashboard at all. */
  enabled: z.boolean().default(true),
  /**
   * Address to bind. Loopback by default: `kubectl port-forward` reaches it inside the pod. Any
   * other address needs a token unless `allowUnauthenticated` says otherwise.
   */
  host: z.string().min(1).default('127.0.0.1'),
  /** TCP port; 0 picks a free one (the launcher prints the URL). */
  port: z.number().int().min(0).max(65535).default(8470),
  /**
   * Bearer token protecting the page, the API and /metrics. Prefer `tokenFile` or `tokenEnv`, so
   * the secret stays out of config files.
   */
  token: z.string().min(16, 'at least 16 characters').optional(),
  /** A file holding the token (a mounted Kubernetes Secret); surrounding whitespace is ignored. */
  tokenFile: z.string().min(1).optional(),
  /** An environment variable holding the token, used when it is set and non-empty. */
  tokenEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name').default('PARTI_DASHBOARD_TOKEN'),
  /** Bind a non-loopback address without a token. Off: such a config is refused at start. */
  allowUnauthenticated: z.boolean().default(false),
  /** Points drawn per chart; longer histories are downsampled on the server (LTTB). */
  historyPoints: z.number().int().min(50).max(10000).default(600),
  /**
   * Live-update streams (Server-Sent Events: one per open page) served at once. One more is
   * answered 503 with a Retry-After; each stream costs a socket and a serialization per update.
   */
  maxStreams: z.number().int().min(1).max(10000).default(32),
  /** Events kept in memory for the event log (oldest dropped first; counters stay exact). */
  eventsKept: z.number().int().min(10).max(100000).default(2000),
  gallery: gallerySchema.prefault({}),
});
export type DashboardConfig = z.infer<typeof dashboardSchema>;
