import type { Readable } from 'node:stream';

/**
 * One interface over the object stores parti uses for data shards and checkpoints:
 * `file://` (a local folder, the embedded default) and `s3://bucket/prefix` (any S3-compatible store).
 * Keys are relative to the store's root, with `/` separators. Implementations retry transient
 * failures themselves and throw PartiError('storage') with the key in the message otherwise.
 */
export interface ObjectInfo {
  key: string;
  size: number;
  lastModified?: Date;
}

export interface GetOptions {
  /** First byte to read (inclusive). */
  start?: number;
  /** Last byte to read (inclusive). */
  end?: number;
  signal?: AbortSignal;
}

export interface PutOptions {
  signal?: AbortSignal;
  contentType?: string;
}

/** Why an object operation failed, for callers that count or branch on it. */
export type StorageFailure =
  | 'not-found'
  | 'denied'
  | 'timeout'
  | 'network'
  | 'server'
  /** The key is not a relative `/`-separated path (empty, `..`, leading `/`...). */
  | 'invalid-key'
  | 'aborted'
  | 'other';

export interface ObjectStore {
  /** The store's URL, without credentials (safe to log). */
  readonly url: string;
  /** Reads a whole object (or a byte range of it). */
  get(key: string, options?: GetOptions): Promise<Buffer>;
  /** Streams an object (or a range); resumes an interrupted read with a ranged request. */
  getStream(key: string, options?: GetOptions): Promise<Readable>;
  /** Writes an object; readers see either nothing or the whole object, never a part. */
  put(key: string, body: Buffer | Uint8Array | Readable, options?: PutOptions): Promise<void>;
  /** Size and date of an object, or null when there is none. */
  head(key: string): Promise<ObjectInfo | null>;
  /** Every object whose key starts with prefix, in key order. */
  list(prefix: string): Promise<ObjectInfo[]>;
  /** Deletes an object; deleting a missing object is not an error. */
  delete(key: string): Promise<void>;
  /**
   * Removes what interrupted writes left under prefix and that started before `olderThan`:
   * temp files (file://) or multipart uploads never completed (s3://). `only`, when given, picks
   * by the key being written (a temp file's own key on file://). Returns how many it removed.
   * Call it only where no write may still be running (or with a safe `olderThan`).
   */
  cleanupIncomplete(prefix: string, olderThan: Date, only?: (key: string) => boolean): Promise<number>;
  /** Releases sockets and handles. The store must not be used afterwards. */
  close(): Promise<void>;
}
