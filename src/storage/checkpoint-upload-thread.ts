import { parentPort, workerData } from 'node:worker_threads';
import { setPriority } from 'node:os';
import type { ObjectStore } from './object-store.ts';
import { openStore, type OpenStoreOptions } from './open-store.ts';
import { writeCheckpointObjects, type SnapshotObject } from './checkpoint-writer.ts';
import { PartiError } from '../errors.ts';
import { StorageError } from './storage-error.ts';

/**
 * The CheckpointWriter's upload thread: hashes and uploads a snapshot off the training thread, so
 * that sha256 and the store's own work do not take CPU time from the step loop.
 */
export interface UploadRequest {
  type: 'save';
  id: number;
  url: string;
  storeOptions?: OpenStoreOptions;
  step: number;
  /** The save attempt whose keys the objects go to (writeCheckpointObjects); absent: the step's keys. */
  attempt?: string;
  objects: SnapshotObject[];
  concurrency: number;
  /**
   * The objects' views are the caller's LIVE state in shared memory: copy them into this thread's
   * own buffer first (answering `copied`), then hash and upload the copy. The caller changes the
   * state only after `copied`.
   */
  copy?: boolean;
}

export type UploadReply =
  | { type: 'copied'; id: number }
  | { type: 'done'; id: number; refs: import('./checkpoint-manifest.ts').CheckpointObjectRef[] }
  | { type: 'failed'; id: number; message: string; code: string; reason?: string }
  | { type: 'pong' };

// Linux keeps a nice value per thread: this lowers only the upload thread's, so that hashing and
// uploading yield the CPU to the training thread when cores are short. Best effort elsewhere.
const niceness = (workerData as { niceness?: number } | undefined)?.niceness ?? 0;
if (niceness > 0) {
  try {
    setPriority(0, niceness);
  } catch {
    // not permitted or not supported: run at normal priority
  }
}

let store: ObjectStore | null = null;
let storeUrl = '';
/** This thread's snapshot copy, reused from save to save (one save at a time), grown when needed. */
let copyBuffer = new Uint8Array(0);

/** Copies the objects' views into copyBuffer, one after the other; returns the objects over the copy. */
function copyObjects(objects: readonly SnapshotObject[]): SnapshotObject[] {
  const views = (o: SnapshotObject) => (ArrayBuffer.isView(o.bytes) ? [o.bytes] : [...(o.bytes as readonly ArrayBufferView[])]);
  const total = objects.reduce((n, o) => n + views(o).reduce((m, v) => m + v.byteLength, 0), 0);
  if (copyBuffer.byteLength < total) copyBuffer = new Uint8Array(total);
  let at = 0;
  return objects.map((o) => ({
    name: o.name,
    bytes: views(o).map((v) => {
      const dst = copyBuffer.subarray(at, at + v.byteLength);
      dst.set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
      at += v.byteLength;
      return dst;
    }),
  }));
}

parentPort!.on('message', (req: UploadRequest | { type: 'close' } | { type: 'ping' }) => {
  if (req.type === 'ping') {
    parentPort!.postMessage({ type: 'pong' } satisfies UploadReply);
    return;
  }
  if (req.type === 'close') {
    void (store?.close() ?? Promise.resolve()).finally(() => process.exit(0));
    return;
  }
  void (async () => {
    try {
      if (!store || storeUrl !== req.url) {
        await store?.close();
        store = openStore(req.url, req.storeOptions);
        storeUrl = req.url;
      }
      let objects = req.objects;
      if (req.copy) {
        objects = copyObjects(req.objects);
        parentPort!.postMessage({ type: 'copied', id: req.id } satisfies UploadReply);
      }
      const refs = await writeCheckpointObjects(store, req.step, objects, req.concurrency, undefined, req.attempt);
      parentPort!.postMessage({ type: 'done', id: req.id, refs } satisfies UploadReply);
    } catch (err) {
      const e = PartiError.from(err, 'checkpoint');
      parentPort!.postMessage({
        type: 'failed',
        id: req.id,
        message: e.message,
        code: e.code,
        reason: err instanceof StorageError ? err.reason : undefined,
      } satisfies UploadReply);
    }
  })();
});
