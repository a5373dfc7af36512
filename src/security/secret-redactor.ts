/**
 * Removes secrets from text and values before they leave the process: log lines, error messages,
 * API JSON, metrics labels, configs written into checkpoints.
 *
 * Two kinds of knowledge: the exact values this process knows are secret (the job token, S3 keys
 * from the environment, the dashboard token), and shapes that are secret whatever their value
 * (PEM private keys, AWS access key ids, `Bearer …` credentials, `secret=…` assignments).
 */

/** What a redacted secret becomes. */
export const REDACTED = '[redacted]';

/** Environment variables whose values are secrets (AWS SDK, parti's own). */
export const SECRET_ENV_VARS: readonly string[] = [
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_ACCESS_KEY_ID',
  'AWS_SECURITY_TOKEN',
  'PARTI_JOB_TOKEN',
  'PARTI_DASHBOARD_TOKEN',
];

/** Object keys whose values are secrets wherever they appear (compared lower-case, without `_`/`-`). */
const SECRET_KEYS = new Set([
  'token', 'jobtoken', 'password', 'secret', 'secretaccesskey', 'sessiontoken', 'accesskeyid', 'privatekey', 'authorization', 'cookie', 'apikey',
]);

const SHAPES: readonly RegExp[] = [
  // PEM private keys (RSA, EC, PKCS#8, encrypted), whole block; also a block cut short.
  /-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)/g,
  // AWS access key ids.
  /\b(?:AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}\b/g,
];

/** `Bearer xyz`, `secret=xyz`, `"token": "xyz"`: keep the name, drop the value. */
const ASSIGNMENTS: readonly RegExp[] = [
  /(\bBearer\s+)[A-Za-z0-9._~+/=-]+/gi,
  /(\b(?:aws_secret_access_key|aws_session_token|secret_?access_?key|session_?token|password|passwd|job_?token|api_?key)\b["']?\s*[:=]\s*["']?)[^\s"',;&}]+/gi,
];

function normKey(key: string): string {
  return key.toLowerCase().replace(/[_-]/g, '');
}

/** Shortest exact value redacted: shorter ones would blank out ordinary words and numbers. */
const MIN_SECRET_LENGTH = 6;

export class SecretRedactor {
  private readonly values = new Set<string>();
  private pattern: RegExp | null = null;

  /** A redactor that knows `secrets` (empty and too-short values are ignored). */
  constructor(secrets: Iterable<string | undefined> = []) {
    for (const s of secrets) this.add(s);
  }

  /**
   * A redactor for this process: the values of SECRET_ENV_VARS plus `extra` (e.g. the job
   * token's text and the dashboard token).
   */
  static fromEnv(env: NodeJS.ProcessEnv = process.env, extra: Iterable<string | undefined> = []): SecretRedactor {
    const r = new SecretRedactor(extra);
    for (const name of SECRET_ENV_VARS) r.add(env[name]);
    return r;
  }

  /** Adds a secret value. Its base64 and URL-encoded forms are redacted too. */
  add(secret: string | undefined): this {
    if (!secret || secret.length < MIN_SECRET_LENGTH) return this;
    for (const v of [secret, secret.trim(), Buffer.from(secret).toString('base64'), encodeURIComponent(secret)]) {
      if (v.length >= MIN_SECRET_LENGTH) this.values.add(v);
    }
    this.pattern = null;
    return this;
  }

  /** How many exact values it knows (for tests and a start-up log line; never the values). */
  get size(): number {
    return this.values.size;
  }

  /** `text` with every known secret and secret-shaped substring replaced by `[redacted]`. */
  redact(text: string): string {
    let out = text;
    if (this.values.size > 0) {
      if (!this.pattern) {
        // Longest first, so a secret that contains another is removed whole.
        const alts = [...this.values].sort((a, b) => b.length - a.length).map((v) => v.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
        this.pattern = new RegExp(alts.join('|'), 'g');
      }
      out = out.replace(this.pattern, REDACTED);
    }
    for (const re of SHAPES) out = out.replace(re, REDACTED);
    for (const re of ASSIGNMENTS) out = out.replace(re, `$1${REDACTED}`);
    return out;
  }

  /**
   * A deep copy of `value` with strings redacted and the values of secret-named keys (`token`,
   * `secretAccessKey`, `privateKey`, `authorization`, …) replaced whole. Errors become
   * `{ name, message, code }` with the message redacted. Cycles are cut.
   */
  redactValue<T>(value: T, options: { dropSecretKeys?: boolean } = {}): T {
    return this.walk(value, new WeakSet(), options.dropSecretKeys ?? false) as T;
  }

  /** An Error whose message (and stack) are redacted; the code and name are kept. */
  redactError(err: unknown): Error {
    if (!(err instanceof Error)) return new Error(this.redact(String(err)));
    const copy = new Error(this.redact(err.message));
    copy.name = err.name;
    if (err.stack) copy.stack = this.redact(err.stack);
    const code = (err as { code?: unknown }).code;
    if (code !== undefined) (copy as Error & { code: unknown }).code = code;
    return copy;
  }

  private walk(v: unknown, seen: WeakSet<object>, drop: boolean): unknown {
    if (typeof v === 'string') return this.redact(v);
    if (v === null || typeof v !== 'object') return v;
    if (seen.has(v)) return '[cycle]';
    seen.add(v);
    if (v instanceof Error) {
      const code = (v as { code?: unknown }).code;
      return { name: v.name, message: this.redact(v.message), ...(code !== undefined ? { code } : {}) };
    }
    if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) return v;
    if (Array.isArray(v)) return v.map((x) => this.walk(x, seen, drop));
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      const secret = SECRET_KEYS.has(normKey(k)) && x !== undefined && x !== null && x !== '';
      if (secret && drop) continue;
      out[k] = secret ? REDACTED : this.walk(x, seen, drop);
    }
    return out;
  }
}

/**
 * A config with its secret fields removed, for what is written out (checkpoints, the dashboard's
 * job view, logs): `security.token`, `dashboard.token` and any other secret-named key are left
 * out (so the result still parses as a config: the token then comes from its file or environment
 * variable); file and env-var names stay (they are not secrets), and strings are redacted. The
 * config hash leaves these sections out, so it is the same before and after.
 */
export function redactConfig<T>(config: T, redactor: SecretRedactor = new SecretRedactor()): T {
  return redactor.redactValue(config, { dropSecretKeys: true });
}
