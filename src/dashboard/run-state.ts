import type {
  CheckpointInfo,
  EventKind,
  GalleryItem,
  JobSummary,
  LiveUpdate,
  RunEvent,
  StepRecord,
  WorkerInfo,
} from './api-schema.ts';
import type { TrainingMetrics } from '../observability/metrics.ts';
import { PartiError } from '../errors.ts';

/**
 * What the dashboard server reads: the state of one job as the coordinator knows it. The server
 * only reads through this interface and subscribes to it; {@link RunStateStore} is the in-memory
 * implementation a coordinator pushes into. Everything returned is a snapshot the caller must not
 * mutate.
 */
export interface RunStateView {
  job(): JobSummary;
  /** Live workers first (by rank), then those that left or failed, newest first. */
  workers(): readonly WorkerInfo[];
  /** The whole step history, oldest first, steps strictly increasing. */
  steps(): readonly StepRecord[];
  /** Oldest first. */
  checkpoints(): readonly CheckpointInfo[];
  /** Events with seq > `after` (oldest first, at most `limit`, the newest ones when more). */
  events(after?: number, limit?: number): { events: RunEvent[]; lastSeq: number; dropped: number };
  skipped(): { samples: Record<string, number>; steps: number };
  /** Oldest first. */
  gallery(): readonly GalleryItem[];
  /** Gallery items kept (older ones are dropped, with their images). */
  galleryKeep(): number;
  /** The PNG of gallery item `id`: its sample, or attention map number `attention`. */
  galleryPng(id: string, attention?: number): Uint8Array | undefined;
  /** True once the coordinator serves its job (for /readyz). */
  ready(): boolean;
  /** Calls `listener` on every change, synchronously; returns the unsubscribe function. */
  subscribe(listener: (update: LiveUpdate) => void): () => void;
}

/** Options of {@link RunStateStore}. */
export interface RunStateStoreOptions {
  jobId: string;
  /** The config's name. */
  name: string;
  configHash?: string;
  stage?: string;
  totalSteps?: number;
  targetWorkers?: number;
  minWorkers?: number;
  batchSize?: number;
  /** Events kept in memory (config `dashboard.eventsKept`). */
  eventsKept?: number;
  /** Gallery items kept (config `dashboard.gallery.keep`). */
  galleryKeep?: number;
  /** Prometheus metrics to keep up to date from what is pushed (see observability/metrics.ts). */
  metrics?: TrainingMetrics;
  /**
   * Write join, leave and failure events when a worker's state changes, and an event when the
   * job's state changes (default true). Off when the caller records those events itself (the
   * coordinator bridge forwards the coordinator's own).
   */
  autoEvents?: boolean;
  /** The clock, Unix ms (tests). */
  now?: () => number;
}

/** A worker row as pushed by the coordinator: `id` plus whatever changed. */
export type WorkerPatch = Pick<WorkerInfo, 'id'> & Partial<Omit<WorkerInfo, 'id'>> & {
  /** Set to remove the rank (a worker that left has none). */
  rank?: number | undefined;
};

/** The job fields a coordinator sets (the rest follows from steps, checkpoints and counters). */
export type JobPatch = Partial<
  Pick<
    JobSummary,
    'state' | 'stage' | 'totalSteps' | 'worldSize' | 'targetWorkers' | 'minWorkers' | 'epoch' | 'batchSize' | 'configHash' | 'error'
  >
>;

/** A sample the data pipeline skipped. */
export interface SkippedSample {
  /** Short, stable reason: `decode`, `truncated-shard`, `caption-too-long`... (a metric label). */
  reason: string;
  shard?: string;
  key?: string;
  step?: number;
  rank?: number;
  /** One line on what was wrong. */
  message?: string;
}

/** A generated sample for the gallery. */
export interface GallerySample {
  step: number;
  prompt: string;
  /** PNG bytes of the image. */
  png: Uint8Array;
  width?: number;
  height?: number;
  /** Cross-attention maps (PNG), one per text token, when the model offers them. */
  attention?: { token: string; png: Uint8Array }[];
  /** When it was generated, Unix ms (default now; a sample read back from the job's store keeps its own). */
  time?: number;
}

const liveStates = new Set<WorkerInfo['state']>(['joining', 'syncing', 'training', 'idle', 'leaving']);
const upStates = new Set<WorkerInfo['state']>(['syncing', 'training', 'idle']);
/** Heartbeat-only worker changes reach subscribers at most this often, per worker. */
const heartbeatEmitMs = 2000;
/** Workers that left or failed kept in the table. */
const goneWorkersKept = 32;

/**
 * The in-memory state of one job, for the dashboard. The coordinator pushes into it
 * (`recordStep`, `upsertWorker`, `recordEvent`, `recordSkippedSample`, `addCheckpoint`,
 * `addGalleryItem`, `setJob`, `setReady`); it keeps the Prometheus metrics up to date, writes
 * join, leave and failure events when a worker's state changes, and tells subscribers (the SSE
 * clients) about every change. Memory: about 150 bytes per step; events and gallery are capped.
 */
export class RunStateStore implements RunStateView {
  readonly #now: () => number;
  readonly #metrics: TrainingMetrics | undefined;
  readonly #eventsKept: number;
  readonly #galleryKeep: number;
  readonly #autoEvents: boolean;
  readonly #listeners = new Set<(update: LiveUpdate) => void>();
  #job: JobSummary;
  #ready = false;
  readonly #workers = new Map<string, WorkerInfo>();
  readonly #workerEmittedAt = new Map<string, number>();
  #steps: StepRecord[] = [];
  readonly #checkpoints: CheckpointInfo[] = [];
  #events: RunEvent[] = [];
  #seq = 0;
  #dropped = 0;
  readonly #skippedSamples = new Map<string, number>();
  readonly #gallery: { item: GalleryItem; png: Uint8Array; attention: Uint8Array[] }[] = [];
  #galleryId = 0;

  constructor(options: RunStateStoreOptions) {
    this.#now = options.now ?? Date.now;
    this.#metrics = options.metrics;
    this.#eventsKept = options.eventsKept ?? 2000;
    this.#galleryKeep = options.galleryKeep ?? 48;
    this.#autoEvents = options.autoEvents ?? true;
    const t = this.#now();
    this.#job = {
      jobId: options.jobId,
      name: options.name,
      configHash: options.configHash ?? '',
      state: 'waiting',
      stage: options.stage ?? 'parti',
      step: 0,
      totalSteps: options.totalSteps ?? 0,
      worldSize: 0,
      targetWorkers: options.targetWorkers ?? 0,
      minWorkers: options.minWorkers ?? options.targetWorkers ?? 0,
      epoch: 0,
      batchSize: options.batchSize ?? 0,
      startedAt: t,
      updatedAt: t,
      skippedSteps: 0,
      skippedSamples: 0,
    };
  }

  // ---- RunStateView ----

  job(): JobSummary {
    return { ...this.#job };
  }

  workers(): readonly WorkerInfo[] {
    const all = [...this.#workers.values()];
    const live = all.filter((w) => liveStates.has(w.state));
    const gone = all.filter((w) => !liveStates.has(w.state));
    live.sort((a, b) => (a.rank ?? Infinity) - (b.rank ?? Infinity) || a.id.localeCompare(b.id));
    gone.sort((a, b) => b.lastHeartbeat - a.lastHeartbeat);
    return [...live, ...gone].map((w) => ({ ...w }));
  }

  steps(): readonly StepRecord[] {
    return this.#steps;
  }

  checkpoints(): readonly CheckpointInfo[] {
    return this.#checkpoints.map((c) => ({ ...c }));
  }

  events(after = 0, limit = 500): { events: RunEvent[]; lastSeq: number; dropped: number } {
    // Events are sorted by seq; find the first one after the cursor.
    let lo = 0;
    let hi = this.#events.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#events[mid]!.seq <= after) lo = mid + 1;
      else hi = mid;
    }
    const newer = this.#events.slice(lo);
    return { events: newer.slice(Math.max(0, newer.length - limit)), lastSeq: this.#seq, dropped: this.#dropped };
  }

  skipped(): { samples: Record<string, number>; steps: number } {
    return { samples: Object.fromEntries(this.#skippedSamples), steps: this.#job.skippedSteps };
  }

  gallery(): readonly GalleryItem[] {
    return this.#gallery.map((g) => g.item);
  }

  galleryKeep(): number {
    return this.#galleryKeep;
  }

  galleryPng(id: string, attention?: number): Uint8Array | undefined {
    const entry = this.#gallery.find((g) => g.item.id === id);
    if (!entry) return undefined;
    return attention === undefined ? entry.png : entry.attention[attention];
  }

  ready(): boolean {
    return this.#ready;
  }

  subscribe(listener: (update: LiveUpdate) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  // ---- what the coordinator pushes ----

  /** Marks the coordinator ready (or not) to serve its job: /readyz follows it. */
  setReady(ready: boolean): void {
    this.#ready = ready;
  }

  /** Changes job fields. A change of `state` to `failed` with an `error` also logs an error event. */
  setJob(patch: JobPatch): void {
    const before = this.#job.state;
    this.#job = { ...this.#job, ...definedOnly(patch), updatedAt: this.#now() };
    if (patch.state && patch.state !== before && this.#autoEvents) {
      const kind: EventKind = patch.state === 'failed' ? 'error' : 'job';
      this.recordEvent({ kind, message: `job ${patch.state}${patch.error ? `: ${patch.error}` : ''}` });
    }
    this.#emit({ type: 'job', job: this.job() });
  }

  /**
   * Adds or updates a worker row. A new worker records a `join` event; a change to `failed` a
   * `failure` event (with `reason`), to `left` a `leave` event. Workers in `syncing`, `training`
   * or `idle` count as up (the `parti_workers_up` metric).
   */
  upsertWorker(patch: WorkerPatch, reason?: string): void {
    const t = this.#now();
    const old = this.#workers.get(patch.id);
    const next: WorkerInfo = {
      ...(old ?? { id: patch.id, host: '', state: 'joining', lastHeartbeat: t }),
      ...definedOnly(patch),
    };
    if ('rank' in patch && patch.rank === undefined) delete next.rank;
    this.#workers.set(patch.id, next);
    const label = next.name ?? next.id;
    const name = label.startsWith('worker') ? label : `worker ${label}`;
    const who = `${name}${next.rank !== undefined ? ` (rank ${next.rank})` : ''}`;
    const base = { worker: next.id, ...(next.rank !== undefined ? { rank: next.rank } : {}) };
    const events = this.#autoEvents;
    if (!old && events) this.recordEvent({ ...base, kind: 'join', message: `${who} joined from ${next.host || 'unknown host'}` });
    if (old && old.state !== next.state) {
      if (next.state === 'failed') {
        this.#metrics?.workerFailuresTotal.inc();
        if (events) this.recordEvent({ ...base, kind: 'failure', message: `${who} failed${reason ? `: ${reason}` : ''}` });
      } else if (next.state === 'left' && events) {
        this.recordEvent({ ...base, kind: 'leave', message: `${who} left${reason ? `: ${reason}` : ''}` });
      }
    }
    this.#pruneGoneWorkers();
    this.#metrics?.workersUp.set([...this.#workers.values()].filter((w) => upStates.has(w.state)).length);
    const onlyHeartbeat =
      old !== undefined && Object.keys(patch).every((k) => k === 'id' || k === 'lastHeartbeat' || (old as Record<string, unknown>)[k] === (patch as Record<string, unknown>)[k]);
    const lastEmit = this.#workerEmittedAt.get(next.id) ?? -Infinity;
    if (!onlyHeartbeat || t - lastEmit >= heartbeatEmitMs) {
      this.#workerEmittedAt.set(next.id, t);
      this.#emit({ type: 'worker', worker: { ...next } });
    }
  }

  /**
   * Appends a completed optimizer step. A step at or below the last one recorded means the job
   * went back to a checkpoint: the history after it is dropped, so the charts show what counts.
   */
  recordStep(record: StepRecord): void {
    const last = this.#steps.at(-1);
    if (last && record.step <= last.step) {
      const keep = this.#steps.findIndex((s) => s.step >= record.step);
      this.#steps = this.#steps.slice(0, keep);
    }
    this.#steps.push({ ...record });
    const m = this.#metrics;
    if (m) {
      m.step.set(record.step);
      m.stepsTotal.inc();
      m.stepSeconds.observe(record.stepMs / 1000);
      m.tokensPerSecond.set(record.tokensPerSec);
      if (record.samplesPerSec !== undefined) m.dataSamplesPerSecond.set(record.samplesPerSec);
      if (Number.isFinite(record.loss)) m.loss.set(record.loss);
      if (record.gradNorm !== undefined) m.gradNorm.set(record.gradNorm);
      m.learningRate.set(record.lr);
      if (record.busBwBytesPerSec !== undefined) m.allReduceBusBandwidth.set(record.busBwBytesPerSec);
      if (record.allReduceMs !== undefined) m.allReduceSeconds.observe(record.allReduceMs / 1000);
      if (record.skipped) m.skippedStepsTotal.inc();
    }
    this.#job = {
      ...this.#job,
      step: record.step,
      worldSize: record.worldSize,
      tokensPerSec: record.tokensPerSec,
      lr: record.lr,
      ...(record.samplesPerSec !== undefined ? { samplesPerSec: record.samplesPerSec } : {}),
      updatedAt: this.#now(),
      ...(Number.isFinite(record.loss) ? { loss: record.loss } : {}),
    };
    if (record.skipped) {
      this.#job.skippedSteps += 1;
      this.recordEvent({ kind: 'skipped-step', step: record.step, message: `step ${record.step} skipped on all ranks: non-finite gradient` });
    }
    this.#emit({ type: 'step', step: { ...record } });
    this.#emit({ type: 'job', job: this.job() });
  }

  /** Appends an event to the log (the oldest are dropped past `eventsKept`); returns its seq. */
  recordEvent(event: Omit<RunEvent, 'seq' | 'time'> & { time?: number }): number {
    const full: RunEvent = { ...event, seq: ++this.#seq, time: event.time ?? this.#now() };
    this.#events.push(full);
    if (this.#events.length > this.#eventsKept) {
      // Drop in chunks so that a flood of events costs O(1) amortized per event.
      const drop = this.#events.length - this.#eventsKept + Math.ceil(this.#eventsKept / 10);
      this.#events = this.#events.slice(drop);
      this.#dropped += drop;
    }
    this.#emit({ type: 'event', event: full });
    return full.seq;
  }

  /** Counts a skipped sample by reason and logs it with its shard and key. */
  recordSkippedSample(sample: SkippedSample): void {
    if (!/^[a-z0-9][a-z0-9-]{0,47}$/.test(sample.reason)) {
      throw new PartiError('internal', `skipped-sample reason must be a short lowercase slug, got ${JSON.stringify(sample.reason)}`);
    }
    this.#skippedSamples.set(sample.reason, (this.#skippedSamples.get(sample.reason) ?? 0) + 1);
    this.#job = { ...this.#job, skippedSamples: this.#job.skippedSamples + 1 };
    this.#metrics?.skippedSamplesTotal.inc({ reason: sample.reason });
    const where = [sample.shard, sample.key].filter(Boolean).join(' / ');
    const detail: Record<string, string> = { reason: sample.reason };
    if (sample.shard) detail.shard = sample.shard;
    if (sample.key) detail.key = sample.key;
    this.recordEvent({
      kind: 'skipped-sample',
      message: `skipped sample${where ? ` ${where}` : ''}: ${sample.message ?? sample.reason}`,
      detail,
      ...(sample.step !== undefined ? { step: sample.step } : {}),
      ...(sample.rank !== undefined ? { rank: sample.rank } : {}),
    });
    this.#emit({ type: 'job', job: this.job() });
  }

  /**
   * Counts samples skipped during a step, by reason (the step reports' sums: no shard or key), and
   * logs one event for the step. Reasons come from the workers: they are made metric-label safe
   * (lowercase slugs) instead of refused; counts that are not positive integers are ignored.
   */
  recordSkippedSampleCounts(counts: Readonly<Record<string, number>>, step?: number): void {
    const parts: string[] = [];
    let total = 0;
    const detail: Record<string, number> = {};
    for (const [raw, n] of Object.entries(counts)) {
      if (!Number.isSafeInteger(n) || n <= 0) continue;
      const reason = reasonSlug(raw);
      this.#skippedSamples.set(reason, (this.#skippedSamples.get(reason) ?? 0) + n);
      this.#metrics?.skippedSamplesTotal.inc({ reason }, n);
      detail[reason] = (detail[reason] ?? 0) + n;
      total += n;
    }
    if (total === 0) return;
    for (const [reason, n] of Object.entries(detail)) parts.push(`${n} ${reason}`);
    this.#job = { ...this.#job, skippedSamples: this.#job.skippedSamples + total, updatedAt: this.#now() };
    this.recordEvent({
      kind: 'skipped-sample',
      message: `${total} sample${total === 1 ? '' : 's'} skipped${step !== undefined ? ` in step ${step}` : ''}: ${parts.join(', ')}`,
      detail,
      ...(step !== undefined ? { step } : {}),
    });
    this.#emit({ type: 'job', job: this.job() });
  }

  /**
   * Adds a committed checkpoint (and its save time to the metrics); one of a step already listed
   * replaces it. `found: true` lists one committed before this coordinator started (found in the
   * store): no event, no metric.
   */
  addCheckpoint(checkpoint: CheckpointInfo, options: { found?: boolean } = {}): void {
    const same = this.#checkpoints.findIndex((c) => c.step === checkpoint.step);
    if (same >= 0) this.#checkpoints.splice(same, 1);
    this.#checkpoints.push({ ...checkpoint });
    this.#checkpoints.sort((a, b) => a.step - b.step);
    const last = this.#checkpoints.filter((c) => !c.deleted).at(-1);
    this.#job = { ...this.#job, ...(last ? { lastCheckpointStep: last.step } : {}), updatedAt: this.#now() };
    if (!options.found) {
      if (checkpoint.saveSeconds !== undefined) this.#metrics?.checkpointSaveSeconds.observe(checkpoint.saveSeconds);
      const secs = checkpoint.saveSeconds !== undefined ? ` in ${formatSeconds(checkpoint.saveSeconds)}` : '';
      this.recordEvent({ kind: 'checkpoint', step: checkpoint.step, message: `checkpoint at step ${checkpoint.step} committed${secs}`, detail: { uri: checkpoint.uri } });
    }
    this.#emit({ type: 'checkpoint', checkpoint: { ...checkpoint } });
    this.#emit({ type: 'job', job: this.job() });
  }

  /** Marks a checkpoint deleted (a newer one committed and retention removed it). */
  markCheckpointDeleted(step: number): void {
    const c = this.#checkpoints.find((x) => x.step === step);
    if (!c) return;
    c.deleted = true;
    this.#emit({ type: 'checkpoint', checkpoint: { ...c } });
  }

  /** Records that a checkpoint was loaded (a resume, or a worker catching up). */
  recordCheckpointLoad(step: number, seconds: number, uri?: string): void {
    this.#metrics?.checkpointLoadSeconds.observe(seconds);
    this.recordEvent({
      kind: 'recovery',
      step,
      message: `checkpoint at step ${step} loaded in ${formatSeconds(seconds)}`,
      ...(uri ? { detail: { uri } } : {}),
    });
  }

  /** Records that the job re-formed its ring and goes on after a failure. */
  recordRecovery(message: string, step?: number): void {
    this.#metrics?.recoveriesTotal.inc();
    this.recordEvent({ kind: 'recovery', message, ...(step !== undefined ? { step } : {}) });
  }

  /** Adds a generated sample to the gallery (oldest dropped past `galleryKeep`); returns its id. */
  addGalleryItem(sample: GallerySample): string {
    const id = `g${++this.#galleryId}`;
    const attention = sample.attention ?? [];
    const item: GalleryItem = {
      id,
      step: sample.step,
      time: sample.time ?? this.#now(),
      prompt: sample.prompt,
      image: `api/gallery/${id}/image.png`,
      attention: attention.map((a, i) => ({ token: a.token, image: `api/gallery/${id}/attention/${i}.png` })),
      ...(sample.width !== undefined ? { width: sample.width } : {}),
      ...(sample.height !== undefined ? { height: sample.height } : {}),
    };
    this.#gallery.push({ item, png: sample.png, attention: attention.map((a) => a.png) });
    if (this.#gallery.length > this.#galleryKeep) this.#gallery.splice(0, this.#gallery.length - this.#galleryKeep);
    this.#emit({ type: 'gallery', item });
    return id;
  }

  #pruneGoneWorkers(): void {
    const gone = [...this.#workers.values()].filter((w) => !liveStates.has(w.state));
    if (gone.length <= goneWorkersKept) return;
    gone.sort((a, b) => a.lastHeartbeat - b.lastHeartbeat);
    for (const w of gone.slice(0, gone.length - goneWorkersKept)) {
      this.#workers.delete(w.id);
      this.#workerEmittedAt.delete(w.id);
    }
  }

  #emit(update: LiveUpdate): void {
    for (const listener of this.#listeners) {
      try {
        listener(update);
      } catch {
        // A subscriber's failure (a closed socket) must never reach the coordinator's loop.
      }
    }
  }
}

/** A reason as a metric label: `Truncated Shard!` -> `truncated-shard`; `other` when nothing is left. */
function reasonSlug(raw: string): string {
  const slug = raw
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 48);
  return slug || 'other';
}

/** 0.049 -> `49 ms`, 2.54 -> `2.5 s`. */
function formatSeconds(s: number): string {
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(1)} s`;
}

function definedOnly<T extends object>(patch: T): Partial<T> {
  return Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined)) as Partial<T>;
}
