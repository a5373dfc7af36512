import { addLogSecret } from '../observability/log.ts';
import { readFileSync } from 'node:fs';
import { PartiError } from '../errors.ts';
import { constantTimeEqual } from './constant-time.ts';

/** Where a job's token comes from (the `security` config section's token fields). */
export interface JobTokenSource {
  /** The token itself (discouraged: it sits in the config file). */
  token?: string;
  /** A file holding the token, e.g. a mounted Kubernetes Secret; surrounding whitespace is ignored. */
  tokenFile?: string;
  /** An environment variable holding the token, used when set and non-empty. */
  tokenEnv?: string;
}

/** Shortest token accepted: 16 bytes (128 bits when random). */
export const MIN_JOB_TOKEN_BYTES = 16;
/** Longest token accepted; tokens travel in every join and every collective subscription. */
export const MAX_JOB_TOKEN_BYTES = 4096;

/**
 * A job's shared secret. Every join and every collective link presents it; a peer without it, or
 * with another, is refused. The bytes never appear in toString/JSON/inspect output, so a token
 * that ends up in a logged object prints as `[redacted]`.
 */
export class JobToken {
  readonly #bytes: Uint8Array;
  private constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
  }

  /** No token: the job accepts only peers that present none either. */
  static none(): JobToken {
    return new JobToken(new Uint8Array(0));
  }

  /** A token from its text (UTF-8). Throws PartiError('config') when it is too short or too long. */
  static fromString(text: string, where = 'job token'): JobToken {
    const bytes = new Uint8Array(Buffer.from(text, 'utf8'));
    if (bytes.byteLength < MIN_JOB_TOKEN_BYTES || bytes.byteLength > MAX_JOB_TOKEN_BYTES) {
      // The length only: never the value.
      throw new PartiError('config', `${where}: must be ${MIN_JOB_TOKEN_BYTES}..${MAX_JOB_TOKEN_BYTES} bytes, got ${bytes.byteLength}`);
    }
    return new JobToken(bytes);
  }

  /**
   * Resolves a source: `token`, else `tokenFile`, else the environment variable `tokenEnv` when set
   * and non-empty, else no token. A named file that cannot be read is an error (a Secret that did
   * not mount must not silently turn the token off).
   */
  static resolve(source: JobTokenSource, env: NodeJS.ProcessEnv = process.env): JobToken {
    // A token from the config or a file is not among the secret environment variables the logs
    // know: add it, so that no log line carries it (one from the environment is known already).
    if (source.token !== undefined) {
      const token = JobToken.fromString(source.token, 'security.token');
      addLogSecret(source.token);
      return token;
    }
    if (source.tokenFile !== undefined) {
      let text: string;
      try {
        text = readFileSync(source.tokenFile, 'utf8');
      } catch (err) {
        throw new PartiError('config', `security.tokenFile: cannot read ${source.tokenFile} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      }
      const token = JobToken.fromString(text.trim(), `security.tokenFile ${source.tokenFile}`);
      addLogSecret(text.trim());
      return token;
    }
    const fromEnv = source.tokenEnv ? env[source.tokenEnv]?.trim() : undefined;
    if (fromEnv) return JobToken.fromString(fromEnv, `environment variable ${source.tokenEnv}`);
    return JobToken.none();
  }

  /** Whether the job has a token at all. */
  get present(): boolean {
    return this.#bytes.byteLength > 0;
  }

  /** The raw bytes, for the wire (collective SubscribeRequest.job_token, frames, joins). */
  bytes(): Uint8Array {
    return this.#bytes;
  }

  /** The token as text, for places that carry strings (gRPC metadata, the coordinator's join). */
  text(): string {
    return Buffer.from(this.#bytes).toString('utf8');
  }

  /** Constant-time check of what a peer presented. */
  matches(presented: Uint8Array | string | undefined): boolean {
    return constantTimeEqual(this.#bytes, presented ?? new Uint8Array(0));
  }

  toString(): string {
    return this.present ? '[redacted job token]' : '[no job token]';
  }

  toJSON(): string {
    return this.toString();
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }
}

/**
 * The reason a peer's token is refused, for both sides' messages: says whether one was missing
 * or wrong, never what either value was.
 */
export function tokenRefusal(expected: JobToken, presented: Uint8Array | string | undefined): string | null {
  if (expected.matches(presented)) return null;
  const n = typeof presented === 'string' ? presented.length : (presented?.byteLength ?? 0);
  if (n === 0) return 'no job token presented (this job requires one)';
  if (!expected.present) return 'a job token was presented but this job has none';
  return 'the job token presented is not this job\'s';
}
