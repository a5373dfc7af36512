import { createWriteStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, rmdir, stat, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import type { GetOptions, ObjectInfo, ObjectStore, PutOptions, StorageFailure } from './object-store.ts';
import { StorageError, checkKey, checkPrefix } from './storage-error.ts';
import { tracer } from '../observability/log.ts';

const trace = tracer('storage');

/** Temp files of interrupted puts carry this in their name; list() never shows them. */
const TEMP_MARK = '.parti-tmp-';

/** Options of a FileStore. */
export interface FileStoreOptions {
  /**
   * fsync each object before it is renamed into place (default true), so that a committed
   * checkpoint survives a machine crash, not only a process kill.
   */
  fsync?: boolean;
}

/**
 * An object store in a local folder (the embedded default: the run directory). A put writes a
 * temp file beside the target and renames it into place, so readers see nothing or all of it.
 */
export class FileStore implements ObjectStore {
  readonly url: string;
  readonly root: string;
  private readonly fsync: boolean;

  constructor(root: string, options: FileStoreOptions = {}) {
    this.root = path.resolve(root);
    this.url = pathToFileURL(this.root).href;
    this.fsync = options.fsync ?? true;
  }

  private file(op: string, key: string): string {
    checkKey(this.url, op, key);
    if (key.includes(TEMP_MARK)) throw new StorageError(this.url, op, key, 'invalid-key', `keys may not contain ${TEMP_MARK}`);
    return path.join(this.root, ...key.split('/'));
  }

  private fail(op: string, key: string, err: unknown): StorageError {
    const e = err as NodeJS.ErrnoException;
    const reason: StorageFailure =
      e?.code === 'ENOENT' || e?.code === 'ENOTDIR'
        ? 'not-found'
        : e?.code === 'EACCES' || e?.code === 'EPERM' || e?.code === 'EROFS'
          ? 'denied'
          : e?.name === 'AbortError'
            ? 'aborted'
            : 'other';
    return new StorageError(this.url, op, key, reason, e?.code ?? e?.message ?? String(err), { cause: err });
  }

  async get(key: string, options: GetOptions = {}): Promise<Buffer> {
    const file = this.file('get', key);
    let handle;
    try {
      handle = await open(file, 'r');
    } catch (err) {
      throw this.fail('get', key, err);
    }
    try {
      const size = (await handle.stat()).size;
      const start = options.start ?? 0;
      const end = Math.min(options.end ?? size - 1, size - 1);
      const length = Math.max(0, end - start + 1);
      const out = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        options.signal?.throwIfAborted();
        const { bytesRead } = await handle.read(out, done, length - done, start + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done === length ? out : out.subarray(0, done);
    } catch (err) {
      throw this.fail('get', key, err);
    } finally {
      await handle.close();
    }
  }

  async getStream(key: string, options: GetOptions = {}): Promise<Readable> {
    const file = this.file('get', key);
    // Open first so that a missing object rejects here rather than as a stream error later.
    let handle;
    try {
      handle = await open(file, 'r');
    } catch (err) {
      throw this.fail('get', key, err);
    }
    const size = (await handle.stat()).size;
    const start = options.start ?? 0;
    const end = Math.min(options.end ?? size - 1, size - 1);
    if (end < start) {
      await handle.close();
      return Readable.from([]);
    }
    // The stream owns the handle from here and closes it when it ends or fails.
    return handle.createReadStream({ start, end, signal: options.signal, highWaterMark: 1 << 20 });
  }

  async put(key: string, body: Buffer | Uint8Array | Readable, options: PutOptions = {}): Promise<void> {
    const file = this.file('put', key);
    const dir = path.dirname(file);
    const temp = path.join(dir, `${TEMP_MARK}${process.pid}-${randomBytes(6).toString('hex')}-${path.basename(file)}`);
    trace('put', { key, temp });
    try {
      options.signal?.throwIfAborted();
      await mkdir(dir, { recursive: true });
      if (body instanceof Readable) {
        await pipeline(body, createWriteStream(temp, { flags: 'wx' }), { signal: options.signal });
        if (this.fsync) await syncFile(temp);
      } else {
        const handle = await open(temp, 'wx');
        try {
          let done = 0;
          while (done < body.byteLength) {
            options.signal?.throwIfAborted();
            const { bytesWritten } = await handle.write(body, done, Math.min(body.byteLength - done, 64 << 20));
            done += bytesWritten;
          }
          if (this.fsync) await handle.sync();
        } finally {
          await handle.close();
        }
      }
      options.signal?.throwIfAborted();
      await rename(temp, file);
      if (this.fsync) await syncDir(dir);
    } catch (err) {
      await rm(temp, { force: true }).catch(() => {});
      throw this.fail('put', key, err);
    }
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const file = this.file('head', key);
    try {
      const s = await stat(file);
      if (!s.isFile()) return null;
      return { key, size: s.size, lastModified: s.mtime };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return null;
      throw this.fail('head', key, err);
    }
  }

  async list(prefix: string): Promise<ObjectInfo[]> {
    checkPrefix(this.url, prefix);
    const out: ObjectInfo[] = [];
    // Walk only the deepest folder that the prefix names in full.
    const slash = prefix.lastIndexOf('/');
    const base = slash >= 0 ? prefix.slice(0, slash) : '';
    try {
      await this.walk(base, prefix, out, false);
    } catch (err) {
      throw this.fail('list', prefix, err);
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  private async walk(dirKey: string, prefix: string, out: ObjectInfo[], temps: boolean): Promise<void> {
    const dir = dirKey ? path.join(this.root, ...dirKey.split('/')) : this.root;
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw err;
    }
    for (const entry of entries) {
      const key = dirKey ? `${dirKey}/${entry.name}` : entry.name;
      if (entry.isDirectory()) {
        // Descend only where keys below may still start with the prefix.
        if (prefix.startsWith(`${key}/`) || key.startsWith(prefix)) await this.walk(key, prefix, out, temps);
      } else if (entry.isFile() && key.startsWith(prefix) && entry.name.includes(TEMP_MARK) === temps) {
        try {
          const s = await stat(path.join(dir, entry.name));
          out.push({ key, size: s.size, lastModified: s.mtime });
        } catch (err) {
          // Deleted (or renamed into place) while we listed: not there any more.
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
      }
    }
  }

  async delete(key: string): Promise<void> {
    const file = this.file('delete', key);
    try {
      await unlink(file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw this.fail('delete', key, err);
    }
    await this.pruneDirs(path.dirname(file));
  }

  /** Removes folders left empty by deletes, up to (not including) the root. */
  private async pruneDirs(dir: string): Promise<void> {
    while (dir.startsWith(this.root + path.sep)) {
      try {
        await rmdir(dir);
      } catch {
        return; // not empty, gone, or in use: fine
      }
      dir = path.dirname(dir);
    }
  }

  async cleanupIncomplete(prefix: string, olderThan: Date, only?: (key: string) => boolean): Promise<number> {
    checkPrefix(this.url, prefix);
    const temps: ObjectInfo[] = [];
    const slash = prefix.lastIndexOf('/');
    try {
      await this.walk(slash >= 0 ? prefix.slice(0, slash) : '', prefix, temps, true);
    } catch (err) {
      throw this.fail('cleanup', prefix, err);
    }
    let removed = 0;
    for (const t of temps) {
      if ((t.lastModified && t.lastModified >= olderThan) || (only && !only(t.key))) continue;
      const file = path.join(this.root, ...t.key.split('/'));
      await unlink(file).then(
        () => removed++,
        () => {},
      );
      await this.pruneDirs(path.dirname(file));
    }
    trace('cleanup', { prefix, removed });
    return removed;
  }

  async close(): Promise<void> {}
}

async function syncFile(file: string): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** fsync of the folder makes the rename itself durable. Some filesystems refuse it: then skip. */
async function syncDir(dir: string): Promise<void> {
  let handle;
  try {
    handle = await open(dir, 'r');
    await handle.sync();
  } catch {
    // EISDIR/EINVAL/EPERM on some platforms: the rename is still atomic, only less durable.
  } finally {
    await handle?.close().catch(() => {});
  }
}
