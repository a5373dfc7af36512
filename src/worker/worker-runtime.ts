/**
 * The worker runtime: joins the coordinator, runs the commands of its stream one at a time
 * (reconfigure, step, commit, checkpoint, stop) and reports what it did. Abort is handled at once,
 * out of order, so that a rank blocked in an all-reduce with a dead peer is freed within the
 * failure-detection time. A lost coordinator is rejoined (a restarted one tells the worker where to
 * resume). The model is injected (Trainable); so are the collectives (CollectivePort).
 */
import * as grpc from '@grpc/grpc-js';
import { hostname } from 'node:os';
import { Worker } from 'node:worker_threads';
import { log as rootLog } from '../observability/log.ts';
import { PartiError } from '../errors.ts';
import {
  createCoordinatorClient,
  deadlineIn,
  fromGrpcError,
  type Command,
  type CoordinatorClient,
  type ReconfigureCommand,
  type StepCommand,
  type StepReport,
} from '../coordinator/protocol.ts';
import { segmentBounds } from '../collective/ring.ts';
import type { CollectivePort } from './collective-port.ts';
import type { JobSecurity } from '../security/job-security.ts';
import type { SecurityConfig } from '../config/security-schema.ts';
import type { HeartbeatControl, HeartbeatNews, HeartbeatThreadData } from './heartbeat-thread.ts';

const HEARTBEAT_THREAD = new URL('./heartbeat-thread.ts', import.meta.url).href;
import type { OptimizerShard, OptimizerSnapshot, Trainable } from './trainable.ts';

/** A checkpoint object as the coordinator lists it in the manifest. */
export interface SavedObject {
  name: string;
  key: string;
  size: number;
  sha256: string;
}

/** Where a worker writes its part of a checkpoint and reads state back. */
export interface WorkerStateStore {
  /**
   * Writes this rank's objects of the checkpoint of `step`: the parameters (rank 0 only) and the
   * optimizer state of [start, end) (slot-major). Resolves with what it wrote, for the manifest,
   * once every object has landed. The arrays are the snapshot: the caller leaves them unchanged
   * until the promise settles (the upload may read them in the background).
   */
  save(snapshot: {
    step: number;
    rank: number;
    worldSize: number;
    params: Float32Array | null;
    optimizer: { start: number; end: number; slots: number; updates: number; state: Float32Array };
  }): Promise<SavedObject[]>;
  /**
   * Optional: the same from the LIVE state in shared memory (SharedArrayBuffer): the parameters
   * and the optimizer's slot arrays (slot-major order). The store copies them off the caller's
   * thread; the caller changes them only after `copied` resolves (it never rejects). `done` is
   * save()'s promise.
   */
  saveLive?(snapshot: {
    step: number;
    rank: number;
    worldSize: number;
    params: Float32Array | null;
    optimizer: { start: number; end: number; slots: number; updates: number; state: readonly Float32Array[] };
  }): { copied: Promise<void>; done: Promise<SavedObject[]> };
  /** Reads the parameters and the optimizer state of [start, end) of committed step `step`. */
  load(step: number, start: number, end: number): Promise<{ params: Float32Array; optimizer: OptimizerSnapshot }>;
  /** Optional: gets ready to save (e.g. loads an upload thread) so that the first save does not wait. */
  start?(): Promise<void>;
  /** Optional: waits for the save in flight and releases what save() holds. */
  close?(): Promise<void>;
}

/** Options of a worker, resolved once by the CLI. */
export interface WorkerOptions {
  /** host:port of the coordinator. */
  coordinator: string;
  /** The job to join; the coordinator refuses another. */
  jobId: string;
  /** configHash() of this worker's config; the coordinator refuses another. */
  configHash: string;
  /** A name for logs; default host:pid. */
  name?: string;
  /** Builds the model at its initialization (called again when the job restarts from scratch). */
  createModel: () => Promise<Trainable>;
  /** This worker's end of the ring (configured by the runtime at each membership epoch). */
  collective: CollectivePort;
  /** Training seed (the model keys per-sample randomness on it, the step and the sample id). */
  seed: number;
  /** 1: reduce-scatter, update this rank's range of parameters and optimizer state, all-gather. */
  zeroStage: 0 | 1;
  /** Heartbeat period (ms), on a thread of its own. */
  heartbeatMs: number;
  /** Deadline of each call to the coordinator (ms). */
  rpcDeadlineMs: number;
  /** Deadline of each collective call (ms). */
  stepDeadlineMs: number;
  /** Size cap of coordinator messages (bytes). */
  maxMessageBytes: number;
  /** How long to keep trying to (re)join a coordinator before giving up (ms). */
  reconnectMs: number;
  /** Where checkpoints are written and restored from; null: none (tests). */
  store: WorkerStateStore | null;
  /**
   * The job's security: resolved (mutual TLS, job token) and the `security` config section it
   * came from (the heartbeat thread resolves its own). Absent: plaintext without a token (tests).
   */
  security?: { resolved: JobSecurity; config: SecurityConfig };
  /** Told what this worker measured anyway (its /metrics, worker-metrics.ts); absent: no one. */
  observer?: WorkerObserver;
}

/**
 * What the runtime tells an observer: the reports it sends (their timings are measured once, for
 * the coordinator), the end of each checkpoint upload and each rejoin. Called synchronously.
 */
export interface WorkerObserver {
  /** A report on its way to the coordinator, with this worker's rank and ring size at that time. */
  reported(r: Readonly<Partial<StepReport> & Pick<StepReport, 'kind' | 'epoch' | 'step'>>, at: { rank: number; worldSize: number }): void;
  /** A checkpoint upload of this rank ended (saved or failed), `ms` after its snapshot began. */
  checkpointEnded(ms: number): void;
  /** The coordinator was lost; this worker joins it again. */
  rejoining(): void;
}

/** Lifecycle of a worker; a wrong transition is PartiError('illegal-state'). */
export type WorkerState = 'starting' | 'joining' | 'idle' | 'syncing' | 'computing' | 'reduced' | 'checkpointing' | 'stopped';

/** A checkpoint copied from the live state by the upload thread. */
interface LiveSnapshot {
  /** Resolves when the upload no longer reads the live state. */
  copied: Promise<void>;
  /** Training-thread time spent waiting for the copy before changing the state (ms). */
  waitMs: number;
  /** The state changed before the copy ended (it passed the step deadline): the save is void. */
  torn: boolean;
}

interface PendingUpdate {
  epoch: number;
  step: number;
  /** Mean gradient of this rank's optimizer range (all of it with ZeRO 0). */
  grad: Float32Array;
  nonFinite: boolean;
}

/** The result of a worker's run. */
export interface WorkerExit {
  reason: string;
  /**
   * The coordinator's Stop said the job ran all its steps (Stop.finished); false when this worker
   * stopped on its own; undefined when the coordinator did not say (it predates the field).
   */
  finished?: boolean;
  /** Steps this worker applied. */
  applied: number;
}

export class WorkerRuntime {
  private _state: WorkerState = 'starting';
  get state(): WorkerState {
    return this._state;
  }
  set state(s: WorkerState) {
    this._state = s;
    this.heartbeats?.postMessage({ type: 'state', state: s } satisfies HeartbeatControl);
  }
  private heartbeats: Worker | null = null;
  /** Set by run() before anything uses it. */
  private model!: Trainable;
  /** The model holds its initialization (nothing trained or loaded yet). */
  private pristine = true;
  private optimizer: OptimizerShard | null = null;
  private client: CoordinatorClient;
  private workerId = '';
  private epoch = -1;
  private rank = 0;
  private worldSize = 1;
  /** Optimizer steps applied to the parameters. */
  private version = 0;
  private pending: PendingUpdate | null = null;
  private abortedEpoch = -1;
  private queue: Command[] = [];
  private wake: (() => void) | null = null;
  private stream: grpc.ClientReadableStream<Command> | null = null;
  private streamEnded: ((why: string) => void) | null = null;
  private stopReason: string | null = null;
  private stopFinished: boolean | undefined = undefined;
  private leaving = false;
  private applied = 0;
  /** The optimizer time of the last update this worker applied (sent with the next REDUCED report). */
  private lastOptimizerMs = 0;
  private log = rootLog.child({ role: 'worker' });
  /** Bytes of optimizer state of `optimizer` (for reports; its range is fixed, so computed once). */
  private optimizerStateBytes = 0;
  /** The upload of this worker's last checkpoint snapshot, until it ended and was reported. */
  private saving: Promise<void> | null = null;
  /**
   * Host memory of checkpoint snapshots, allocated once and reused (at most one upload at a
   * time). Shared memory: the upload thread reads it in place, nothing is copied to hand it over.
   */
  private snapshotBuffer: Float32Array | null = null;
  /**
   * A checkpoint whose upload thread is still copying the LIVE state (shared memory): nothing may
   * change the parameters or the optimizer state until it has (commit and reconfigure wait).
   */
  private liveSnapshot: LiveSnapshot | null = null;

  constructor(private readonly opts: WorkerOptions) {
    this.client = createCoordinatorClient(opts.coordinator, opts.maxMessageBytes, opts.security?.resolved);
  }

  private get name(): string {
    return this.opts.name ?? `${hostname()}:${process.pid}`;
  }

  /** Runs until the coordinator says stop (or cannot be reached for reconnectMs). */
  async run(): Promise<WorkerExit> {
    this.startHeartbeatThread(); // loads while the model is built (the checkpoint upload thread starts with the first save)
    try {
      this.model = await this.opts.createModel();
      while (this.stopReason === null) {
        await this.join();
        const why = await this.serve();
        if (this.stopReason !== null) break;
        this.log.warn({ why }, 'lost the coordinator; joining again');
        this.opts.observer?.rejoining();
        this.resetMembership();
      }
    } finally {
      // A checkpoint still uploading (the final one of a stopped job is reported before the stop,
      // so this is an interrupted job's) ends before the process does, within the step deadline.
      await this.settleSave();
      await this.opts.store?.close?.().catch((err: Error) => this.log.warn({ err: err.message }, 'checkpoint store close failed'));
      this.state = 'stopped';
      this.heartbeats?.postMessage({ type: 'stop' } satisfies HeartbeatControl);
      this.heartbeats = null;
      this.client.close();
      await this.opts.collective.close();
      (this.model as Trainable | undefined)?.dispose();
    }
    return { reason: this.stopReason ?? 'stopped', finished: this.stopFinished, applied: this.applied };
  }

  /** SIGTERM: leave at the next step boundary, losing no work. */
  async requestLeave(reason: string): Promise<void> {
    if (this.leaving) return;
    this.leaving = true;
    this.log.info({ reason }, 'leaving at the next step boundary');
    try {
      await this.unary<{ accepted: boolean }>('leave', { jobId: this.opts.jobId, workerId: this.workerId, reason });
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cannot tell the coordinator that this worker leaves; stopping');
      this.stop('left (coordinator unreachable)', false);
    }
  }

  private stop(reason: string, finished: boolean | undefined): void {
    this.stopReason = reason;
    this.stopFinished = finished;
    this.streamEnded?.(`stopped: ${reason}`);
    this.wake?.();
  }

  private resetMembership(): void {
    this.opts.collective.abort('coordinator lost');
    this.pending = null;
    this.queue = [];
    this.epoch = -1;
  }

  private unary<T>(method: 'join' | 'heartbeat' | 'report' | 'leave', req: object): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      (this.client[method] as (r: object, o: grpc.CallOptions, cb: grpc.requestCallback<T>) => void)(
        req,
        { deadline: deadlineIn(this.opts.rpcDeadlineMs) },
        (err, res) => (err ? reject(fromGrpcError(err, `coordinator ${this.opts.coordinator} ${method}`)) : resolve(res!)),
      );
    });
  }

  private async join(): Promise<void> {
    this.state = 'joining';
    const until = Date.now() + this.opts.reconnectMs;
    let delay = 100;
    for (;;) {
      try {
        const reply = await this.unary<{ workerId: string; jobId: string; configHash: string }>('join', {
          jobId: this.opts.jobId,
          configHash: this.opts.configHash,
          workerName: this.name,
          collectiveAddress: this.opts.collective.address,
          paramCount: this.model.paramCount,
        });
        if (reply.jobId !== this.opts.jobId || reply.configHash !== this.opts.configHash) {
          throw new PartiError('refused', `coordinator ${this.opts.coordinator} runs job ${reply.jobId} with config ${reply.configHash}, not ${this.opts.jobId} with ${this.opts.configHash}`);
        }
        this.workerId = reply.workerId;
        this.log = rootLog.child({ role: 'worker', worker: this.workerId, job: this.opts.jobId });
        this.log.info({ coordinator: this.opts.coordinator }, 'joined');
        if (this.leaving) {
          // a preempted worker that lost its coordinator has nothing left to finish
          this.stop('left', false);
        }
        return;
      } catch (err) {
        const e = PartiError.from(err);
        if (e.code === 'refused') throw e;
        if (Date.now() + delay > until) {
          throw new PartiError('deadline', `cannot reach the coordinator at ${this.opts.coordinator} for ${this.opts.reconnectMs} ms: ${e.message}`);
        }
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(1000, delay * 2);
      }
    }
  }

  /** Heartbeats run on their own thread: a tfjs step blocks this one for seconds. */
  private startHeartbeats(): void {
    this.startHeartbeatThread();
    this.heartbeats!.postMessage({ type: 'identity', workerId: this.workerId } satisfies HeartbeatControl);
    this.heartbeats!.postMessage({ type: 'state', state: this.state } satisfies HeartbeatControl);
  }

  private startHeartbeatThread(): void {
    if (!this.heartbeats) {
      const data: HeartbeatThreadData = {
        coordinator: this.opts.coordinator,
        jobId: this.opts.jobId,
        heartbeatMs: this.opts.heartbeatMs,
        rpcDeadlineMs: this.opts.rpcDeadlineMs,
        maxMessageBytes: this.opts.maxMessageBytes,
        security: this.opts.security?.config ?? null,
      };
      // The thread loads TypeScript through tsx like the CLI; a worker thread does not inherit --import hooks.
      const tsx = import.meta.resolve('tsx/esm/api');
      const code = `(async () => { const { register } = await import(${JSON.stringify(tsx)}); register(); await import(${JSON.stringify(HEARTBEAT_THREAD)}); })();`;
      const t = new Worker(code, { eval: true, workerData: data });
      t.on('message', (m: HeartbeatNews) => {
        if (m.type === 'unknown' && m.workerId === this.workerId) this.streamEnded?.('the coordinator does not know this worker');
        // The checkpoint upload thread is not started here: the store's first save starts it, so
        // that a worker that never checkpoints (no checkpoint steps, no final one) pays for no
        // thread. That save's copy and upload wait for the thread to load (0.4-0.6 s measured at
        // load 4), so with a live snapshot the next commit may wait for it, once per process.
      });
      t.on('error', (err) => this.log.error({ err: err.message }, 'heartbeat thread failed'));
      t.unref();
      this.heartbeats = t;
    }
  }

  private stopHeartbeats(): void {
    this.heartbeats?.postMessage({ type: 'identity', workerId: '' } satisfies HeartbeatControl);
  }

  /** Opens the command stream and runs commands until it ends; returns why it ended. */
  private serve(): Promise<string> {
    this.state = 'idle';
    return new Promise<string>((resolve) => {
      let ended = false;
      const end = (why: string) => {
        if (ended) return;
        ended = true;
        this.stopHeartbeats();
        this.stream?.cancel();
        this.stream = null;
        this.streamEnded = null;
        this.wake?.();
        resolve(why);
      };
      this.streamEnded = end;
      const stream = this.client.commands({ jobId: this.opts.jobId, workerId: this.workerId });
      this.stream = stream;
      // Events of an earlier stream (a cancelled one) must not reach this session.
      stream.on('data', (cmd: Command) => this.stream === stream && this.receive(cmd));
      stream.on('error', (err) => this.stream === stream && end(fromGrpcError(err, 'command stream').message));
      // A graceful end comes after the last command (stop): let the queue drain first.
      stream.on('end', () => {
        if (this.stream !== stream) return;
        this.queue.push({ stop: undefined, streamEnd: true } as Command & { streamEnd: true });
        this.wake?.();
      });
      this.startHeartbeats();
      void this.consume(() => ended).catch((err) => {
        this.log.error({ err: (err as Error).message }, 'worker loop failed');
        end((err as Error).message);
      });
    });
  }

  private receive(cmd: Command): void {
    if (cmd.abort) {
      if (cmd.abort.epoch >= this.epoch) {
        this.abortedEpoch = Math.max(this.abortedEpoch, cmd.abort.epoch);
        // Steps of the epoch are dropped; a queued commit is a decision already taken (every rank
        // reduced that step) and still applies; a queued checkpoint still snapshots its step (the
        // state does not depend on the epoch) and is answered, as the coordinator counts on.
        this.queue = this.queue.filter((c) => !c.step);
        this.opts.collective.abort(cmd.abort.reason);
        this.log.info({ epoch: cmd.abort.epoch, reason: cmd.abort.reason }, 'epoch aborted');
      }
      return;
    }
    this.queue.push(cmd);
    this.wake?.();
  }

  private async consume(ended: () => boolean): Promise<void> {
    while (!ended() && this.stopReason === null) {
      const cmd = this.queue.shift();
      if (!cmd) {
        await new Promise<void>((r) => (this.wake = r));
        this.wake = null;
        continue;
      }
      await this.execute(cmd);
    }
  }

  private async execute(cmd: Command): Promise<void> {
    const epoch = cmd.reconfigure?.epoch ?? cmd.step?.epoch ?? cmd.commit?.epoch ?? cmd.checkpoint?.epoch ?? this.epoch;
    try {
      if ((cmd as { streamEnd?: boolean }).streamEnd) {
        this.streamEnded?.('command stream ended');
      } else if (cmd.stop) {
        this.log.info({ reason: cmd.stop.reason, finished: cmd.stop.finished }, 'stopping');
        this.stop(cmd.stop.reason, cmd.stop.finished);
      } else if (cmd.reconfigure) {
        // an epoch aborted before this worker even entered it
        if (cmd.reconfigure.epoch <= this.abortedEpoch) return;
        await this.reconfigure(cmd.reconfigure);
      } else if (cmd.commit) {
        await this.commit(cmd.commit.epoch, cmd.commit.step);
      } else if (cmd.checkpoint) {
        await this.checkpoint(cmd.checkpoint.epoch, cmd.checkpoint.step);
      } else if (epoch <= this.abortedEpoch) {
        return; // a step of an aborted epoch that was already queued
      } else if (cmd.step) {
        await this.runStep(cmd.step);
      }
    } catch (err) {
      const e = PartiError.from(err);
      this.state = 'idle';
      if (epoch <= this.abortedEpoch && e.code === 'collective-aborted' && !cmd.commit) return;
      this.log.warn({ epoch, err: e.message, code: e.code, stack: e.code === 'internal' ? (e.cause as Error | undefined)?.stack ?? e.stack : undefined }, 'command failed');
      await this.report({ kind: 'FAILED', epoch, step: this.version, error: `${e.code}: ${e.message}` }).catch(() => {});
    }
  }

  private async report(r: Partial<StepReport> & Pick<StepReport, 'kind' | 'epoch' | 'step'>): Promise<void> {
    this.opts.observer?.reported(r, { rank: this.rank, worldSize: this.worldSize });
    await this.unary('report', {
      jobId: this.opts.jobId,
      workerId: this.workerId,
      loss: 0,
      nonFinite: false,
      computeMs: 0,
      allReduceMs: 0,
      optimizerMs: 0,
      samples: 0,
      optimizerStateBytes: this.optimizerStateBytes,
      gradNorm: 0,
      error: '',
      checkpointObjectsJson: '',
      learningRate: 0,
      tokens: 0,
      allReduceBytes: 0,
      skippedSamples: {},
      snapshotMs: 0,
      ...r,
    } satisfies Omit<StepReport, 'kind' | 'epoch' | 'step'> & Pick<StepReport, 'kind' | 'epoch' | 'step'>);
  }

  private callOpts() {
    return { deadlineMs: this.opts.stepDeadlineMs };
  }

  private rangeFor(rank: number, worldSize: number): [number, number] {
    const p = this.model.paramCount;
    if (this.opts.zeroStage === 1) {
      const { start, end } = segmentBounds(p, worldSize, rank);
      return [start, end];
    }
    return [0, p];
  }

  private async reconfigure(c: ReconfigureCommand): Promise<void> {
    await this.untilSnapshotCopied(); // a restore or a sync writes the state
    this.state = 'syncing';
    this.pending = null;
    this.epoch = c.epoch;
    this.rank = c.rank;
    this.worldSize = c.peers.length;
    this.opts.collective.configure({ epoch: c.epoch, rank: c.rank, peers: c.peers });
    const [start, end] = this.rangeFor(c.rank, c.peers.length);
    if (c.restoreStep === -2) {
      if (!this.pristine) {
        this.model.dispose();
        this.model = await this.opts.createModel();
        this.pristine = true;
      }
      this.optimizer = this.model.createOptimizer(start, end);
    } else if (c.restoreStep >= 0) {
      if (!this.opts.store) throw new PartiError('illegal-state', `asked to restore checkpoint ${c.restoreStep} but this worker has no checkpoint store`);
      const state = await this.opts.store.load(c.restoreStep, start, end);
      this.model.params().set(state.params);
      this.model.paramsChanged();
      this.optimizer = this.model.createOptimizer(start, end);
      this.optimizer.importState(state.optimizer);
      this.pristine = false;
    } else if (!this.optimizer || this.optimizer.start !== start || this.optimizer.end !== end) {
      if (this.optimizer && c.syncFromRank < 0) {
        throw new PartiError('illegal-state', `optimizer range changes from [${this.optimizer.start}, ${this.optimizer.end}) to [${start}, ${end}) without a restore`);
      }
      this.optimizer = this.model.createOptimizer(start, end);
    }
    if (c.syncFromRank >= 0) {
      // Parameters and optimizer state from a peer that holds the current step (ZeRO 0 only: the
      // coordinator restores ZeRO-1 jobs from a checkpoint instead).
      const params = this.model.params();
      const opt = this.optimizer!;
      const root = c.rank === c.syncFromRank;
      let mine: Float32Array | null = null;
      if (root) {
        const snap = opt.exportState();
        mine = new Float32Array(params.length + snap.state.length + 1);
        mine.set(params, 0);
        mine.set(snap.state, params.length);
        mine[mine.length - 1] = snap.updates;
      }
      const got = await this.opts.collective.broadcast(c.syncFromRank, mine, this.callOpts());
      if (!root) {
        params.set(got.subarray(0, params.length));
        this.model.paramsChanged();
        opt.importState({ state: got.subarray(params.length, got.length - 1), updates: got[got.length - 1]! });
      }
      this.pristine = false;
    }
    // Reports carry it: computed once per optimizer (a model's stateBytes may copy its state).
    this.optimizerStateBytes = this.optimizer!.stateBytes();
    this.version = c.step;
    this.state = 'idle';
    this.log.info({ epoch: c.epoch, rank: c.rank, world: c.peers.length, step: c.step, sync: c.syncFromRank, restore: c.restoreStep }, 'reconfigured');
    await this.report({ kind: 'READY', epoch: c.epoch, step: c.step });
  }

  private async runStep(s: StepCommand): Promise<void> {
    if (s.epoch !== this.epoch) throw new PartiError('illegal-state', `step ${s.step} of epoch ${s.epoch} while in epoch ${this.epoch}`);
    if (s.step !== this.version) throw new PartiError('illegal-state', `asked for step ${s.step} but the parameters are at step ${this.version}`);
    if (this.state !== 'idle') throw new PartiError('illegal-state', `step ${s.step} while ${this.state}`);
    this.state = 'computing';
    const t0 = performance.now();
    const p = this.model.paramCount;
    // The model mixes the step into its per-sample randomness itself (keyed on sample ids).
    const ctx = { step: s.step, seed: this.opts.seed };
    // Microbatches of at most microBatch samples, summed in a fixed order (bitwise reproducible).
    // Without ZeRO the sum is made in the all-reduce buffer itself (gradient, then 5 statistics):
    // no second copy of the gradient per step.
    const sum = new Float32Array(this.opts.zeroStage === 1 ? p : p + 5);
    let lossSum = 0;
    let samples = 0;
    let tokens = 0;
    const skippedSamples: Record<string, number> = {};
    const micro = Math.max(1, s.microBatch);
    for (let i = 0; i < s.refs.length; i += micro) {
      const g = await this.model.computeGradients({ refs: s.refs.slice(i, i + micro), ids: s.ids.slice(i, i + micro) }, ctx);
      if (i === 0) sum.set(g.grads);
      else for (let j = 0; j < p; j++) sum[j] = sum[j]! + g.grads[j]!;
      lossSum += g.lossSum;
      samples += g.samples;
      tokens += g.tokens;
      for (const [reason, n] of Object.entries(g.skipped ?? {})) skippedSamples[reason] = (skippedSamples[reason] ?? 0) + n;
      if (s.epoch <= this.abortedEpoch) throw new PartiError('collective-aborted', `epoch ${s.epoch} aborted`);
    }
    const t1 = performance.now();
    const [start, end] = this.rangeFor(this.rank, this.worldSize);
    let localNonFinite = Number.isFinite(lossSum) ? 0 : 1;
    let grad: Float32Array;
    let stats: Float32Array;
    let allReduceBytes: number;
    if (this.opts.zeroStage === 1) {
      allReduceBytes = sum.byteLength;
      const part = await this.opts.collective.reduceScatter(sum, { ...this.callOpts(), op: 'sum' });
      if (part.start !== start || part.end !== end) throw new PartiError('internal', `reduce-scatter gave [${part.start}, ${part.end}), the optimizer owns [${start}, ${end})`);
      grad = part.chunk;
      let sq = 0;
      for (let j = 0; j < grad.length; j++) sq += grad[j]! * grad[j]!;
      if (!Number.isFinite(sq)) localNonFinite = 1;
      stats = new Float32Array([lossSum, localNonFinite, sq, samples, tokens]);
      await this.opts.collective.allReduce(stats, { ...this.callOpts(), op: 'sum', inPlace: true });
    } else {
      const buf = sum;
      buf[p] = lossSum;
      buf[p + 1] = localNonFinite;
      buf[p + 3] = samples;
      buf[p + 4] = tokens;
      allReduceBytes = buf.byteLength;
      await this.opts.collective.allReduce(buf, { ...this.callOpts(), op: 'sum', inPlace: true });
      grad = buf.subarray(0, p);
      let sq = 0;
      for (let j = 0; j < p; j++) sq += grad[j]! * grad[j]!;
      buf[p + 2] = sq;
      stats = buf.subarray(p);
    }
    const t2 = performance.now();
    // From here every rank holds bitwise the same reduced numbers, so every rank decides alike.
    // Bad samples skipped by a reader are not in the sums: divide by the samples that counted.
    const divisor = stats[3]! > 0 ? stats[3]! : s.globalBatch;
    const nonFinite = stats[1]! > 0 || !Number.isFinite(stats[2]!) || !Number.isFinite(stats[0]!);
    const norm = Math.sqrt(stats[2]!) / divisor;
    const clip = this.model.clipNorm > 0 && norm > this.model.clipNorm ? this.model.clipNorm / norm : 1;
    // The mean gradient, in place (this step's buffers are not used afterwards).
    const scale = clip / divisor;
    for (let j = 0; j < grad.length; j++) grad[j] = grad[j]! * scale;
    this.pending = { epoch: s.epoch, step: s.step, grad, nonFinite };
    this.state = 'reduced';
    await this.report({
      kind: 'REDUCED',
      epoch: s.epoch,
      step: s.step,
      loss: stats[0]! / divisor,
      nonFinite,
      computeMs: t1 - t0,
      allReduceMs: t2 - t1,
      samples,
      tokens,
      gradNorm: norm,
      allReduceBytes,
      skippedSamples,
      // the rate the commit applies (the coordinator's step summary reads REDUCED reports)
      learningRate: this.optimizer?.learningRate?.(s.step) ?? 0,
      // (and so the previous update's time: this step's update comes after the commit)
      optimizerMs: this.lastOptimizerMs,
    });
  }

  private async commit(epoch: number, step: number): Promise<void> {
    const pending = this.pending;
    if (!pending || pending.step !== step || pending.epoch !== epoch) {
      throw new PartiError('illegal-state', `commit of step ${step} (epoch ${epoch}) but the pending update is ${pending ? `step ${pending.step} of epoch ${pending.epoch}` : 'none'}`);
    }
    const t0 = performance.now();
    await this.untilSnapshotCopied(); // the update below writes the state a checkpoint may still be copying
    let lr = 0;
    const opt = this.optimizer!;
    const params = this.model.params();
    if (!pending.nonFinite) {
      lr = opt.apply(params, pending.grad, step);
      if (this.opts.zeroStage === 1) {
        const full = await this.opts.collective.allGather(params.slice(opt.start, opt.end), { length: params.length }, this.callOpts());
        params.set(full);
      }
      this.model.paramsChanged();
    }
    this.pending = null;
    this.version = step + 1;
    this.applied += 1;
    this.pristine = false;
    this.state = 'idle';
    this.lastOptimizerMs = performance.now() - t0;
    void this.report({ kind: 'APPLIED', epoch, step, optimizerMs: this.lastOptimizerMs, learningRate: lr, nonFinite: pending.nonFinite }).catch(() => {});
  }

  /**
   * Asynchronous checkpoint of the state after `step` steps: copies the parameters (rank 0) and
   * this rank's optimizer state into the reused host buffer (the only time the training thread
   * spends on it), hands them to the store's upload and returns, so that the next command (the
   * next step) runs at once. The state cannot change under the copy: only commit() changes it, and
   * commands run one at a time. The upload's end is reported as CHECKPOINTED (with the objects)
   * or CHECKPOINT_FAILED; every Checkpoint command gets exactly one of them.
   */
  private async checkpoint(epoch: number, step: number): Promise<void> {
    // One upload at a time: the snapshot buffer is reused, and two uploads must not race for a key.
    // The coordinator never asks for overlapping saves, except a restarted one.
    if (this.saving) await this.saving;
    const t0 = performance.now();
    let done: Promise<SavedObject[]>;
    let live: LiveSnapshot | null = null;
    try {
      if (step !== this.version) throw new PartiError('illegal-state', `checkpoint of step ${step} but the parameters are at step ${this.version}`);
      if (!this.opts.store) throw new PartiError('illegal-state', 'asked to checkpoint but this worker has no checkpoint store');
      if (!this.optimizer) throw new PartiError('illegal-state', `checkpoint of step ${step} before this worker joined a ring`);
      this.state = 'checkpointing';
      const opt = this.optimizer;
      // Without sharding every rank holds the same state: rank 0 writes it all.
      if (this.opts.zeroStage !== 1 && this.rank !== 0) {
        done = Promise.resolve([]);
      } else if (this.canSaveLive()) {
        // The upload thread copies the live state while the next step computes; commit() waits
        // for the copy (normally long done) before the update changes it.
        const state = opt.liveState!()!;
        const handle = this.opts.store.saveLive!({
          step,
          rank: this.rank,
          worldSize: this.worldSize,
          params: this.rank === 0 ? this.model.params() : null,
          optimizer: { start: opt.start, end: opt.end, slots: opt.slots, updates: state.updates, state: state.slots },
        });
        const snap: LiveSnapshot = { copied: handle.copied, waitMs: 0, torn: false };
        live = snap;
        this.liveSnapshot = snap;
        void handle.copied.then(() => {
          if (this.liveSnapshot === snap) this.liveSnapshot = null;
        });
        done = handle.done;
      } else {
        const withParams = this.rank === 0;
        const p = withParams ? this.model.paramCount : 0;
        const area = this.snapshotArea(p + opt.slots * (opt.end - opt.start));
        const params = withParams ? area.subarray(0, p) : null;
        params?.set(this.model.params());
        const state = area.subarray(p);
        let updates: number;
        if (opt.exportStateInto) {
          updates = opt.exportStateInto(state);
        } else {
          const snap = opt.exportState();
          state.set(snap.state);
          updates = snap.updates;
        }
        done = this.opts.store.save({ step, rank: this.rank, worldSize: this.worldSize, params, optimizer: { start: opt.start, end: opt.end, slots: opt.slots, updates, state } });
      }
    } catch (err) {
      done = Promise.reject(err);
    } finally {
      this.state = 'idle';
    }
    const handOffMs = performance.now() - t0;
    const saving: Promise<void> = done
      .finally(() => this.opts.observer?.checkpointEnded(performance.now() - t0))
      .then((objects) => {
        if (live?.torn) throw new PartiError('checkpoint', `the state changed before the upload thread had copied it (not within ${this.opts.stepDeadlineMs} ms)`);
        return objects;
      })
      .then(
        (objects) => this.report({ kind: 'CHECKPOINTED', epoch, step, snapshotMs: handOffMs + (live?.waitMs ?? 0), checkpointObjectsJson: JSON.stringify(objects) }),
        (err: unknown) => {
          const e = PartiError.from(err, 'checkpoint');
          this.log.warn({ step, err: e.message }, 'checkpoint save failed; training goes on, the next checkpoint step saves again');
          return this.report({ kind: 'CHECKPOINT_FAILED', epoch, step, snapshotMs: handOffMs + (live?.waitMs ?? 0), error: `${e.code}: ${e.message}` });
        },
      )
      .catch((err: Error) => this.log.warn({ step, err: err.message }, 'cannot report the end of a checkpoint upload'))
      .finally(() => {
        if (this.saving === saving) this.saving = null;
      });
    this.saving = saving;
  }

  /** The store can copy from the live state: it is in shared memory, and the optimizer lends it. */
  private canSaveLive(): boolean {
    const opt = this.optimizer;
    const state = opt?.liveState?.();
    if (!this.opts.store?.saveLive || !state) return false;
    const shared = (a: Float32Array) => a.buffer instanceof SharedArrayBuffer;
    return state.slots.every(shared) && (this.rank !== 0 || shared(this.model.params()));
  }

  /** Waits until no checkpoint copies the live state (before anything changes it). */
  private async untilSnapshotCopied(): Promise<void> {
    const snap = this.liveSnapshot;
    if (!snap) return;
    const t0 = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), this.opts.stepDeadlineMs)));
    const outcome = await Promise.race([snap.copied.then(() => 'copied' as const), late]);
    clearTimeout(timer);
    if (outcome === 'late') {
      snap.torn = true;
      this.log.warn({ ms: this.opts.stepDeadlineMs }, 'the checkpoint upload thread did not copy the state within the step deadline; that save is void');
    }
    snap.waitMs += performance.now() - t0;
    if (this.liveSnapshot === snap) this.liveSnapshot = null;
  }

  /** The reused snapshot buffer, of exactly `floats` floats. */
  private snapshotArea(floats: number): Float32Array {
    if (this.snapshotBuffer?.length !== floats) this.snapshotBuffer = new Float32Array(new SharedArrayBuffer(floats * 4));
    return this.snapshotBuffer;
  }

  /** Waits for the checkpoint upload in flight to end and be reported (at most the step deadline). */
  private async settleSave(): Promise<void> {
    const saving = this.saving;
    if (!saving) return;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), this.opts.stepDeadlineMs)));
    if ((await Promise.race([saving, late])) === 'late') this.log.warn({ ms: this.opts.stepDeadlineMs }, 'a checkpoint upload did not end within the step deadline; stopping without it');
    clearTimeout(timer);
  }

  /** The parameters (for tests and the final sample image). */
  params(): Float32Array {
    return this.model.params();
  }
}
