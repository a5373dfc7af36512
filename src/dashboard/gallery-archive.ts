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
 *
 * After each save the archive prunes (`pruneGallery`, in the same queue as the saves): the steps
 * whose items all fall outside the newest `keep` ones, counted as the loader counts, are deleted,
 * and so are the objects of older or failed writes that no index names. What stays is what a
 * coordinator restarted at the step just written would load, so the store stays bounded while the
 * dashboard still shows the same items.
 */
import { randomBytes } from 'node:crypto';
import { PNG } from 'pngjs';
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
 * Writes the samples of `step`: the PNGs in a write folder of their own, then the index. Throws on
 * a failed put (the caller counts it); `signal` aborts the puts. Returns the index key. The PNGs
 * of an older write of the step stay until {@link pruneGallery} removes them.
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
  const deadline = abortedAt(signal);
  // (listing takes no signal: the race bounds it)
  const listed = await Promise.race([store.list(GALLERY_PREFIX), deadline]);
  if (listed === 'late') return { ...result, late: true };
  const sizes = new Map<string, number>(listed.map((o: ObjectInfo) => [o.key, o.size]));
  // Newest first: steps descending, and within a step its last prompt first.
  const picked: LoadedGallerySample[] = [];
  const walk = await walkNewest(indexedSteps(listed), options, deadline, (step) => result.ignoredSteps.push(step), async (step) => {
    const items = await readStep(store, step, sizes, options, signal, result);
    const before = picked.length;
    for (let i = items.length - 1; i >= 0 && picked.length < options.keep; i--) picked.push(items[i]!);
    return picked.length - before;
  });
  result.late = walk.late;
  // A copy: a step still being read when the deadline passed may add to `picked` later.
  result.samples = [...picked].reverse();
  return result;
}

/** Resolves 'late' when `signal` aborts. */
function abortedAt(signal: AbortSignal): Promise<'late'> {
  return new Promise<'late'>((resolve) => {
    if (signal.aborted) resolve('late');
    else signal.addEventListener('abort', () => resolve('late'), { once: true });
  });
}

/** The steps that have an index in a listing of `gallery/`, newest first. */
function indexedSteps(listed: readonly ObjectInfo[]): number[] {
  return listed
    .map((o) => stepOfGalleryIndexKey(o.key))
    .filter((s): s is number => s !== null)
    .sort((a, b) => b - a);
}

/**
 * The loader's walk, which pruning shares so that both count alike: steps newest first (those
 * after `maxStep` ignored), each read by `take` (which returns how many of its items count),
 * until `keep` items are counted. `cutoff` is the step at which the count reached `keep` (no
 * older step is read, none shown), null when the steps read hold fewer.
 */
async function walkNewest(
  steps: readonly number[],
  options: { keep: number; maxStep?: number },
  deadline: Promise<'late'>,
  ignore: (step: number) => void,
  take: (step: number) => Promise<number>,
): Promise<{ cutoff: number | null; late: boolean }> {
  let counted = 0;
  for (const step of steps) {
    if (options.maxStep !== undefined && step > options.maxStep) {
      ignore(step);
      continue;
    }
    const n = await Promise.race([take(step), deadline]);
    if (n === 'late') return { cutoff: null, late: true };
    counted += n;
    if (counted >= options.keep) return { cutoff: step, late: false };
  }
  return { cutoff: null, late: false };
}

/** The index of `step`, checked; null (the key and why added to `skipped`) when it is unusable. */
async function readIndex(store: ObjectStore, step: number, signal: AbortSignal, skipped: GalleryLoadResult['skipped']): Promise<GalleryIndex | null> {
  const key = galleryIndexKey(step);
  try {
    const raw: unknown = JSON.parse((await store.get(key, { signal })).toString('utf8'));
    const parsed = galleryIndexSchema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new Error(`not a gallery index (${issue ? `${issue.path.join('.') || 'top level'}: ${issue.message}` : 'schema'})`);
    }
    if (parsed.data.step !== step) throw new Error(`it says step ${parsed.data.step}`);
    return parsed.data;
  } catch (err) {
    if (!signal.aborted) skipped.push({ key, reason: (err as Error).message.split('\n')[0]! });
    return null;
  }
}

/** Every PNG an index item names, the image first. */
function itemRefs(item: GalleryIndex['items'][number]): { name: string; size: number }[] {
  return [item.image, ...item.attention.map((a) => a.image)];
}

/** An item's first PNG that the listing lacks or holds at another size than the index says. */
function listingProblem(folder: string, item: GalleryIndex['items'][number], sizes: ReadonlyMap<string, number>): { key: string; reason: string } | null {
  const bad = itemRefs(item).find((r) => sizes.get(folder + r.name) !== r.size);
  if (!bad) return null;
  const size = sizes.get(folder + bad.name);
  return { key: folder + bad.name, reason: size === undefined ? 'missing' : `${size} bytes, the index says ${bad.size}` };
}

/** The step's items in prompt order; problems go to `result` (skipped, or the step ignored). */
async function readStep(
  store: ObjectStore,
  step: number,
  sizes: Map<string, number>,
  options: GalleryLoadOptions,
  signal: AbortSignal,
  result: GalleryLoadResult,
): Promise<LoadedGallerySample[]> {
  const index = await readIndex(store, step, signal, result.skipped);
  if (!index) return [];
  if (index.configHash !== options.configHash) {
    result.ignoredSteps.push(step);
    return [];
  }
  const folder = `${GALLERY_PREFIX}${padStep(step)}/`;
  const items: LoadedGallerySample[] = [];
  for (const item of index.items) {
    const problem = listingProblem(folder, item, sizes);
    if (problem) {
      result.skipped.push(problem);
      continue;
    }
    try {
      const pngs = await Promise.all(itemRefs(item).map(async (r, j) => {
        const bytes = await store.get(folder + r.name, { signal });
        const bad = (reason: string) => Object.assign(new Error(reason), { key: folder + r.name });
        if (bytes.length !== r.size || !bytes.subarray(0, 8).equals(PNG_MAGIC)) throw bad('not a PNG of the size the index says');
        // Decoded, so that a damaged one of the right size (a chunk's CRC, the zlib stream) is
        // skipped here rather than shown broken on the page; the image must have the index's size.
        let decoded: PNG;
        try {
          decoded = PNG.sync.read(bytes);
        } catch (err) {
          throw bad(`not a valid PNG: ${(err as Error).message}`);
        }
        if (j === 0 && ((item.width !== undefined && decoded.width !== item.width) || (item.height !== undefined && decoded.height !== item.height))) {
          throw bad(`${decoded.width} x ${decoded.height} pixels, the index says ${item.width ?? '?'} x ${item.height ?? '?'}`);
        }
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

/** Options of {@link pruneGallery}. */
export interface GalleryPruneOptions {
  /**
   * The step just written: it is never deleted, its index is the one that counts for its folder,
   * and it is the loader's `maxStep` (steps after it belong to a history the job went back from;
   * the loader ignores them and so does pruning, which leaves them alone).
   */
  step: number;
  /**
   * Items kept (config `dashboard.gallery.keep`). Without it no step is deleted: only the step
   * just written loses the objects its index does not name.
   */
  keep?: number;
  /** The job's config hash: other configs' items do not count (as in the loader). */
  configHash: string;
  /**
   * In steps other than the one just written, a write folder no index names is deleted only when
   * the time in its name is at least this old (default 10 min): a save abandoned at its deadline
   * may still be putting it.
   */
  spareWritesYoungerThanMs?: number;
  /** Stops the work: no read or delete is started once it aborts. */
  signal?: AbortSignal;
}

/** What {@link pruneGallery} did. */
export interface GalleryPruneResult {
  /** Keys deleted. */
  deleted: string[];
  /** Deletes (or the listing, key `gallery/`) that failed: the key and why, one line. */
  failed: { key: string; reason: string }[];
  /** The oldest step a loader at `step` reads (older ones were deleted); null: fewer than `keep` items. */
  cutoff: number | null;
  /** The signal aborted before the work was done. */
  late: boolean;
}

/** Deletes that run at once while pruning. */
const DELETE_CONCURRENCY = 8;

/** The step of any key of the gallery's layout (`gallery/<12 digits>/...`), or null. */
function stepOfGalleryKey(key: string): number | null {
  const m = /^gallery\/(\d{12})\/./.exec(key);
  return m ? Number(m[1]) : null;
}

/** When a write folder was made, from its name (`saveGalleryStep`'s `<base36 ms>-<hex>`); 0 for a name of another form. */
function writeTime(keyInStep: string): number {
  const m = /^([0-9a-z]{1,11})-[0-9a-f]{8}\//.exec(keyInStep);
  return m ? parseInt(m[1]!, 36) : 0;
}

/**
 * Deletes what a coordinator restarted at `step` could no longer show (see
 * {@link GalleryPruneOptions}): every step folder older than the one at which the newest `keep`
 * items are counted (counted as {@link loadGallery} counts: other configs' items, unreadable
 * indexes and items whose PNGs are missing or of the wrong size do not count; PNG bytes are not
 * read), and, in the steps kept, the objects no index names (older or failed writes). A step's
 * index goes before its PNGs, so a reader never finds an index whose PNGs are gone. Only keys
 * `gallery/<step>/...` are touched. Never throws: failures are returned.
 */
export async function pruneGallery(store: ObjectStore, options: GalleryPruneOptions): Promise<GalleryPruneResult> {
  const result: GalleryPruneResult = { deleted: [], failed: [], cutoff: null, late: false };
  const signal = options.signal ?? new AbortController().signal;
  const deadline = abortedAt(signal);
  let listed: ObjectInfo[] | 'late';
  try {
    listed = await Promise.race([store.list(GALLERY_PREFIX), deadline]);
  } catch (err) {
    result.failed.push({ key: GALLERY_PREFIX, reason: (err as Error).message.split('\n')[0]! });
    return result;
  }
  if (listed === 'late') return { ...result, late: true };
  const sizes = new Map<string, number>(listed.map((o) => [o.key, o.size]));
  const byStep = new Map<number, string[]>();
  for (const o of listed) {
    const s = stepOfGalleryKey(o.key);
    if (s === null) continue;
    const keys = byStep.get(s);
    if (keys) keys.push(o.key);
    else byStep.set(s, [o.key]);
  }
  // The indexes read, by step (null: unreadable); the walk is the loader's.
  const indexes = new Map<number, GalleryIndex | null>();
  const unreadable: GalleryLoadResult['skipped'] = []; // the loader at start-up reports these
  const count = async (step: number): Promise<number> => {
    const index = await readIndex(store, step, signal, unreadable);
    indexes.set(step, index);
    if (!index || index.configHash !== options.configHash) return 0;
    const folder = `${GALLERY_PREFIX}${padStep(step)}/`;
    return index.items.filter((item) => !listingProblem(folder, item, sizes)).length;
  };
  if (options.keep === undefined) {
    if (sizes.has(galleryIndexKey(options.step))) await Promise.race([count(options.step), deadline]);
  } else {
    const walk = await walkNewest(indexedSteps(listed), { keep: options.keep, maxStep: options.step }, deadline, () => {}, count);
    if (walk.late) return { ...result, late: true };
    result.cutoff = walk.cutoff;
  }
  if (signal.aborted) return { ...result, late: true };

  const spareMs = options.spareWritesYoungerThanMs ?? 10 * 60_000;
  const now = Date.now();
  const first: string[] = []; // indexes of whole steps deleted: they go before anything else
  const rest: string[] = [];
  for (const [step, keys] of byStep) {
    if (step === options.step) {
      // Just written, in this queue: whatever its index does not name is an older or failed write.
      const index = indexes.get(step);
      if (index) rest.push(...unnamed(step, index, keys));
    } else if (result.cutoff !== null && step < result.cutoff) {
      for (const key of keys) (key === galleryIndexKey(step) ? first : rest).push(key);
    } else if (step < options.step && options.keep !== undefined) {
      // Kept: only write folders no index names and old enough that no save is still putting them.
      // An index that could not be read names nothing we know: its step is left alone.
      const hasIndex = sizes.has(galleryIndexKey(step));
      const index = indexes.get(step);
      if (hasIndex && !index) continue;
      const folder = `${GALLERY_PREFIX}${padStep(step)}/`;
      const candidates = index ? unnamed(step, index, keys) : keys;
      rest.push(...candidates.filter((k) => now - writeTime(k.slice(folder.length)) >= spareMs));
    }
  }
  let planned = 0;
  for (const [phase, all] of [first, rest].entries()) {
    // A step whose index could not be deleted keeps its PNGs: the index would name missing ones.
    const kept = new Set(phase === 0 ? [] : result.failed.map((f) => stepOfGalleryKey(f.key)));
    const batch = all.filter((k) => !kept.has(stepOfGalleryKey(k)));
    planned += batch.length;
    let next = 0;
    const deleteOne = async (): Promise<void> => {
      while (next < batch.length && !signal.aborted) {
        const key = batch[next++]!;
        try {
          await store.delete(key);
          result.deleted.push(key);
        } catch (err) {
          result.failed.push({ key, reason: (err as Error).message.split('\n')[0]! });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(DELETE_CONCURRENCY, batch.length) }, deleteOne));
  }
  if (signal.aborted && result.deleted.length + result.failed.length < planned) result.late = true;
  return result;
}

/** The keys of a step folder that its index does not name (the index itself is named). */
function unnamed(step: number, index: GalleryIndex, keys: readonly string[]): string[] {
  const folder = `${GALLERY_PREFIX}${padStep(step)}/`;
  const named = new Set([galleryIndexKey(step), ...index.items.flatMap((item) => itemRefs(item).map((r) => folder + r.name))]);
  return keys.filter((k) => !named.has(k));
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
  /**
   * Items the dashboard keeps (config `dashboard.gallery.keep`): after each save the store is
   * pruned to what a loader with this `keep` reads. Absent: the `keep` of the last
   * {@link GalleryArchive.loadInto} (what a starting coordinator does), and without that no step
   * is pruned (only older writes of the step just saved are removed).
   */
  keep?: number;
  /** Pruning after a save stops starting deletes after this long (default 30 s); what is left goes next time. */
  pruneTimeoutMs?: number;
}

/**
 * The gallery of one job in its store, best effort: `save` queues a step's samples (one save at
 * a time, each followed by pruning in the same queue) and never throws; `loadInto` fills a
 * RunStateStore at start-up; `close` waits for queued saves (with a deadline) and closes the store.
 */
export class GalleryArchive {
  readonly #o: GalleryArchiveOptions;
  readonly #log = log.child({ role: 'coordinator', part: 'gallery-store' });
  #chain: Promise<void> = Promise.resolve();
  #queued = 0;
  #closed = false;
  /** Saves that landed and that failed (tests, logs). */
  readonly counts = { saved: 0, failed: 0 };
  /** Pruning after saves: passes run, passes that left something (counted, op="prune"), keys deleted. */
  readonly pruning = { passes: 0, failed: 0, deleted: 0 };
  /** The `keep` of the last loadInto (used when the options give none). */
  #loadedKeep: number | undefined;
  /**
   * A pruning pass abandoned at its deadline, until its deletes in flight settle: the next save
   * waits for it (within its own deadline), so no delete of it lands after a put of that save.
   */
  #abandonedPrune: Promise<unknown> | null = null;

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
      let saved = false;
      try {
        if (this.#abandonedPrune) await Promise.race([this.#abandonedPrune, late]);
        const key = await Promise.race([saveGalleryStep(this.#o.store, step, samples, { configHash: this.#o.configHash, time }, signal), late]);
        this.counts.saved++;
        saved = true;
        this.#log.debug({ step, key, items: samples.length }, 'gallery samples stored');
      } catch (err) {
        this.#failed(step, (err as Error).message.split('\n')[0]!);
      } finally {
        clearTimeout(timer);
      }
      try {
        if (saved) await this.#prune(step);
      } finally {
        this.#queued--;
      }
    });
  }

  /** Prunes the store after `step` was saved (in the save queue). Never throws; bounded by pruneTimeoutMs. */
  async #prune(step: number): Promise<void> {
    const keep = this.#o.keep ?? this.#loadedKeep;
    const ms = this.#o.pruneTimeoutMs ?? 30_000;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), ms);
    const spare = 2 * (this.#o.writeTimeoutMs ?? 60_000) + 60_000;
    const running = pruneGallery(this.#o.store, { step, configHash: this.#o.configHash, signal: controller.signal, spareWritesYoungerThanMs: spare, ...(keep !== undefined ? { keep } : {}) })
      .catch((err: unknown): GalleryPruneResult => ({ deleted: [], failed: [{ key: GALLERY_PREFIX, reason: String((err as Error)?.message ?? err).split('\n')[0]! }], cutoff: null, late: false }));
    // The signal stops new reads and deletes; one that hangs in the store must not hold the queue.
    let late: NodeJS.Timeout | undefined;
    const abandoned = new Promise<'abandoned'>((resolve) => (late = setTimeout(() => resolve('abandoned'), ms + 1000)));
    let r: GalleryPruneResult | 'abandoned';
    try {
      r = await Promise.race([running, abandoned]);
    } finally {
      clearTimeout(timer);
      clearTimeout(late);
    }
    this.pruning.passes++;
    if (r === 'abandoned') {
      const settled = running.then(() => {}, () => {}).finally(() => {
        if (this.#abandonedPrune === settled) this.#abandonedPrune = null;
      });
      this.#abandonedPrune = settled;
      r = { deleted: [], failed: [], cutoff: null, late: true };
    }
    this.pruning.deleted += r.deleted.length;
    if (r.deleted.length) this.#log.debug({ step, keep, cutoff: r.cutoff, deleted: r.deleted.length }, 'gallery: store pruned');
    if (r.failed.length || r.late) {
      this.pruning.failed++;
      this.#o.metrics?.galleryStoreErrorsTotal.inc({ op: 'prune' });
      const first = r.failed[0];
      this.#log.warn(
        { step, store: this.#o.store.url, failed: r.failed.length, deleted: r.deleted.length, ...(first ? { key: first.key, err: first.reason } : {}), late: r.late, ms },
        'gallery: pruning the store left objects behind; the next save tries again',
      );
    }
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
   * Its `keep` is the one pruning uses when the archive's options give none.
   */
  async loadInto(state: RunStateStore, options: Omit<GalleryLoadOptions, 'configHash'>): Promise<GalleryLoadResult> {
    this.#loadedKeep = options.keep;
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
