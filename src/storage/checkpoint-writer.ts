import { Worker } from 'node:worker_threads';
import type { ObjectStore } from './object-store.ts';
import { openStore, type OpenStoreOptions } from './open-store.ts';
import { writeCheckpointObject, type ObjectBytes } from './checkpoint-commit.ts';
import { newSaveAttempt, type CheckpointObjectRef } from './checkpoint-manifest.ts';
import type { UploadReply, UploadRequest } from './checkpoint-upload-thread.ts';
import { PartiError, type PartiErrorCode } from '../errors.ts';
import { log } from '../observability/log.ts';

/** One object of a host-memory snapshot. */
export interface SnapshotObject {
  /** Name within the checkpoint (`params.bin`, `optimizer-rank-0.bin`). */
  name: string;
  bytes: ObjectBytes;
}

/**
 * Writes a step's objects, `concurrency` at a time, and returns their manifest entries in order.
 * With `attempt` (newSaveAttempt()) they go to that save attempt's own keys (see
 * attemptObjectKey); without, to the step's (the older layout).
 */
export async function writeCheckpointObjects(
  store: ObjectStore,
  step: number,
  objects: readonly SnapshotObject[],
  concurrency = 4,
  signal?: AbortSignal,
  attempt?: string,
): Promise<CheckpointObjectRef[]> {
  const refs: CheckpointObjectRef[] = new Array(objects.length);
  let next = 0;
  const lanes = Array.from({ length: Math.max(1, Math.min(concurrency, objects.length)) }, async () => {
    while (next < objects.length) {
      const i = next++;
      refs[i] = await writeCheckpointObject(store, step, objects[i]!.name, objects[i]!.bytes, { signal, ...(attempt === undefined ? {} : { attempt }) });
    }
  });
  await Promise.all(lanes);
  return refs;
}

/** Options of a CheckpointWriter. */
export interface CheckpointWriterOptions {
  /** The checkpoint store's URL (`file:///…`, a path, `s3://bucket/prefix`). */
  url: string;
  /** Store options (part size, attempts...). Must be plain data when `thread` is on. */
  storeOptions?: OpenStoreOptions;
  /**
   * Hash and upload in a worker thread (default true), so that the training thread only pays for
   * the snapshot. Off: the upload runs on this thread's event loop (still asynchronous).
   */
  thread?: boolean;
  /** Objects uploaded at once (default 4). */
  concurrency?: number;
  /**
   * Hand the snapshot's memory to the upload thread instead of copying it (default true). The
   * arrays passed to save() are unusable afterwards; only arrays that own their whole
   * ArrayBuffer are moved, others are copied.
   */
  transfer?: boolean;
  /**
   * Nice value of the upload thread (default 10; 0 leaves it alone). On Linux it applies to that
   * thread only, so the upload yields the CPU to training when cores are short.
   */
  niceness?: number;
  /**
   * Where objects go. `attempt` (default): each save writes keys of its own
   * (`steps/<step>/_<attempt>/…`, see attemptObjectKey), so that an upload of an abandoned save
   * still in flight can never replace an object of a later save of the same step. `step`:
   * `steps/<step>/<name>`, shared by every save of that step (the older layout; the coordinator
   * and the loader accept both, isCheckpointObjectKey).
   */
  keyLayout?: 'step' | 'attempt';
}

/** The writer's lifecycle. */
export type CheckpointWriterState = { state: 'idle' } | { state: 'saving'; step: number } | { state: 'closed' };

/** A save that was started. */
export interface SaveTicket {
  step: number;
  /** The save attempt whose keys the objects go to (keyLayout `attempt`), else null. */
  attempt: string | null;
  /**
   * Resolves once the writer no longer reads the arrays passed to save() (never rejects): at
   * once, unless they were handed over with `copyInThread`, then when the upload thread has
   * copied them (or the save failed). The caller may change them from then on.
   */
  copied: Promise<void>;
  /** The objects' manifest entries once all have landed; rejects if the save failed. */
  done: Promise<CheckpointObjectRef[]>;
}

/** Options of one save. */
export interface SaveOptions {
  /**
   * The arrays are the caller's live state, in shared memory (SharedArrayBuffer): the upload
   * thread copies them into a buffer of its own while the caller goes on, and `copied` says when
   * the caller may change them again. Without the thread (or for arrays not in shared memory) they
   * are copied here, at once.
   */
  copyInThread?: boolean;
}

/** A save that failed: reported here, in the log and by the ticket; the next save tries again. */
export interface SaveFailure {
  step: number;
  error: PartiError;
}

const THREAD_URL = new URL('./checkpoint-upload-thread.ts', import.meta.url).href;

/**
 * Saves checkpoint objects in the background (on a worker): takes a host-memory snapshot and
 * uploads it while training goes on. At most one save is in flight: save() returns null while
 * one is, and that checkpoint step is skipped. A failed save never commits anything (only the
 * coordinator's commitManifest does); it is reported and the next checkpoint step saves afresh.
 */
export class CheckpointWriter {
  private current: CheckpointWriterState = { state: 'idle' };
  private failure: SaveFailure | null = null;
  private worker: Worker | null = null;
  private store: ObjectStore | null = null;
  private nextId = 1;
  private pending = new Map<number, { resolve: (refs: CheckpointObjectRef[]) => void; reject: (err: PartiError) => void; copied: () => void }>();
  private inFlight: Promise<unknown> = Promise.resolve();
  private readonly options: Required<Omit<CheckpointWriterOptions, 'storeOptions'>> & { storeOptions?: OpenStoreOptions };

  /** Starts nothing: the upload thread starts with the first save (or start()). */
  constructor(options: CheckpointWriterOptions) {
    this.options = { thread: true, concurrency: 4, transfer: true, niceness: 10, keyLayout: 'attempt', ...options };
  }

  /**
   * Whether the upload thread exists: false until the first save (or start()) and after close(),
   * so that a worker that never checkpoints pays for no thread.
   */
  get threadRunning(): boolean {
    return this.worker !== null;
  }

  get state(): CheckpointWriterState {
    return this.current;
  }

  /** The last save that failed, until a later save succeeds. */
  get lastFailure(): SaveFailure | null {
    return this.failure;
  }

  /**
   * Starts saving `objects` as step `step`, or returns null when a save is still in flight. The
   * caller must not change the arrays afterwards (they are the snapshot).
   */
  save(step: number, objects: readonly SnapshotObject[], saveOptions: SaveOptions = {}): SaveTicket | null {
    if (this.current.state === 'closed') throw new PartiError('illegal-state', 'CheckpointWriter.save: the writer is closed');
    if (this.current.state === 'saving') return null;
    this.current = { state: 'saving', step };
    let copied: () => void = () => {};
    const copiedPromise = new Promise<void>((resolve) => (copied = resolve));
    const viewsOf = (o: SnapshotObject) => (ArrayBuffer.isView(o.bytes) ? [o.bytes] : [...(o.bytes as readonly ArrayBufferView[])]);
    let inThread = false;
    if (saveOptions.copyInThread) {
      // Arrays in shared memory go to the thread, which copies them; others are copied here and now.
      objects = objects.map((o) => ({
        name: o.name,
        bytes: viewsOf(o).map((v) => {
          if (this.options.thread && v.buffer instanceof SharedArrayBuffer) {
            inThread = true;
            return v;
          }
          return new Uint8Array(v.buffer, v.byteOffset, v.byteLength).slice();
        }),
      }));
    }
    if (!inThread) copied();
    const attempt = this.options.keyLayout === 'attempt' ? newSaveAttempt() : null;
    const done = (this.options.thread ? this.saveInThread(step, attempt, objects, inThread, copied) : this.saveHere(step, attempt, objects)).then(
      (refs) => {
        this.failure = null;
        return refs;
      },
      (err: unknown) => {
        const error = PartiError.from(err, 'checkpoint');
        this.failure = { step, error };
        log.warn({ step, err: error.message }, 'checkpoint save failed; the next checkpoint step saves again');
        throw error;
      },
    );
    this.inFlight = done.then(
      () => {},
      () => {},
    );
    void this.inFlight.then(() => {
      if (this.current.state === 'saving') this.current = { state: 'idle' };
    });
    // A caller that drops the ticket must not cause an unhandled rejection: the failure is reported above.
    done.catch(() => {});
    // However the save ends, the thread no longer reads the arrays.
    void this.inFlight.then(copied);
    return { step, attempt, copied: copiedPromise, done };
  }

  /**
   * Optional: starts the upload thread now and resolves once it has loaded, for a caller that
   * knows it will save and wants the first save not to wait for the thread to load. Saves start
   * the thread themselves, so a process that may never save should not call this. A no-op
   * without a thread.
   */
  async start(): Promise<void> {
    if (!this.options.thread || this.current.state === 'closed') return;
    this.worker ??= this.startWorker();
    const worker = this.worker;
    worker.ref();
    try {
      await new Promise<void>((resolve, reject) => {
        const onMessage = (m: UploadReply) => {
          if (m.type !== 'pong') return;
          worker.off('message', onMessage);
          worker.off('exit', onExit);
          resolve();
        };
        const onExit = (code: number) => reject(new PartiError('checkpoint', `checkpoint upload thread exited (${code}) while starting`));
        worker.on('message', onMessage);
        worker.once('exit', onExit);
        worker.postMessage({ type: 'ping' });
      });
    } finally {
      if (this.current.state !== 'saving') worker.unref();
    }
  }

  /** Resolves when no save is in flight. */
  async whenIdle(): Promise<void> {
    await this.inFlight;
  }

  /** Waits for the save in flight, then stops the upload thread. */
  async close(): Promise<void> {
    if (this.current.state === 'closed') return;
    await this.inFlight;
    this.current = { state: 'closed' };
    await this.store?.close();
    if (this.worker) {
      const w = this.worker;
      this.worker = null;
      const exited = new Promise<void>((resolve) => w.once('exit', () => resolve()));
      w.postMessage({ type: 'close' });
      const timer = setTimeout(() => void w.terminate(), 5000);
      await exited;
      clearTimeout(timer);
    }
  }

  private async saveHere(step: number, attempt: string | null, objects: readonly SnapshotObject[]): Promise<CheckpointObjectRef[]> {
    this.store ??= openStore(this.options.url, this.options.storeOptions);
    return writeCheckpointObjects(this.store, step, objects, this.options.concurrency, undefined, attempt ?? undefined);
  }

  private startWorker(): Worker {
    // The thread loads TypeScript through tsx, like the CLI (bin/parti.mjs); a worker does not
    // inherit the parent's --import hooks.
    const tsx = import.meta.resolve('tsx/esm/api');
    const code = `(async () => { const { register } = await import(${JSON.stringify(tsx)}); register(); await import(${JSON.stringify(THREAD_URL)}); })();`;
    const worker = new Worker(code, { eval: true, workerData: { niceness: this.options.niceness } });
    worker.on('message', (reply: UploadReply) => {
      if (reply.type === 'pong') return;
      const waiter = this.pending.get(reply.id);
      if (!waiter) return;
      if (reply.type === 'copied') {
        waiter.copied();
        return;
      }
      this.pending.delete(reply.id);
      waiter.copied();
      if (reply.type === 'done') waiter.resolve(reply.refs);
      else waiter.reject(new PartiError(reply.code as PartiErrorCode, reply.message));
    });
    const fail = (why: string) => {
      if (this.worker === worker) this.worker = null;
      for (const [id, waiter] of this.pending) {
        this.pending.delete(id);
        waiter.copied();
        waiter.reject(new PartiError('checkpoint', `checkpoint upload thread ${why}`));
      }
    };
    worker.on('error', (err) => fail(`failed: ${err.message}`));
    worker.on('exit', (code) => fail(`exited (${code})`));
    // The thread must not keep the process alive on its own.
    worker.unref();
    return worker;
  }

  private saveInThread(step: number, attempt: string | null, objects: readonly SnapshotObject[], copy = false, copied: () => void = () => {}): Promise<CheckpointObjectRef[]> {
    const id = this.nextId++;
    const plain = objects.map((o) => ({
      name: o.name,
      bytes: ArrayBuffer.isView(o.bytes) ? [o.bytes] : [...(o.bytes as readonly ArrayBufferView[])],
    }));
    const transfer: ArrayBuffer[] = [];
    if (this.options.transfer && !copy) {
      const seen = new Set<ArrayBuffer>();
      for (const o of plain)
        for (const v of o.bytes) {
          const buf = v.buffer;
          // Only buffers the view owns whole: moving a shared one (Node's Buffer pool) would break others.
          if (buf instanceof ArrayBuffer && v.byteOffset === 0 && v.byteLength === buf.byteLength && !seen.has(buf)) {
            seen.add(buf);
            transfer.push(buf);
          }
        }
    }
    const request: UploadRequest = {
      type: 'save',
      id,
      url: this.options.url,
      storeOptions: this.options.storeOptions,
      step,
      objects: plain,
      concurrency: this.options.concurrency,
      ...(attempt === null ? {} : { attempt }),
      ...(copy ? { copy: true } : {}),
    };
    return new Promise<CheckpointObjectRef[]>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, copied });
      try {
        // The first save starts the thread (messages wait in its port until it has loaded); one
        // that cannot start fails this save, and the next save tries again.
        this.worker ??= this.startWorker();
        // Keep the process alive while a save is in flight, and not longer.
        this.worker.ref();
        this.worker.postMessage(request, transfer);
      } catch (err) {
        this.pending.delete(id);
        reject(new PartiError('checkpoint', `checkpoint upload thread: cannot start the save of step ${step}: ${(err as Error).message}`));
      }
    }).finally(() => this.worker?.unref());
  }
}
