import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ObjectStore } from './object-store.ts';
import { FileStore, type FileStoreOptions } from './file-store.ts';
import { S3Store, type S3StoreOptions } from './s3-store.ts';
import { PartiError } from '../errors.ts';

/** Options for whichever store a URL names. */
export interface OpenStoreOptions {
  file?: FileStoreOptions;
  s3?: S3StoreOptions;
}

/**
 * Opens the store a URL names: `file:///abs/dir` or a plain path (relative to the working
 * folder) for a FileStore, `s3://bucket/prefix` for an S3Store.
 */
export function openStore(url: string, options: OpenStoreOptions = {}): ObjectStore {
  if (url.startsWith('s3://')) return new S3Store(url, options.s3);
  if (url.startsWith('file:')) {
    let dir: string;
    try {
      dir = fileURLToPath(url);
    } catch (err) {
      throw new PartiError('storage', `${url}: not a valid file:// URL (${(err as Error).message})`);
    }
    return new FileStore(dir, options.file);
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) throw new PartiError('storage', `${url}: unsupported store URL (use file:///dir, a path, or s3://bucket/prefix)`);
  if (!url) throw new PartiError('storage', 'empty store URL (use file:///dir, a path, or s3://bucket/prefix)');
  return new FileStore(path.resolve(url), options.file);
}
