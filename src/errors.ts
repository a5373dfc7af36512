/**
 * The one error type parti throws on purpose. `code` is a closed set, so callers (the CLI, gRPC
 * status mapping, HTTP answers) can branch on it; `message` is a single line meant for a person.
 */
export type PartiErrorCode =
  /** A config file or config field is invalid. The message names the field path. */
  | 'config'
  /** A command-line flag or argument is invalid. The message names the flag. */
  | 'usage'
  /** Input data (shard, sample, image, caption) is bad. */
  | 'data'
  /** A checkpoint is missing, foreign or corrupt. */
  | 'checkpoint'
  /** An object store operation failed (after retries). */
  | 'storage'
  /** A collective was aborted: membership changed, a peer died, or a deadline passed. */
  | 'collective-aborted'
  /** A deadline passed. */
  | 'deadline'
  /** A peer was refused: wrong job id, config hash, token or epoch. */
  | 'refused'
  /** The backend (tfjs) cannot do what was asked. */
  | 'backend'
  /** A wrong lifecycle transition: a bug, the message says the state. */
  | 'illegal-state'
  /** Anything else that is our fault. */
  | 'internal';

export class PartiError extends Error {
  readonly code: PartiErrorCode;
  constructor(code: PartiErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PartiError';
    this.code = code;
  }

  /** Wraps anything thrown into a PartiError, keeping PartiErrors as they are. */
  static from(err: unknown, code: PartiErrorCode = 'internal'): PartiError {
    if (err instanceof PartiError) return err;
    const message = err instanceof Error ? err.message : String(err);
    return new PartiError(code, message, { cause: err });
  }
}

/** Throws a usage error that names the flag, e.g. `--top-k: must be an integer >= 0, got -1`. */
export function usageError(flag: string, what: string): PartiError {
  return new PartiError('usage', `${flag}: ${what}`);
}
