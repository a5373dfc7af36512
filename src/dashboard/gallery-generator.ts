/**
 * Fills the dashboard's gallery during a Parti run: when a checkpoint commits at the first step
 * at or after each multiple of `dashboard.gallery.everySteps`, a thread of the coordinator loads
 * that checkpoint's parameters and the run's trained tokenizer and samples one image per fixed
 * prompt (with cross-attention maps), which go into the RunStateStore. One generation at a time:
 * a checkpoint that comes while one runs waits (only the newest waits; older waiting ones are
 * skipped and counted), and no generation starts sooner than `minIntervalSeconds` after the last
 * one started (the newest due checkpoint waits for it). A failure is a warning in the event log,
 * never an exception.
 */
import { Worker } from 'node:worker_threads';
import type { GalleryConfig } from '../config/dashboard-schema.ts';
import { log } from '../observability/log.ts';
import type { TrainingMetrics } from '../observability/metrics.ts';
import type { GallerySource } from './gallery-source.ts';
import type { GalleryReply, GalleryRequest, GalleryThreadData } from './gallery-thread.ts';
import type { RunStateStore } from './run-state.ts';
import type { GalleryArchive } from './gallery-archive.ts';
import { listCheckpointSteps } from '../storage/checkpoint-load.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { openStore } from '../storage/open-store.ts';

const THREAD_URL = new URL('./gallery-thread.ts', import.meta.url).href;

/** Options of {@link GalleryGenerator}. */
export interface GalleryGeneratorOptions {
  /** Where the samples go (and warnings, as events). */
  store: RunStateStore;
  /** The config's `dashboard.gallery` (prompts, everySteps, attentionMaps). */
  gallery: GalleryConfig;
  /** The job: config, config hash, checkpoint store, tokenizer folder. */
  source: GallerySource;
  /** Counts generations by result and their durations (`parti_gallery_*`). */
  metrics?: TrainingMetrics;
  /** Also keeps each generation's samples in the job's store (best effort), for a restarted coordinator. */
  archive?: Pick<GalleryArchive, 'save'>;
  /** Nice value of the sampling thread (default 10): workers on the same machine keep the CPU. */
  niceness?: number;
  /** A generation that takes longer is abandoned (its thread stopped) and reported (default 10 min). */
  timeoutMs?: number;
}

/** What the generator has done, for tests and logs. */
export interface GalleryCounts {
  done: number;
  failed: number;
  /** Checkpoints that were due but replaced by a newer one while a generation ran. */
  skipped: number;
}

/** Generates gallery samples from committed checkpoints on a thread of its own; see the module comment. */
export class GalleryGenerator {
  readonly #o: GalleryGeneratorOptions;
  readonly #log = log.child({ role: 'coordinator', part: 'gallery' });
  #thread: Worker | null = null;
  #store: ObjectStore | null = null;
  #inFlight: { id: number; step: number; timer: NodeJS.Timeout } | null = null;
  #waiting: number | null = null;
  /** When the last generation started (ms), and the timer that starts the waiting one after the interval. */
  #lastStart = -Infinity;
  #intervalTimer: NodeJS.Timeout | null = null;
  #nextDue: number;
  #lastId = 0;
  #closed = false;
  readonly counts: GalleryCounts = { done: 0, failed: 0, skipped: 0 };
  #idle: (() => void)[] = [];

  constructor(options: GalleryGeneratorOptions) {
    this.#o = options;
    this.#nextDue = options.gallery.everySteps;
  }

  /**
   * Starts the sampling thread now and has it load the backend and the tokenizer (a few seconds),
   * so that the first due checkpoint is read before retention can delete it.
   */
  warm(): void {
    if (this.#closed || !this.enabled) return;
    try {
      this.#ensureThread().postMessage({ type: 'warm' } satisfies GalleryRequest);
    } catch (err) {
      this.#log.warn({ err: (err as Error).message }, 'gallery: cannot start the sampling thread; it is tried again at the first due checkpoint');
    }
  }

  /** The gallery is on: prompts and a period are configured. */
  get enabled(): boolean {
    return this.#o.gallery.prompts.length > 0 && this.#o.gallery.everySteps > 0;
  }

  /**
   * A checkpoint of `step` committed. It is sampled when it is the first commit at or after the
   * next multiple of everySteps (with checkpoints every 100 steps and a gallery every 150, steps
   * 200, 300, 500, 600...). Returns whether it was taken (started or waiting).
   */
  checkpointCommitted(step: number): boolean {
    if (this.#closed || !this.enabled || step < this.#nextDue) return false;
    const every = this.#o.gallery.everySteps;
    this.#nextDue = (Math.floor(step / every) + 1) * every;
    if (this.#waiting !== null) this.#skip(this.#waiting);
    this.#waiting = step;
    if (!this.#inFlight && !this.#intervalTimer) this.#next();
    return true;
  }

  /** Resolves when no generation runs or waits (tests; the end of a job). */
  idle(): Promise<void> {
    if (!this.#inFlight && this.#waiting === null) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Stops the thread; a generation in flight is abandoned. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#waiting !== null) this.#skip(this.#waiting);
    this.#waiting = null;
    if (this.#intervalTimer) clearTimeout(this.#intervalTimer);
    this.#intervalTimer = null;
    if (this.#inFlight) clearTimeout(this.#inFlight.timer);
    this.#inFlight = null;
    const t = this.#thread;
    this.#thread = null;
    this.#wakeIdle();
    if (t) await closeThread(t);
    await this.#store?.close().catch(() => {});
  }

  #skip(step: number, why = 'a newer checkpoint came while sampling'): void {
    this.counts.skipped++;
    this.#o.metrics?.galleryGenerationsTotal.inc({ result: 'skipped' });
    this.#log.info({ step }, `gallery: step ${step} skipped: ${why}`);
  }

  /** Whether the checkpoint of `step` is still committed (undefined: the store cannot say). */
  async #stillCommitted(step: number): Promise<boolean | undefined> {
    try {
      this.#store ??= openStore(this.#o.source.checkpointStore);
      return (await listCheckpointSteps(this.#store)).includes(step);
    } catch {
      return undefined;
    }
  }

  #ensureThread(): Worker {
    if (this.#thread) return this.#thread;
    const data: GalleryThreadData = { ...this.#o.source, niceness: this.#o.niceness ?? 10 };
    // The thread loads TypeScript through tsx, like the CLI; a worker thread does not inherit --import hooks.
    const tsx = import.meta.resolve('tsx/esm/api');
    const code = `(async () => { const { register } = await import(${JSON.stringify(tsx)}); register(); await import(${JSON.stringify(THREAD_URL)}); })();`;
    const t = new Worker(code, { eval: true, workerData: data });
    t.on('message', (reply: GalleryReply) => this.#onReply(reply));
    t.on('error', (err) => this.#threadGone(t, `the sampling thread failed: ${err.message.split('\n')[0]}`));
    t.on('exit', (code) => this.#threadGone(t, `the sampling thread exited (code ${code})`));
    t.unref();
    this.#thread = t;
    return t;
  }

  #start(step: number): void {
    const id = ++this.#lastId;
    this.#lastStart = Date.now();
    const timeoutMs = this.#o.timeoutMs ?? 600_000;
    const timer = setTimeout(() => {
      if (this.#inFlight?.id !== id) return;
      const t = this.#thread;
      this.#thread = null;
      this.#fail(id, step, `no samples within ${Math.round(timeoutMs / 1000)} s; the sampling thread was stopped`);
      void t?.terminate();
    }, timeoutMs);
    timer.unref();
    this.#inFlight = { id, step, timer };
    const g = this.#o.gallery;
    const req: GalleryRequest = { type: 'generate', id, step, prompts: [...g.prompts], attentionMaps: g.attentionMaps };
    try {
      this.#ensureThread().postMessage(req);
    } catch (err) {
      this.#fail(id, step, `cannot start the sampling thread: ${(err as Error).message}`);
    }
  }

  #onReply(reply: GalleryReply): void {
    const f = this.#inFlight;
    if (!f || f.id !== reply.id) return;
    if (reply.type === 'failed') {
      // Retention (checkpoint.keep) may delete a checkpoint before it is read, when checkpoints
      // come faster than samples: that one is skipped, not a failure; the next due one is sampled.
      clearTimeout(f.timer);
      // The listing gets a deadline of its own: a store that does not answer must not hold the
      // gallery (the generation's timer is gone, and every later checkpoint would only wait).
      const listMs = Math.min(this.#o.timeoutMs ?? 600_000, 60_000);
      let listTimer: NodeJS.Timeout | undefined;
      const late = new Promise<undefined>((resolve) => {
        listTimer = setTimeout(() => resolve(undefined), listMs);
        listTimer.unref();
      });
      void Promise.race([this.#stillCommitted(reply.step), late]).then((committed) => {
        clearTimeout(listTimer);
        if (this.#inFlight !== f) return;
        if (committed !== false) return this.#fail(reply.id, reply.step, reply.message);
        this.#inFlight = null;
        this.#skip(reply.step, 'retention deleted the checkpoint before it was read');
        this.#next();
      });
      return;
    }
    clearTimeout(f.timer);
    this.#inFlight = null;
    // One time for the whole step (the store's clock, read at its first item): the archive keeps
    // one per step, so items restored after a restart must carry the same time they were shown with.
    let time: number | undefined;
    for (const item of reply.items) {
      this.#o.store.addGalleryItem({ step: reply.step, ...item, ...(time !== undefined ? { time } : {}) });
      time ??= this.#o.store.gallery().at(-1)?.time;
    }
    this.#o.archive?.save(reply.step, reply.items, time);
    this.counts.done++;
    this.#o.metrics?.galleryGenerationsTotal.inc({ result: 'done' });
    this.#o.metrics?.galleryGenerationSeconds.observe(reply.ms / 1000);
    this.#log.info({ step: reply.step, prompts: reply.items.length, ms: Math.round(reply.ms) }, 'gallery samples generated');
    this.#next();
  }

  #fail(id: number, step: number, message: string): void {
    const f = this.#inFlight;
    if (!f || f.id !== id) return;
    clearTimeout(f.timer);
    this.#inFlight = null;
    this.counts.failed++;
    this.#o.metrics?.galleryGenerationsTotal.inc({ result: 'failed' });
    this.#log.warn({ step, err: message }, 'gallery samples failed');
    this.#o.store.recordEvent({ kind: 'warning', step, message: `gallery samples of step ${step} failed: ${message}` });
    this.#next();
  }

  #threadGone(t: Worker, why: string): void {
    if (this.#thread !== t) return;
    this.#thread = null;
    if (this.#inFlight) this.#fail(this.#inFlight.id, this.#inFlight.step, why);
  }

  /** Starts the waiting checkpoint's generation, now or once the minimum interval has passed. */
  #next(): void {
    const w = this.#waiting;
    if (w === null || this.#closed) {
      this.#waiting = null;
      this.#wakeIdle();
      return;
    }
    const wait = this.#lastStart + this.#o.gallery.minIntervalSeconds * 1000 - Date.now();
    if (wait > 0) {
      this.#intervalTimer ??= setTimeout(() => {
        this.#intervalTimer = null;
        this.#next();
      }, wait);
      this.#intervalTimer.unref();
      return;
    }
    this.#waiting = null;
    this.#start(w);
  }

  #wakeIdle(): void {
    if (this.#inFlight || this.#waiting !== null) return;
    const waiters = this.#idle;
    this.#idle = [];
    for (const w of waiters) w();
  }
}

/** How long a closing gallery waits for its thread to leave by itself before terminating it (ms). */
const THREAD_CLOSE_MS = 5_000;

/**
 * Asks the sampling thread to leave and waits for it; terminates it only if it has not left
 * within THREAD_CLOSE_MS (a sampling step that blocks that long). Terminating first would stop
 * it at any point, also inside zlib's set-up, which aborts the process in Node 20.
 */
async function closeThread(t: Worker): Promise<void> {
  const exited = new Promise<void>((resolve) => t.once('exit', () => resolve()));
  try {
    t.postMessage({ type: 'close' } satisfies GalleryRequest);
  } catch {
    // already gone
  }
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), THREAD_CLOSE_MS);
  });
  const how = await Promise.race([exited, late]);
  clearTimeout(timer);
  if (how === 'late') await t.terminate();
}
