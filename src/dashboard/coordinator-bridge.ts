import type { Coordinator, CoordinatorEvent, StepSummary } from '../coordinator/coordinator.ts';
import type { DashboardConfig } from '../config/dashboard-schema.ts';
import { createTrainingMetrics, type TrainingMetrics } from '../observability/metrics.ts';
import type { EventKind, JobState, StepRecord, WorkerInfo } from './api-schema.ts';
import { createDashboardServer, dashboardServerOptions, type DashboardServer } from './dashboard-server.ts';
import { RunStateStore } from './run-state.ts';
import { manifestKey } from '../storage/checkpoint-manifest.ts';
import { listCheckpointSteps, readManifest } from '../storage/checkpoint-load.ts';
import { openStore } from '../storage/open-store.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import type { Config } from '../config/schema.ts';
import { GalleryGenerator } from './gallery-generator.ts';
import { GalleryArchive } from './gallery-archive.ts';
import { galleryTokenizerAvailable, galleryTokenizerDir } from './gallery-source.ts';
import { PartiError } from '../errors.ts';
import { log } from '../observability/log.ts';

/** What the bridge reads off a Coordinator: its public fields and its subscribe(). */
export type CoordinatorSource = Pick<Coordinator, 'opts' | 'phase' | 'step' | 'epoch' | 'ring' | 'members' | 'subscribe'>;

/** Options of {@link bridgeCoordinator}. */
export interface CoordinatorBridgeOptions {
  /** How often worker rows and the job state are refreshed from the coordinator (default 500 ms). */
  pollMs?: number;
  /** Where the checkpoint of a step lives, for the checkpoint list (default `step N`). */
  checkpointUri?: (step: number) => string;
  /** Called after a checkpoint commit was added to the store (retention check, gallery samples). */
  onCheckpoint?: (step: number) => void;
}

function jobState(phase: CoordinatorSource['phase'], recovering: boolean, stopping: boolean): JobState {
  if (stopping && phase.kind !== 'done') return 'stopping';
  switch (phase.kind) {
    case 'waiting-for-workers':
      return 'waiting';
    case 'backoff':
      return 'recovering';
    case 'checkpointing':
      return 'checkpointing';
    case 'done':
      return 'finished';
    case 'forming':
      return recovering ? 'recovering' : 'running';
    default:
      return 'running';
  }
}

const eventKinds: Record<CoordinatorEvent['kind'], EventKind | null> = {
  join: 'join',
  refused: 'warning',
  failure: 'failure',
  abort: 'warning',
  // A re-form after trouble is a recovery (recordRecovery); the first one starts the job.
  reform: 'recovery',
  leave: 'leave',
  // The store records skipped steps itself from the step summaries.
  'skipped-step': null,
  checkpoint: 'checkpoint',
  done: 'job',
  waiting: 'job',
};

/**
 * Bus bandwidth of a collective, bytes per second, as nccl-tests defines it: algbw = bytes / time;
 * all-reduce busbw = algbw x 2(N-1)/N, reduce-scatter (and all-gather) busbw = algbw x (N-1)/N.
 * Undefined with one rank (nothing crosses a link), no bytes or no time.
 */
export function busBandwidth(bytes: number, ms: number, worldSize: number, op = 'all-reduce'): number | undefined {
  if (!(bytes > 0) || !(ms > 0) || !(worldSize > 1)) return undefined;
  const algbw = bytes / (ms / 1000);
  const factor = op === 'reduce-scatter' || op === 'all-gather' ? (worldSize - 1) / worldSize : (2 * (worldSize - 1)) / worldSize;
  return algbw * factor;
}

/**
 * A step summary as a history record (rates over the step's wall time). The summary's `step` is
 * the index of the step it committed (0-based); the dashboard counts completed steps, like the
 * coordinator's `step` field and checkpoint steps, so index i is step i + 1.
 */
export function stepRecordOf(s: StepSummary): StepRecord {
  const seconds = Math.max(s.stepMs, 1e-3) / 1000;
  // 0 when the ranks did not report it (older workers): no busbw rather than a false one.
  const bytes = s.allReduceBytes;
  const busBw = busBandwidth(bytes, s.allReduceMs, s.worldSize, s.allReduceOp);
  return {
    step: s.step + 1,
    time: s.committedAt,
    loss: s.loss,
    stepMs: s.stepMs,
    tokensPerSec: s.tokens / seconds,
    samplesPerSec: s.samples / seconds,
    lr: s.learningRate,
    ...(Number.isFinite(s.gradNorm) ? { gradNorm: s.gradNorm } : {}),
    allReduceMs: s.allReduceMs,
    ...(bytes > 0 ? { allReduceBytes: Math.round(bytes) } : {}),
    ...(busBw !== undefined ? { busBwBytesPerSec: busBw } : {}),
    worldSize: s.worldSize,
    ...(s.skipped ? { skipped: true } : {}),
  };
}

/**
 * Feeds a RunStateStore from a Coordinator: committed steps and events as they happen (through
 * `coordinator.subscribe`), worker rows and the job state by polling its public fields. The store
 * should be made with `autoEvents: false`, since the coordinator's own join, leave and failure
 * events are forwarded. Returns the function that stops the bridge.
 */
export function bridgeCoordinator(coordinator: CoordinatorSource, store: RunStateStore, options: CoordinatorBridgeOptions = {}): () => void {
  const checkpointUri = options.checkpointUri ?? ((step: number) => `step ${step}`);
  const known = new Map<string, { leaving: boolean }>();
  // A re-form after a failure or an abort is a recovery; the first one is the start.
  let troubled = false;
  // Ctrl-C, SIGTERM or a stop command: the job checkpoints and ends at the next step boundary.
  let stopping = false;
  // When each checkpoint started, to report how long it took (snapshot, uploads, manifest commit).
  const checkpointStarts = new Map<number, number>();
  function noteCheckpointStart(): void {
    const p = coordinator.phase;
    if (p.kind === 'checkpointing' && !checkpointStarts.has(p.step)) checkpointStarts.set(p.step, Date.now());
  }

  function sync(): void {
    noteCheckpointStart();
    const ring = coordinator.ring;
    const now = Date.now();
    for (const m of coordinator.members.values()) {
      const rank = ring.indexOf(m.id);
      const state: WorkerInfo['state'] = m.leaving ? 'leaving' : rank >= 0 ? (m.synced ? 'training' : 'syncing') : m.send ? 'idle' : 'joining';
      store.upsertWorker({
        id: m.id,
        name: m.name,
        host: m.collectiveAddress,
        state,
        lastHeartbeat: m.lastHeartbeat,
        rank: rank >= 0 ? rank : undefined,
        ...(rank >= 0 && coordinator.step > 0 ? { step: coordinator.step } : {}),
      });
      known.set(m.id, { leaving: m.leaving });
    }
    for (const [id, k] of known) {
      if (coordinator.members.has(id)) continue;
      known.delete(id);
      store.upsertWorker({ id, state: k.leaving ? 'left' : 'failed', rank: undefined, lastHeartbeat: now });
    }
    const phase = coordinator.phase;
    const job = store.job();
    const state = jobState(phase, troubled, stopping);
    const worldSize = ring.length;
    if (job.state !== state || job.worldSize !== worldSize || job.epoch !== coordinator.epoch) {
      store.setJob({ state, worldSize, epoch: coordinator.epoch });
    }
  }

  const unsubscribe = coordinator.subscribe((e) => {
    // A checkpoint starts synchronously right after a step commit or a stop request, once the
    // coordinator's own code after this listener has run.
    queueMicrotask(noteCheckpointStart);
    if (e.type === 'step') {
      // While listeners run, the phase still holds every rank's report of this step: each worker's
      // own busy time (compute + all-reduce + optimizer) and its share of the throughput.
      const p = coordinator.phase;
      if (p.kind === 'stepping' && p.step === e.step.step) {
        const seconds = Math.max(e.step.stepMs, 1e-3) / 1000;
        for (const r of p.reports) {
          if (!coordinator.members.has(r.workerId)) continue;
          store.upsertWorker({
            id: r.workerId,
            step: e.step.step + 1,
            stepMs: r.computeMs + r.allReduceMs + r.optimizerMs,
            tokensPerSec: r.tokens / seconds,
            samplesPerSec: r.samples / seconds,
          });
        }
      }
      store.recordStep(stepRecordOf(e.step));
      const skipped = e.step.skippedSamples;
      if (skipped && Object.keys(skipped).length > 0) store.recordSkippedSampleCounts(skipped, e.step.step + 1);
      sync();
      return;
    }
    const ev = e.event;
    if (ev.kind === 'failure' || ev.kind === 'abort') troubled = true;
    if (ev.kind === 'done' && /^stop requested/.test(ev.message)) stopping = true;
    sync(); // worker rows first, so a failure event finds the row already failed
    const kind = eventKinds[ev.kind];
    if (ev.kind === 'reform' && troubled && !/^rolling back/.test(ev.message)) {
      store.recordRecovery(ev.message, coordinator.step);
      troubled = false;
    } else if (ev.kind === 'checkpoint') {
      // Saves run in the background while training goes on: the event's own `checkpoint` names
      // the step (its message too, for events without it); the phase has moved on.
      const p = coordinator.phase;
      const info = ev.checkpoint;
      const named = /checkpoint of step (\d+)/.exec(ev.message);
      const step = info?.step ?? (p.kind === 'checkpointing' ? p.step : named ? Number(named[1]) : coordinator.step);
      const started = info?.startedAt ?? checkpointStarts.get(step);
      for (const s of [...checkpointStarts.keys()]) if (s <= step) checkpointStarts.delete(s);
      const bytes = info?.bytes ?? (p.kind === 'checkpointing' && p.step === step ? p.objects.reduce((n, o) => n + o.size, 0) : undefined);
      store.addCheckpoint({
        step,
        time: ev.at,
        uri: checkpointUri(step),
        worldSize: Math.max(1, coordinator.ring.length),
        ...(bytes !== undefined ? { bytes } : {}),
        ...(started !== undefined ? { saveSeconds: Math.max(0, ev.at - started) / 1000 } : {}),
        ...(info ? { snapshotSeconds: info.snapshotMs / 1000 } : {}),
      });
      try {
        options.onCheckpoint?.(step);
      } catch (err) {
        // Never into the coordinator's loop: the dashboard's extras are not worth a job.
        log.warn({ step, err: (err as Error).message }, 'dashboard: checkpoint hook failed');
      }
    } else if (ev.kind === 'reform') {
      store.recordEvent({ kind: 'job', message: ev.message, time: ev.at, step: coordinator.step });
    } else if (kind) {
      store.recordEvent({ kind, message: ev.message, time: ev.at, step: coordinator.step });
    }
  });
  const timer = setInterval(sync, options.pollMs ?? 500);
  timer.unref();
  sync();
  return () => {
    clearInterval(timer);
    unsubscribe();
  };
}

/** A coordinator's dashboard: metrics, state store, HTTP server and the bridge feeding them. */
export interface CoordinatorDashboard {
  readonly url: string;
  readonly store: RunStateStore;
  readonly metrics: TrainingMetrics;
  readonly server: DashboardServer;
  /** The gallery's sample generator, when this job has one (a Parti stage with prompts, a period and a tokenizer). */
  readonly gallery: GalleryGenerator | null;
  /** Stops the bridge and the server. */
  close(): Promise<void>;
}

/** What the coordinator knows about its job that its options do not say. */
export interface CoordinatorDashboardInfo {
  /** The config's name. */
  name: string;
  /** Training stage (default `parti`). */
  stage?: string;
  /** Global batch size. */
  batchSize?: number;
  /**
   * URL of the checkpoint store (`s3://bucket/prefix`, `file:///dir`), so the checkpoint list
   * shows where each manifest is; without it, the list says `step N`. A Parti stage with a gallery
   * also keeps its samples there (`gallery/`, gallery-archive.ts) and shows those already there.
   */
  checkpointStore?: string;
  /**
   * When the configured port is taken: `fail` (default; a cluster's Service needs that port), or
   * `any-free-port` (local runs and tests, where several coordinators share a machine): listen on
   * a free port and log a warning with the URL.
   */
  onPortInUse?: 'fail' | 'any-free-port';
  /**
   * The job's config and run directory, for the gallery: with them (and `checkpointStore`), a
   * Parti stage whose config has `dashboard.gallery.prompts` and `everySteps` gets samples
   * generated from its committed checkpoints, decoded with the run's trained tokenizer.
   */
  generation?: { config: Config; runDir: string };
}

/**
 * Starts the dashboard of a coordinator from the config's `dashboard` section: one call for the
 * launcher (`parti train`) and `parti coordinator`, e.g.
 * `const dash = await startCoordinatorDashboard(coordinator, config.dashboard, { name: config.name });`
 * then print `dash.url`, and `await dash.close()` on the way out. Marks the store ready at once
 * (the coordinator exists and serves its job).
 */
export async function startCoordinatorDashboard(
  coordinator: CoordinatorSource,
  config: DashboardConfig,
  info: CoordinatorDashboardInfo,
): Promise<CoordinatorDashboard> {
  const metrics = createTrainingMetrics({ processMetrics: true });
  const o = coordinator.opts;
  const store = new RunStateStore({
    jobId: o.jobId,
    name: info.name,
    configHash: o.configHash,
    totalSteps: o.totalSteps,
    targetWorkers: o.targetWorkers,
    minWorkers: o.minWorkers,
    eventsKept: config.eventsKept,
    galleryKeep: config.gallery.keep,
    autoEvents: false,
    metrics,
    ...(info.stage ? { stage: info.stage } : {}),
    ...(info.batchSize !== undefined ? { batchSize: info.batchSize } : {}),
  });
  const base = info.checkpointStore?.replace(/\/+$/, '');
  // The gallery of earlier steps, kept in the job's store: loaded before the dashboard serves, so
  // a restarted coordinator (or one serving a finished job) shows it at once.
  const archive = galleryArchiveFor(config, info, o.configHash, metrics);
  await archive?.loadInto(store, { keep: config.gallery.keep, maxStep: coordinator.step, timeoutMs: GALLERY_LOAD_MS });
  const serverOptions = dashboardServerOptions(config, { view: store, metrics });
  let server: DashboardServer;
  try {
    try {
      server = await createDashboardServer(serverOptions);
    } catch (err) {
      const inUse = err instanceof PartiError && /\(EADDRINUSE\)/.test(err.message);
      if (!inUse || info.onPortInUse !== 'any-free-port') throw err;
      server = await createDashboardServer({ ...serverOptions, port: 0 });
      log.warn({ port: config.port, url: server.url }, 'dashboard port in use; serving on a free port instead');
    }
  } catch (err) {
    await archive?.close(0);
    throw err;
  }
  const gallery = galleryFor(store, config, info, metrics, archive);
  const retention = base ? retentionWatch(store, base) : null;
  // A restarted coordinator (or one serving a finished job) lists what its store already holds.
  retention?.listCommitted((step) => `${base}/${manifestKey(step)}`);
  const stop = bridgeCoordinator(coordinator, store, {
    ...(base ? { checkpointUri: (step: number) => `${base}/${manifestKey(step)}` } : {}),
    onCheckpoint: (step) => {
      retention?.check();
      gallery?.checkpointCommitted(step);
    },
  });
  store.setReady(true);
  return {
    url: server.url,
    store,
    metrics,
    server,
    gallery,
    async close() {
      stop();
      await gallery?.close();
      await archive?.close();
      await retention?.close();
      await server.close();
    },
  };
}

/**
 * The gallery generator of a job, or null: only a Parti stage has images, and only with prompts,
 * a period, a checkpoint store and a trained tokenizer. A Parti stage configured for a gallery
 * without a tokenizer gets one warning event saying why there is none.
 */
function galleryFor(
  store: RunStateStore,
  config: DashboardConfig,
  info: CoordinatorDashboardInfo,
  metrics: TrainingMetrics,
  archive: GalleryArchive | null,
): GalleryGenerator | null {
  const g = config.gallery;
  if (g.prompts.length === 0 || g.everySteps === 0) return null;
  if ((info.stage ?? 'parti') !== 'parti' || !info.generation) return null;
  const { config: jobConfig, runDir } = info.generation;
  const why = !info.checkpointStore
    ? 'the job writes no checkpoints'
    : !galleryTokenizerAvailable(jobConfig, galleryTokenizerDir(jobConfig, runDir))
      ? `no trained image tokenizer in ${galleryTokenizerDir(jobConfig, runDir)}`
      : null;
  if (why) {
    store.recordEvent({ kind: 'warning', message: `gallery off: ${why}` });
    return null;
  }
  const generator = new GalleryGenerator({
    store,
    gallery: g,
    metrics,
    ...(archive ? { archive } : {}),
    source: {
      config: jobConfig,
      configHash: store.job().configHash,
      checkpointStore: info.checkpointStore!,
      tokenizerDir: galleryTokenizerDir(jobConfig, runDir),
    },
  });
  generator.warm();
  return generator;
}

/** How long a starting dashboard waits for the gallery already in the job's store (ms). */
const GALLERY_LOAD_MS = 15_000;

/**
 * The gallery's copy in the job's checkpoint store (gallery-archive.ts), or null: only a Parti
 * stage with a gallery configured and a checkpoint store has one. (Whether samples can be made
 * now, a tokenizer, does not matter: those of earlier steps are shown anyway.)
 */
function galleryArchiveFor(config: DashboardConfig, info: CoordinatorDashboardInfo, configHash: string, metrics: TrainingMetrics): GalleryArchive | null {
  const g = config.gallery;
  if (g.prompts.length === 0 || g.everySteps === 0 || (info.stage ?? 'parti') !== 'parti' || !info.checkpointStore) return null;
  try {
    return new GalleryArchive({ store: openStore(info.checkpointStore), configHash, metrics });
  } catch (err) {
    log.warn({ store: info.checkpointStore, err: (err as Error).message }, 'gallery: cannot open the job store; samples are kept in memory only');
    return null;
  }
}

/** How long closing the dashboard waits for a checkpoint-store listing still running (ms). */
const RETENTION_CLOSE_MS = 10_000;

/**
 * Marks checkpoints deleted once retention (checkpoint.keep) removed them: the commit prunes
 * older manifests before the coordinator reports it, so the store is listed after each commit,
 * one listing at a time. `listCommitted` adds those committed before this coordinator started.
 */
function retentionWatch(store: RunStateStore, url: string): { listCommitted(uri: (step: number) => string): void; check(): void; close(): Promise<void> } {
  let objects: ObjectStore | null = null;
  let chain: Promise<void> = Promise.resolve();
  let closed = false;
  // Closing: the start-up listing stops reading manifests (a store may hold many).
  let closing = false;
  return {
    listCommitted(uri) {
      chain = chain.then(async () => {
        let steps: number[];
        let list: ObjectStore;
        try {
          list = objects ??= openStore(url);
          steps = await listCheckpointSteps(list);
        } catch (err) {
          log.warn({ store: url, err: (err as Error).message }, 'dashboard: cannot list the checkpoints already in the store');
          return;
        }
        for (const step of steps) {
          if (closing) return;
          if (store.checkpoints().some((c) => c.step === step)) continue;
          // One manifest that cannot be read (deleted by retention meanwhile, or not ours) hides only itself.
          try {
            const m = await readManifest(list, step);
            if (store.checkpoints().some((c) => c.step === step)) continue; // committed meanwhile: the live one is richer
            const time = Date.parse(m.committedAt);
            store.addCheckpoint(
              { step, time: Number.isFinite(time) ? time : Date.now(), uri: uri(step), bytes: m.objects.reduce((n, o) => n + o.size, 0), worldSize: m.worldSize },
              { found: true },
            );
          } catch (err) {
            log.warn({ store: url, step, err: (err as Error).message }, 'dashboard: cannot read a checkpoint already in the store; not listed');
          }
        }
      });
    },
    check() {
      chain = chain.then(async () => {
        if (closed) return;
        try {
          objects ??= openStore(url);
          const committed = new Set(await listCheckpointSteps(objects));
          for (const c of store.checkpoints()) if (!c.deleted && !committed.has(c.step)) store.markCheckpointDeleted(c.step);
        } catch (err) {
          log.warn({ store: url, err: (err as Error).message }, 'dashboard: cannot list the checkpoint store; deletions are shown after the next commit');
        }
      });
    },
    async close() {
      closing = true;
      // The last commit's listing still runs (the page learns of its deletions before the end),
      // within a deadline: a store that does not answer must not hold the coordinator's exit.
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), RETENTION_CLOSE_MS)));
      const outcome = await Promise.race([chain.then(() => 'listed' as const), late]);
      clearTimeout(timer);
      if (outcome === 'late') log.warn({ store: url, ms: RETENTION_CLOSE_MS }, 'dashboard: the checkpoint store did not answer in time; closing without its last listing');
      closed = true;
      await objects?.close();
    },
  };
}
