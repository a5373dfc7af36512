import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import type { DashboardConfig } from '../config/dashboard-schema.ts';
import { PartiError } from '../errors.ts';
import { addLogSecret } from '../observability/log.ts';

/** The cookie the page holds after it logged in with the token. */
export const sessionCookieName = 'parti_dashboard_session';

/**
 * The dashboard token from the config: `token`, else the contents of `tokenFile`, else the
 * environment variable named by `tokenEnv` when set and non-empty; undefined when none is given.
 */
export function resolveDashboardToken(config: DashboardConfig, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const token = readDashboardToken(config, env);
  addLogSecret(token); // whatever its source, it never reaches a log line
  return token;
}

function readDashboardToken(config: DashboardConfig, env: NodeJS.ProcessEnv): string | undefined {
  if (config.token) return config.token;
  if (config.tokenFile) {
    let text: string;
    try {
      text = readFileSync(config.tokenFile, 'utf8');
    } catch (err) {
      throw new PartiError('config', `dashboard.tokenFile: cannot read ${config.tokenFile} (${(err as NodeJS.ErrnoException).code ?? err})`);
    }
    const token = text.trim();
    if (token.length < 16) throw new PartiError('config', `dashboard.tokenFile: ${config.tokenFile} must hold a token of at least 16 characters`);
    return token;
  }
  const fromEnv = env[config.tokenEnv]?.trim();
  if (fromEnv) {
    if (fromEnv.length < 16) throw new PartiError('config', `dashboard.tokenEnv: $${config.tokenEnv} must hold a token of at least 16 characters`);
    return fromEnv;
  }
  return undefined;
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/**
 * Checks requests against an optional bearer token. A request is let in by an
 * `Authorization: Bearer TOKEN` header (programs, Prometheus) or by the session cookie the page
 * got from POST /api/session (browsers: EventSource cannot send headers). The cookie holds a
 * hash of the token, not the token. Comparisons are constant-time: both sides are hashed to 32
 * bytes first, so neither the length nor the content leaks through timing.
 */
export class DashboardAuth {
  readonly #token: Buffer | undefined;
  readonly #session: Buffer | undefined;
  readonly #sessionValue: string | undefined;

  constructor(token: string | undefined) {
    if (token === undefined) return;
    this.#token = digest(token);
    this.#sessionValue = createHash('sha256').update(`parti-dashboard-session:${token}`).digest('base64url');
    this.#session = digest(this.#sessionValue);
  }

  /** True when a token is set. */
  get required(): boolean {
    return this.#token !== undefined;
  }

  /** True when the request's bearer token is right. */
  bearerOk(req: IncomingMessage): boolean {
    if (!this.#token) return true;
    const header = req.headers.authorization;
    const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    return m ? timingSafeEqual(digest(m[1]!), this.#token) : false;
  }

  /** True when the request carries the right bearer token or session cookie (or no token is set). */
  allowed(req: IncomingMessage): boolean {
    if (!this.#token) return true;
    if (this.bearerOk(req)) return true;
    const cookie = readCookie(req, sessionCookieName);
    return cookie !== undefined && timingSafeEqual(digest(cookie), this.#session!);
  }

  /** The Set-Cookie header value that logs the page in. */
  sessionCookie(): string {
    if (!this.#sessionValue) throw new PartiError('illegal-state', 'no dashboard token is set, so there is no session cookie');
    return `${sessionCookieName}=${this.#sessionValue}; HttpOnly; SameSite=Strict; Path=/`;
  }
}

function readCookie(req: IncomingMessage, name: string): string | undefined {
  const header = req.headers.cookie;
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}
