/**
 * The gallery in the job's object store (the checkpoint store), so that a restarted coordinator,
 * or one serving a finished job again, shows the samples of earlier steps at once.
 *
 * Layout, beside `manifests/` and `steps/` (which the checkpoint code alone lists, prunes and
 * loads: nothing here matches `isCheckpointObjectKey` or `stepOfManifestKey`):
 *
 *     gallery/000000000200/index.json            the step's samples (written last)
 *     gallery/000000000200/<write>/0.png         the sample of prompt 0
 *     gallery/000000000200/<write>/0-a3.png      its attention map for text token 3
 *
 * One index per step names the PNGs of one write (`<write>`: a folder of its own per save, so a
 * step sampled again never overwrites a PNG an older index names); the PNGs are put first and the
 * index last, and a put is all or nothing, so a reader sees the old index, the new one, or none.
 * The loader takes an item only when its index parses and each of its PNGs is there with the
 * size the index says; anything else is skipped with a warning naming the key. Saving is best
 * effort: a failure is logged and counted (`parti_gallery_store_errors_total{op="write"}`), never
 * thrown into the coordinator.
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { log } from '../observability/log.ts';
import type { TrainingMetrics } from '../observability/metrics.ts';
import { padStep } from '../storage/checkpoint-manifest.ts';
import type { ObjectInfo, ObjectStore } from '../storage/object-store.ts';
import type { GallerySample, RunStateStore } from './run-state.ts';

export const GALLERY_PREFIX = 'gallery/';
export const GALLERY_FORMAT = 'parti-gallery';
export const GALLERY_VERSION = 1;

/** Key of the index of the gallery samples of `step`. */
export function galleryIndexKey(step: number): string {
  return `${GALLERY_PREFIX}${padStep(step)}/index.json`;
}

/** The step a gallery index key names, or null for any other key. */
export function stepOfGalleryIndexKey(key: string): number | null {
  const m = /^gallery\/(\d{12})\/index\.json$/.exec(key);
  return m ? Number(m[1]) : null;
}

/** A PNG's key relative to its step folder: `<write>/<file>.png`, nothing else (no `..`, no `/` more). */
const pngNameSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}\/[A-Za-z0-9_-]{1,64}\.png$/);
const pngRefSchema = z.strictObject({ name: pngNameSchema, size: z.number().int().min(1) });

export const galleryIndexSchema = z.strictObject({
  format: z.literal(GALLERY_FORMAT),
  version: z.literal(GALLERY_VERSION),
  step: z.number().int().min(0),
  /** configHash of the job that sampled them: another config's samples are not this job's. */
  configHash: z.string(),
  /** When the samples were made, Unix ms. */
  time: z.number(),
  items: z.array(
    z.strictObject({
      prompt: z.string(),
      width: z.number().int().min(1).optional(),
      height: z.number().int().min(1).optional(),
      image: pngRefSchema,
      attention: z.array(z.strictObject({ token: z.string(), image: pngRefSchema })),
    }),
  ),
});
export type GalleryIndex = z.infer<typeof galleryIndexSchema>;

/** One sample as saved: what RunStateStore.addGalleryItem takes, without the step. */
export type GallerySampleData = Omit<GallerySample, 'step' | 'time'>;

/** A gallery item read back, ready for RunStateStore.addGalleryItem (with its original time). */
export type LoadedGallerySample = GallerySample & { time: number };

/** What {@link loadGallery} found. */
export interface GalleryLoadResult {
  /** Oldest first (by step, then prompt order), at most `keep`. */
  samples: LoadedGallerySample[];
  /** Items or indexes skipped as corrupt or incomplete: the key and why, one line. */
  skipped: { key: string; reason: string }[];
  /** Steps skipped because another config sampled them, or they are newer than `maxStep`. */
  ignoredSteps: number[];
  /** The deadline passed before every step was read: `samples` holds the newest ones read. */
  late: boolean;
}

/** Options of {@link loadGallery}. */
export interface GalleryLoadOptions {
  /** Items kept (config `dashboard.gallery.keep`): only the newest this many are read. */
  keep: number;
  /** Only samples of this config hash count. */
  configHash: string;
  /**
   * Steps after this one are skipped: the job went back to an earlier checkpoint, so samples of
   * later steps come from a history that no longer counts (like the dashboard's step history).
   */
  maxStep?: number;
  /** Give up reading after this long, keeping what was read (default 15 s). */
  timeoutMs?: number;
}

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
/** Saves waiting for the store at most; later ones are dropped (and counted) until it catches up. */
const MAX_QUEUED_SAVES = 4;
/** PNG puts of one save that run at once (a step with 4 prompts and their attention maps is ~80). */
const PUT_CONCURRENCY = 8;

/**
 * Writes the samples of `step`: the PNGs in a write folder of their own, then the index, then
 * (best effort) the PNGs of older writes of the same step. Throws on a failed put (the caller
 * counts it); `signal` aborts the puts. Returns the index key.
 */
export async function saveGalleryStep(
  store: ObjectStore,
  step: number,
  samples: readonly GallerySampleData[],
  meta: { configHash: string; time: number },
  signal?: AbortSignal,
): Promise<string> {
  const write = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  const folder = `${GALLERY_PREFIX}${padStep(step)}/`;
  const puts: { name: string; png: Uint8Array }[] = [];
  const items: GalleryIndex['items'] = samples.map((s, i) => {
    const image = { name: `${write}/${i}.png`, size: s.png.byteLength };
    puts.push({ name: image.name, png: s.png });
    const attention = (s.attention ?? []).map((a, j) => {
      const ref = { name: `${write}/${i}-a${j}.png`, size: a.png.byteLength };
      puts.push({ name: ref.name, png: a.png });
      return { token: a.token, image: ref };
    });
    return { prompt: s.prompt, ...(s.width !== undefined ? { width: s.width } : {}), ...(s.height !== undefined ? { height: s.height } : {}), image, attention };
  });
  let next = 0;
  const putOne = async (): Promise<void> => {
    while (next < puts.length) {
      const p = puts[next++]!;
      await store.put(folder + p.name, p.png, { contentType: 'image/png', ...(signal ? { signal } : {}) });
    }
  };
  await Promise.all(Array.from({ length: Math.min(PUT_CONCURRENCY, puts.length) }, putOne));
  const index: GalleryIndex = { format: GALLERY_FORMAT, version: GALLERY_VERSION, step, configHash: meta.configHash, time: meta.time, items };
  const key = galleryIndexKey(step);
  await store.put(key, Buffer.from(JSON.stringify(index)), { contentType: 'application/json', ...(signal ? { signal } : {}) });
  // The step sampled before (a job resumed from an earlier checkpoint): the old write's PNGs are
  // no longer named by any index. A failure here leaves them until the step is saved again.
  try {
    const keep = new Set([key, ...puts.map((p) => folder + p.name)]);
    for (const o of await store.list(folder)) if (!keep.has(o.key)) await store.delete(o.key);
  } catch (err) {
    log.debug({ step, err: (err as Error).message }, 'gallery: older PNGs of the step not removed');
  }
  return key;
}

/**
 * Reads back the newest `keep` gallery items of the store (see the module comment for what is
 * taken and what is skipped). Never throws for an item; a store that cannot be listed throws.
 */
export async function loadGallery(store: ObjectStore, options: GalleryLoadOptions): Promise<GalleryLoadResult> {
  const result: GalleryLoadResult = { samples: [], skipped: [], ignoredSteps: [], late: false };
  if (options.keep <= 0) return result;
  const timeoutMs = options.timeoutMs ?? 15_000;
  const signal = AbortSignal.timeout(timeoutMs);
  const deadline = new Promise<'late'>((resolve) => signal.addEventListener('abort', () => resolve('late'), { once: true }));
  // (listing takes no signal: the race bounds it)
  const listed = await Promise.race([store.list(GALLERY_PREFIX), deadline]);
  if (listed === 'late') return { ...result, late: true };
  const sizes = new Map<string, number>(listed.map((o: ObjectInfo) => [o.key, o.size]));
  const steps = listed
    .map((o) => stepOfGalleryIndexKey(o.key))
    .filter((s): s is number => s !== null)
    .sort((a, b) => b - a);
  // Newest first: steps descending, and within a step its last prompt first.
  const picked: LoadedGallerySample[] = [];
  for (const step of steps) {
    if (picked.length >= options.keep) break;
    if (options.maxStep !== undefined && step > options.maxStep) {
      result.ignoredSteps.push(step);
      continue;
    }
    const key = galleryIndexKey(step);
    const outcome = await Promise.race([readStep(store, key, step, sizes, options, signal, result), deadline]);
    if (outcome === 'late') {
      result.late = true;
      break;
    }
    for (let i = outcome.length - 1; i >= 0 && picked.length < options.keep; i--) picked.push(outcome[i]!);
  }
  result.samples = picked.reverse();
  return result;
}

/** The step's items in prompt order; problems go to `result` (skipped, or the step ignored). */
async function readStep(
  store: ObjectStore,
  key: string,
  step: number,
  sizes: Map<string, number>,
  options: GalleryLoadOptions,
  signal: AbortSignal,
  result: GalleryLoadResult,
): Promise<LoadedGallerySample[]> {
  let index: GalleryIndex;
  try {
    const raw: unknown = JSON.parse((await store.get(key, { signal })).toString('utf8'));
    const parsed = galleryIndexSchema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new Error(`not a gallery index (${issue ? `${issue.path.join('.') || 'top level'}: ${issue.message}` : 'schema'})`);
    }
    index = parsed.data;
    if (index.step !== step) throw new Error(`it says step ${index.step}`);
  } catch (err) {
    if (signal.aborted) return [];
    result.skipped.push({ key, reason: (err as Error).message.split('\n')[0]! });
    return [];
  }
  if (index.configHash !== options.configHash) {
    result.ignoredSteps.push(step);
    return [];
  }
  const folder = `${GALLERY_PREFIX}${padStep(step)}/`;
  const items: LoadedGallerySample[] = [];
  for (const item of index.items) {
    const refs = [item.image, ...item.attention.map((a) => a.image)];
    const bad = refs.find((r) => sizes.get(folder + r.name) !== r.size);
    if (bad) {
      const size = sizes.get(folder + bad.name);
      result.skipped.push({ key: folder + bad.name, reason: size === undefined ? 'missing' : `${size} bytes, the index says ${bad.size}` });
      continue;
    }
    try {
      const pngs = await Promise.all(refs.map(async (r) => {
        const bytes = await store.get(folder + r.name, { signal });
        if (bytes.length !== r.size || !bytes.subarray(0, 8).equals(PNG_MAGIC)) throw Object.assign(new Error('not a PNG of the size the index says'), { key: folder + r.name });
        return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      }));
      items.push({
        step,
        time: index.time,
        prompt: item.prompt,
        png: pngs[0]!,
        ...(item.width !== undefined ? { width: item.width } : {}),
        ...(item.height !== undefined ? { height: item.height } : {}),
        attention: item.attention.map((a, j) => ({ token: a.token, png: pngs[j + 1]! })),
      });
    } catch (err) {
      if (signal.aborted) return items;
      const e = err as Error & { key?: string };
      result.skipped.push({ key: e.key ?? folder + item.image.name, reason: e.message.split('\n')[0]! });
    }
  }
  return items;
}

/** Options of {@link GalleryArchive}. */
export interface GalleryArchiveOptions {
  /** The job's checkpoint store (opened by the caller; closed by {@link GalleryArchive.close}). */
  store: ObjectStore;
  /** The job's config hash: saved with each step, and the loader takes only its own. */
  configHash: string;
  /** Counts failed writes and skipped items (`parti_gallery_store_errors_total{op}`). */
  metrics?: TrainingMetrics;
  /** A save that has not landed after this long is abandoned and counted as failed (default 60 s). */
  writeTimeoutMs?: number;
}

/**
 * The gallery of one job in its store, best effort: `save` queues a step's samples (one save at
 * a time) and never throws; `loadInto` fills a RunStateStore at start-up; `close` waits for
 * queued saves (with a deadline) and closes the store.
 */
export class GalleryArchive {
  readonly #o: GalleryArchiveOptions;
  readonly #log = log.child({ role: 'coordinator', part: 'gallery-store' });
  #chain: Promise<void> = Promise.resolve();
  #queued = 0;
  #closed = false;
  /** Saves that landed and that failed (tests, logs). */
  readonly counts = { saved: 0, failed: 0 };

  constructor(options: GalleryArchiveOptions) {
    this.#o = options;
  }

  get url(): string {
    return this.#o.store.url;
  }

  /** Queues the samples of `step` for the store. A failure is logged and counted, never thrown. */
  save(step: number, samples: readonly GallerySampleData[], time = Date.now()): void {
    if (this.#closed || samples.length === 0) return;
    if (this.#queued >= MAX_QUEUED_SAVES) {
      // A store slower than the gallery: the PNGs waiting in memory stay bounded.
      this.#failed(step, `${this.#queued} saves still waiting for the store`);
      return;
    }
    this.#queued++;
    this.#chain = this.#chain.then(async () => {
      const ms = this.#o.writeTimeoutMs ?? 60_000;
      const signal = AbortSignal.timeout(ms);
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`not written within ${Math.round(ms / 1000)} s`)), ms + 1000);
      });
      try {
        const key = await Promise.race([saveGalleryStep(this.#o.store, step, samples, { configHash: this.#o.configHash, time }, signal), late]);
        this.counts.saved++;
        this.#log.debug({ step, key, items: samples.length }, 'gallery samples stored');
      } catch (err) {
        this.#failed(step, (err as Error).message.split('\n')[0]!);
      } finally {
        clearTimeout(timer);
        this.#queued--;
      }
    });
  }

  #failed(step: number, why: string): void {
    this.counts.failed++;
    this.#o.metrics?.galleryStoreErrorsTotal.inc({ op: 'write' });
    this.#log.warn({ step, store: this.#o.store.url, key: galleryIndexKey(step), err: why }, 'gallery samples not stored; they stay in memory only');
  }

  /**
   * Adds the newest `keep` items of the store to `state` (oldest first, with their own times):
   * what a coordinator does before it serves its dashboard. Skipped items are logged with their
   * key and counted (`op="read"`); a store that cannot be listed is a warning. Never throws.
   */
  async loadInto(state: RunStateStore, options: Omit<GalleryLoadOptions, 'configHash'>): Promise<GalleryLoadResult> {
    let r: GalleryLoadResult;
    try {
      r = await loadGallery(this.#o.store, { ...options, configHash: this.#o.configHash });
    } catch (err) {
      this.#o.metrics?.galleryStoreErrorsTotal.inc({ op: 'read' });
      this.#log.warn({ store: this.#o.store.url, err: (err as Error).message.split('\n')[0] }, 'gallery: cannot list the samples already in the store; the gallery starts empty');
      return { samples: [], skipped: [], ignoredSteps: [], late: false };
    }
    for (const s of r.skipped) {
      this.#o.metrics?.galleryStoreErrorsTotal.inc({ op: 'read' });
      this.#log.warn({ store: this.#o.store.url, key: s.key, err: s.reason }, `gallery: ${s.key} skipped: ${s.reason}`);
    }
    if (r.late) this.#log.warn({ store: this.#o.store.url, ms: options.timeoutMs ?? 15_000, items: r.samples.length }, 'gallery: the store did not answer in time; showing the samples read so far');
    if (r.ignoredSteps.length) this.#log.info({ steps: r.ignoredSteps }, 'gallery: samples of other configs or of steps after the resumed one are not shown');
    for (const s of r.samples) state.addGalleryItem(s);
    if (r.samples.length) this.#log.info({ items: r.samples.length, steps: [...new Set(r.samples.map((s) => s.step))] }, 'gallery samples loaded from the store');
    return r;
  }

  /** Waits for queued saves (at most `ms`, default 10 s), then closes the store. */
  async close(ms = 10_000): Promise<void> {
    this.#closed = true;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), ms)));
    const outcome = await Promise.race([this.#chain.then(() => 'saved' as const), late]);
    clearTimeout(timer);
    if (outcome === 'late') this.#log.warn({ store: this.#o.store.url, ms }, 'gallery: closing with a save still running');
    await this.#o.store.close().catch(() => {});
  }
}
