import { PartiError } from '../errors.ts';
import type { StorageFailure } from './object-store.ts';

/**
 * An object-store operation that failed for good (after retries). `code` is always 'storage';
 * `reason` says why, for callers that count or branch on it; `key` is the object (or prefix).
 * The message names the store URL and key and never carries credentials.
 */
export class StorageError extends PartiError {
  readonly reason: StorageFailure;
  readonly key: string;
  constructor(storeUrl: string, op: string, key: string, reason: StorageFailure, detail: string, options?: { cause?: unknown }) {
    super('storage', `${joinUrl(storeUrl, key)}: ${op} failed (${reason}): ${detail}`, options);
    this.name = 'StorageError';
    this.reason = reason;
    this.key = key;
  }
}

/** `file:///a/b` + `c/d` → `file:///a/b/c/d`, for messages. */
export function joinUrl(base: string, key: string): string {
  if (!key) return base;
  return base.endsWith('/') ? base + key : `${base}/${key}`;
}

/**
 * Keys are relative, `/`-separated, without empty, `.` or `..` segments, so that a key can never
 * name something outside the store's root (on disk or in the bucket).
 */
export function checkKey(storeUrl: string, op: string, key: string, allowEmpty = false): void {
  if (allowEmpty && key === '') return;
  const bad =
    key.length === 0 ||
    key.length > 1024 ||
    key.startsWith('/') ||
    key.includes('\\') ||
    key.includes('\0') ||
    key.split('/').some((part) => part === '' || part === '.' || part === '..');
  if (bad) throw new StorageError(storeUrl, op, key, 'invalid-key', 'keys are relative, /-separated, with no empty, . or .. segments');
}

/** A prefix for list(): like a key but may be empty or end with `/`. */
export function checkPrefix(storeUrl: string, prefix: string): void {
  if (prefix === '') return;
  checkKey(storeUrl, 'list', prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
}
