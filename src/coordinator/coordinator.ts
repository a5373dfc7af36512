/**
 * The coordinator of one job, as an explicit state machine. It owns membership (ranks, ring
 * order, membership epochs), the step clock and the step plan; it detects dead workers, aborts
 * what was in flight and re-forms the ring; it commits a step only once every rank of the epoch
 * holds the reduced gradient, so a step is applied exactly once or not at all. It never touches a
 * gradient or a sample: it sends sample indices and reads reports.
 */
import { randomUUID } from 'node:crypto';
import { log as rootLog } from '../observability/log.ts';
import { PartiError } from '../errors.ts';
import { z } from 'zod';
import { Ledger } from './ledger.ts';
import { checkpointObjectSchema, expectedObjectKeys, isCheckpointObjectKey } from '../storage/checkpoint-manifest.ts';
import type { StepPlan } from './step-samples.ts';
import { JoinRefusedError, type Command, type JoinReply, type JoinRequest, type StepReport } from './protocol.ts';

/** What the coordinator needs to know about the job. Resolved once by the caller. */
export interface CoordinatorOptions {
  /** Workers must present this job id (and config hash), or they are refused. */
  jobId: string;
  /** configHash() of the job's config. */
  configHash: string;
  /** Optimizer steps of the job. */
  totalSteps: number;
  /** Largest batch one forward/backward runs at once on a worker. */
  microBatch: number;
  /** Which samples each step consumes (the data plan over the step clock). */
  plan: StepPlan;
  /** The job starts when this many workers have joined; the ring never grows beyond it. */
  targetWorkers: number;
  /** The job goes on while at least this many workers are alive (elastic down to it). */
  minWorkers: number;
  /** Workers heartbeat this often (ms); the coordinator checks liveness twice as often. */
  heartbeatMs: number;
  /** A worker silent this long is declared dead (ms). */
  failureTimeoutMs: number;
  /**
   * A step or re-form that takes longer is aborted (ms). A checkpoint save that takes longer is
   * given up (reported, not committed); training goes on.
   */
  stepDeadlineMs: number;
  /** ZeRO stage 1: optimizer state is sharded, so a lost member means restoring from a checkpoint. */
  zeroStage: 0 | 1;
  /** Checkpoint every this many steps (0: none periodically). */
  checkpointEvery: number;
  /** Checkpoint once more when the job ends or is stopped. */
  checkpointAtEnd: boolean;
  /** Where committed checkpoints live; null: none are written. */
  checkpoints: CheckpointCommitter | null;
  /** Ledger file (test mode) or null. */
  ledgerFile: string | null;
}

/** A checkpoint object one worker wrote. */
export interface CheckpointObject {
  name: string;
  key: string;
  size: number;
  sha256: string;
}

/** What the coordinator needs from checkpoint storage: where to resume, and the manifest commit. */
export interface CheckpointCommitter {
  /** The newest committed step, or null when there is none. */
  latestStep(): Promise<number | null>;
  /** Checks that `step` is committed and loads; throws a one-line error naming it (and the committed steps) if not. */
  verifyStep?(step: number): Promise<void>;
  /** Writes the manifest of step `step` listing every object (after they all landed). */
  commit(step: number, worldSize: number, objects: CheckpointObject[]): Promise<void>;
}

/** A connected worker as the coordinator sees it. */
interface Member {
  readonly id: string;
  readonly name: string;
  readonly collectiveAddress: string;
  readonly joinedAt: number;
  lastHeartbeat: number;
  /** Sends a command on the worker's stream; null until the stream is open. */
  send: ((cmd: Command) => void) | null;
  /** Ends the worker's stream (it was declared dead: if it lives, it must join again). */
  end: (() => void) | null;
  /** Asked to leave at the next step boundary. */
  leaving: boolean;
  /** Holds the parameters and optimizer state of the current step (can be a sync source). */
  synced: boolean;
  state: string;
}

/**
 * Lifecycle of the job. `between-steps` is the only state where membership may change.
 * `checkpointing` waits at a step boundary for the checkpoint save in flight to end (committed or
 * failed): before a change of the ring, before the job stops, and when the next checkpoint is due
 * while the previous one still uploads (at most one save in flight). Periodic saves do not stop
 * the steps: they run in the background (see CheckpointSave). Its `step` and `objects` are those
 * of the save waited for (the current step and none when it waits for an older save to settle).
 */
export type CoordinatorPhase =
  | { kind: 'waiting-for-workers' }
  | { kind: 'between-steps' }
  | { kind: 'forming'; epoch: number; pending: Set<string>; startedAt: number }
  | { kind: 'stepping'; epoch: number; step: number; pending: Set<string>; reports: StepReport[]; startedAt: number }
  | { kind: 'checkpointing'; epoch: number; step: number; startedAt: number; objects: CheckpointObject[] }
  | { kind: 'backoff'; until: number }
  | { kind: 'done'; reason: string };

/**
 * A checkpoint save in flight: every rank of the ring of `epoch` snapshots the state after `step`
 * steps and uploads it in the background while the next steps run; the manifest is committed once
 * all of them reported CHECKPOINTED. Objects of one save all come from one ring (one epoch): a
 * save whose ring loses a member is dropped, never committed.
 */
export interface CheckpointSave {
  step: number;
  epoch: number;
  /** The ring that saves it (rank order). */
  ring: string[];
  /** Ranks that have not reported their upload yet. */
  pending: Set<string>;
  objects: CheckpointObject[];
  startedAt: number;
  /** The manifest is being written: the save can no longer be dropped. */
  committing: boolean;
  /** Longest training-thread snapshot of a rank (ms). */
  snapshotMs: number;
}

/** A committed step, for listeners (dashboard, tests, benchmarks). */
export interface StepSummary {
  step: number;
  epoch: number;
  worldSize: number;
  loss: number;
  skipped: boolean;
  /** Slowest rank's compute, all-reduce and optimizer times (ms). */
  computeMs: number;
  /** The slowest rank's all-reduce time of the gradient (ms), including waiting for its peers. */
  allReduceMs: number;
  /**
   * Bytes of the gradient buffer each rank all-reduced in this step: the nccl-tests `size` (4 x
   * (parameters + 5 reduced statistics)). Bus bandwidth as nccl-tests defines it:
   * busbw = allReduceBytes / allReduceMs x 2(N-1)/N for `allReduceOp` 'all-reduce', x (N-1)/N for
   * 'reduce-scatter' (ZeRO stage 1). 0 when the ranks did not report it.
   */
  allReduceBytes: number;
  /** The collective that reduced the gradient: 'all-reduce', or 'reduce-scatter' with ZeRO stage 1. */
  allReduceOp: 'all-reduce' | 'reduce-scatter';
  /**
   * Samples the data readers skipped during this step (new skips, summed over the ranks), by
   * reason (the reader's bad-sample policy: e.g. 'decode', 'truncated'); {} when none.
   */
  skippedSamples: Record<string, number>;
  /**
   * The slowest rank's optimizer update (with ZeRO stage 1, and its all-gather) of the step
   * before this one: this step's update runs after the commit this summary announces. 0 for a
   * rank's first step.
   */
  optimizerMs: number;
  /** Wall time from sending the step to the last REDUCED report (ms). */
  stepMs: number;
  samples: number;
  tokens: number;
  gradNorm: number;
  learningRate: number;
  /** Optimizer-state bytes per worker (rank order). */
  optimizerStateBytes: number[];
  committedAt: number;
}

/** Something that happened, for logs and the dashboard's event list. */
export interface CoordinatorEvent {
  at: number;
  kind: 'join' | 'refused' | 'failure' | 'abort' | 'reform' | 'leave' | 'skipped-step' | 'checkpoint' | 'done' | 'waiting';
  message: string;
  /**
   * `checkpoint` events: the committed checkpoint (saves are asynchronous, so the coordinator's
   * step and phase have usually moved on when it commits). A save that fails is logged and
   * counted (`failedSaves`), not committed; the next checkpoint step saves again.
   */
  checkpoint?: {
    step: number;
    /** Bytes of its objects. */
    bytes: number;
    /** When the save started (ms since the epoch); the commit is the event's `at`. */
    startedAt: number;
    /** The slowest rank's training-thread snapshot (ms). */
    snapshotMs: number;
  };
}

export class Coordinator {
  readonly opts: CoordinatorOptions;
  phase: CoordinatorPhase = { kind: 'waiting-for-workers' };
  /** Optimizer steps committed (the parameters are the result of this many). */
  step = 0;
  /**
   * Membership epoch; bumped at every re-form. It starts at the clock (ms) so that the epochs of a
   * restarted coordinator are newer than any its workers saw before (collectives refuse old ones).
   */
  epoch = Date.now();
  /** Member ids in ring (rank) order for the current epoch. */
  ring: string[] = [];
  readonly members = new Map<string, Member>();
  skippedSteps = 0;
  /** The checkpoint save in flight (at most one), or null. */
  checkpointSave: CheckpointSave | null = null;
  /** Saves that failed (a rank's upload, a refused report, the manifest commit, a deadline). */
  failedSaves = 0;
  /**
   * Members sent a Checkpoint command they have not answered yet: their upload may still run (also
   * for a save that was dropped). A new save waits for them, so that two uploads never race for
   * the same object key.
   */
  private readonly uploading = new Set<string>();
  /** Parameters of the model every worker must have (set by the first join). */
  private paramCount: number | null = null;
  /** Epochs aborted since the last committed step: past MAX_ABORTS the job fails instead of looping. */
  private abortsSinceCommit = 0;
  /** Something was aborted since the last re-form (with ZeRO-1 a half-applied commit is possible). */
  private troubled = false;
  /** The current epoch was aborted: the next step boundary re-forms, even with the same members. */
  private reformNeeded = false;
  started = false;
  /** Restore from this checkpoint step at the next re-form (set after recovery or total loss). */
  private restoreStep: number | null = null;
  private lastCheckpointStep: number | null = null;
  private stopReason: string | null = null;
  private readonly ledger: Ledger | null;
  private readonly timer: NodeJS.Timeout;
  private readonly log = rootLog.child({ role: 'coordinator' });
  private doneResolve!: (summary: { step: number; reason: string }) => void;
  /** Resolves when the job has finished (all steps done, or stopped). */
  readonly done: Promise<{ step: number; reason: string }>;
  readonly history: StepSummary[] = [];
  readonly events: CoordinatorEvent[] = [];
  private readonly listeners = new Set<(e: { type: 'step'; step: StepSummary } | { type: 'event'; event: CoordinatorEvent }) => void>();

  constructor(opts: CoordinatorOptions) {
    this.opts = opts;
    this.ledger = opts.ledgerFile ? new Ledger(opts.ledgerFile) : null;
    this.done = new Promise((resolve) => (this.doneResolve = resolve));
    this.timer = setInterval(() => this.tick(), Math.max(20, Math.floor(opts.heartbeatMs / 2)));
    this.timer.unref();
  }

  /**
   * Recovers the step clock from the latest committed checkpoint (a restarted coordinator), or from
   * exactly `resume` when it is a step (`--resume STEP`: no fallback; an error when it does not load).
   */
  async recover(resume: 'latest' | number = 'latest'): Promise<void> {
    if (resume !== 'latest') {
      if (!this.opts.checkpoints?.verifyStep) throw new PartiError('checkpoint', `--resume ${resume}: this job has no checkpoint storage to resume from`);
      await this.opts.checkpoints.verifyStep(resume);
      this.step = resume;
      this.lastCheckpointStep = resume;
      this.restoreStep = resume;
      this.log.info({ step: resume }, 'resuming the job from the requested committed checkpoint');
      this.ledger?.truncateTo(this.step);
      return;
    }
    const latest = this.opts.checkpoints ? await this.opts.checkpoints.latestStep() : null;
    if (latest !== null) {
      this.step = latest;
      this.lastCheckpointStep = latest;
      this.restoreStep = latest;
      this.log.info({ step: latest }, 'recovering the job from the latest committed checkpoint');
    }
    this.ledger?.truncateTo(this.step);
  }

  /** Subscribes to committed steps and events; returns the unsubscribe function. */
  subscribe(fn: (e: { type: 'step'; step: StepSummary } | { type: 'event'; event: CoordinatorEvent }) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private event(kind: CoordinatorEvent['kind'], message: string, fields: Record<string, unknown> = {}, checkpoint?: CoordinatorEvent['checkpoint']): void {
    const e: CoordinatorEvent = { at: Date.now(), kind, message, ...(checkpoint ? { checkpoint } : {}) };
    this.events.push(e);
    if (this.events.length > 1000) this.events.shift();
    const level = kind === 'refused' || kind === 'failure' || kind === 'abort' ? 'warn' : 'info';
    this.log[level]({ ...fields, event: kind, step: this.step, epoch: this.epoch }, message);
    for (const fn of this.listeners) fn({ type: 'event', event: e });
  }

  // ---- RPC entry points (called by the gRPC service) ----

  /** A worker joins. Throws PartiError('refused') for another job or config. */
  join(req: JoinRequest): JoinReply {
    if (req.jobId !== this.opts.jobId || req.configHash !== this.opts.configHash) {
      const why =
        req.jobId !== this.opts.jobId
          ? `job id ${JSON.stringify(req.jobId)} is not this job's (${JSON.stringify(this.opts.jobId)})`
          : `config hash ${req.configHash} differs from this job's ${this.opts.configHash}`;
      this.event('refused', `refused worker ${req.workerName}: ${why}`);
      throw new PartiError('refused', why);
    }
    if (this.phase.kind === 'done') {
      // JoinRefusal.finished tells a worker the job is done (it exits 0: an Indexed Job completes
      // its index). A job that was stopped or failed before its last step is not done: the worker
      // is told to try again, and a coordinator restarted from the checkpoint will take it. (The
      // text "has finished" stays for workers that predate the typed field.)
      if (this.ranAllSteps) throw new JoinRefusedError(`job ${this.opts.jobId} has finished`, { finished: true });
      throw new PartiError('illegal-state', `job ${this.opts.jobId} stopped at step ${this.step} of ${this.opts.totalSteps} (${this.phase.reason}); try again when it resumes`);
    }
    const fields = joinFieldsSchema.safeParse({ workerName: req.workerName, collectiveAddress: req.collectiveAddress, paramCount: req.paramCount });
    if (!fields.success) {
      const issue = fields.error.issues[0]!;
      const why = `join ${issue.path.map(String).join('.')}: ${issue.message} (got ${JSON.stringify(String((req as unknown as Record<string, unknown>)[String(issue.path[0])]).slice(0, 80))})`;
      this.event('refused', `refused worker ${JSON.stringify(String(req.workerName).slice(0, 80))}: ${why}`);
      throw new PartiError('refused', why);
    }
    if (this.paramCount !== null && req.paramCount !== this.paramCount) {
      const why = `its model has ${req.paramCount} parameters, this job's has ${this.paramCount}`;
      this.event('refused', `refused worker ${req.workerName}: ${why}`);
      throw new PartiError('refused', why);
    }
    this.paramCount = req.paramCount;
    const id = randomUUID().slice(0, 8);
    const now = Date.now();
    this.members.set(id, {
      id,
      name: req.workerName,
      collectiveAddress: req.collectiveAddress,
      joinedAt: now,
      lastHeartbeat: now,
      send: null,
      end: null,
      leaving: false,
      synced: false,
      state: 'joined',
    });
    this.event('join', `worker ${req.workerName} joined as ${id}`, { worker: id });
    return { workerId: id, jobId: this.opts.jobId, configHash: this.opts.configHash, heartbeatMs: this.opts.heartbeatMs };
  }

  /** The worker's command stream opened. */
  attach(workerId: string, send: (cmd: Command) => void, end: () => void): void {
    const m = this.members.get(workerId);
    if (!m) throw new PartiError('refused', `unknown worker ${workerId} (join first)`);
    m.send = send;
    m.end = end;
    m.lastHeartbeat = Date.now();
    this.advance();
  }

  /** The worker's command stream closed: it died or lost the connection. */
  detach(workerId: string, why: string): void {
    if (this.members.has(workerId)) this.removeMember(workerId, `command stream closed (${why})`);
  }

  /** A heartbeat; false when the worker is unknown (it must join again). */
  heartbeat(workerId: string, state: string): boolean {
    const m = this.members.get(workerId);
    if (!m) return false;
    m.lastHeartbeat = Date.now();
    m.state = state;
    return true;
  }

  /** A worker asks to leave at the next step boundary. */
  leave(workerId: string, reason: string): boolean {
    const m = this.members.get(workerId);
    if (!m) return false;
    m.leaving = true;
    this.event('leave', `worker ${m.name} (${workerId}) leaves at the next step boundary: ${reason}`, { worker: workerId });
    this.advance();
    return true;
  }

  /** A report; false when it is stale (another epoch or step) and was ignored. */
  report(r: StepReport): boolean {
    const m = this.members.get(r.workerId);
    if (!m) return false;
    m.lastHeartbeat = Date.now();
    if (r.kind === 'CHECKPOINTED' || r.kind === 'CHECKPOINT_FAILED') return this.saveReport(m, r);
    const p = this.phase;
    if (r.kind === 'FAILED') {
      if ((p.kind === 'forming' || p.kind === 'stepping' || p.kind === 'checkpointing') && r.epoch === p.epoch) {
        this.log.warn({ worker: r.workerId, epoch: r.epoch, error: r.error }, 'a worker failed in this epoch');
        this.abortEpoch(`worker ${m.name} failed: ${r.error}`);
      }
      return true;
    }
    if (p.kind === 'forming' && r.kind === 'READY' && r.epoch === p.epoch) {
      p.pending.delete(r.workerId);
      m.synced = true;
      if (p.pending.size === 0) {
        this.phase = { kind: 'between-steps' };
        this.advance();
      }
      return true;
    }
    if (p.kind === 'stepping' && r.kind === 'REDUCED' && r.epoch === p.epoch && r.step === p.step) {
      if (!p.pending.delete(r.workerId)) return false;
      p.reports.push(r);
      if (p.pending.size === 0) this.commitStep(p);
      return true;
    }
    return r.kind === 'APPLIED';
  }

  /**
   * A rank's upload of the save in flight ended (CHECKPOINTED with its objects, or
   * CHECKPOINT_FAILED). Reports of another save (a dropped one, an older epoch) only tell that
   * the rank's upload is over. Throws PartiError('refused') for an object list that fails its
   * schema; that save is dropped.
   */
  private saveReport(m: Member, r: StepReport): boolean {
    this.uploading.delete(m.id);
    const s = this.checkpointSave;
    let accepted = false;
    let refusal: PartiError | null = null;
    if (s && !s.committing && r.epoch === s.epoch && r.step === s.step && s.pending.has(m.id)) {
      accepted = true;
      s.pending.delete(m.id);
      s.snapshotMs = Math.max(s.snapshotMs, r.snapshotMs ?? 0);
      if (r.kind === 'CHECKPOINT_FAILED') {
        this.dropSave(`worker ${m.name} could not save its part: ${r.error}`);
      } else {
        const objects = parseCheckpointObjects(r.checkpointObjectsJson, s.step);
        if (typeof objects === 'string') {
          refusal = new PartiError('refused', `checkpoint report of worker ${m.name} for step ${s.step}: ${objects}`);
          this.event('refused', refusal.message, { worker: m.id });
          this.dropSave(refusal.message);
        } else {
          s.objects.push(...objects);
          if (s.pending.size === 0) void this.commitSave(s);
        }
      }
    }
    this.saveSettled();
    if (refusal) throw refusal;
    return accepted;
  }

  /** Asks the job to stop at the next step boundary (after a checkpoint). */
  requestStop(reason: string): void {
    if (this.stopReason) return;
    this.stopReason = reason;
    this.event('done', `stop requested: ${reason}`);
    this.advance();
  }

  close(): void {
    clearInterval(this.timer);
  }

  // ---- the state machine ----

  private send(id: string, cmd: Command): void {
    const m = this.members.get(id);
    if (!m?.send) return;
    try {
      m.send(cmd);
    } catch (err) {
      this.removeMember(id, `cannot send a command: ${(err as Error).message}`);
    }
  }

  private tick(): void {
    const now = Date.now();
    for (const m of [...this.members.values()]) {
      if (now - m.lastHeartbeat > this.opts.failureTimeoutMs) this.removeMember(m.id, `no heartbeat for ${now - m.lastHeartbeat} ms`);
    }
    const s = this.checkpointSave;
    if (s && !s.committing && now - s.startedAt > this.opts.stepDeadlineMs) {
      this.dropSave(`not saved within the deadline of ${this.opts.stepDeadlineMs} ms (${s.pending.size} ranks still uploading)`);
      this.saveSettled();
    }
    const p = this.phase;
    if ((p.kind === 'stepping' || p.kind === 'forming') && now - p.startedAt > this.opts.stepDeadlineMs) {
      this.abortEpoch(`${p.kind === 'stepping' ? `step ${p.step}` : p.kind} passed its deadline of ${this.opts.stepDeadlineMs} ms`);
    } else if (p.kind === 'checkpointing' && now - p.startedAt > this.opts.stepDeadlineMs) {
      this.stopWaitingForSave();
    } else if (p.kind === 'backoff' && now >= p.until) {
      this.phase = { kind: 'between-steps' };
      this.advance();
    }
  }

  private removeMember(id: string, why: string): void {
    const m = this.members.get(id);
    if (!m) return;
    this.members.delete(id);
    m.end?.();
    this.uploading.delete(id);
    // A save missing a rank can never be complete; one whose manifest is being written stands.
    const save = this.checkpointSave;
    if (save && !save.committing && save.ring.includes(id)) this.dropSave(`worker ${m.name} is gone`);
    const inRing = this.ring.includes(id);
    this.event('failure', `worker ${m.name} (${id}) is gone: ${why}`, { worker: id });
    if (!inRing) {
      this.saveSettled();
      return;
    }
    const p = this.phase;
    if (p.kind === 'forming' || p.kind === 'stepping' || p.kind === 'checkpointing') {
      this.abortEpoch(`worker ${m.name} is gone`, 0);
    } else {
      this.advance();
    }
  }

  /** Aborts what is in flight in the current epoch on every member; re-forms after `backoffMs`. */
  private abortEpoch(reason: string, backoffMs = Math.min(500, this.opts.heartbeatMs)): void {
    const p = this.phase;
    if (p.kind !== 'forming' && p.kind !== 'stepping' && p.kind !== 'checkpointing') return;
    this.event('abort', `aborting epoch ${p.epoch} (${p.kind}${p.kind === 'stepping' ? ` step ${p.step}` : ''}): ${reason}`);
    this.troubled = true;
    if (++this.abortsSinceCommit > MAX_ABORTS) {
      for (const id of this.ring) this.send(id, { abort: { epoch: p.epoch, reason } });
      this.ring = [];
      this.phase = { kind: 'between-steps' };
      this.failed = `${MAX_ABORTS} aborts in a row at step ${this.step}; last: ${reason}`;
      this.finish(`failed: ${this.failed}`);
      return;
    }
    // A hand-over cut half way changes nothing: a worker takes the broadcast state only once it
    // has all of it, so members that held the step's state still do.
    for (const id of this.ring) this.send(id, { abort: { epoch: p.epoch, reason } });
    // Re-form even when the same members remain: the collectives of this epoch are aborted.
    this.reformNeeded = true;
    this.phase = backoffMs > 0 ? { kind: 'backoff', until: Date.now() + backoffMs } : { kind: 'between-steps' };
    if (backoffMs === 0) this.advance();
  }

  /** Decides what to do next when nothing is in flight. */
  private advance(): void {
    const p = this.phase;
    if (p.kind !== 'between-steps' && p.kind !== 'waiting-for-workers') return;
    if (this.step >= this.opts.totalSteps || this.stopReason) {
      this.finish(this.stopReason ?? 'all steps done');
      return;
    }
    const alive = [...this.members.values()].filter((m) => m.send && !m.leaving);
    const need = this.started ? this.opts.minWorkers : this.opts.targetWorkers;
    const desired = alive.length >= need ? this.desiredRing(alive) : null;
    const changing = this.reformNeeded || desired === null || !sameRing(desired, this.ring);
    if (changing && this.checkpointSave) {
      // The save in flight ends first (committed or failed): a re-form may roll the step back or
      // re-cut the optimizer shards, and a manifest mixes no epochs.
      this.waitForSave();
      return;
    }
    if (changing && this.checkpointBeforeChange(desired === null)) return;
    if (desired === null) {
      if (p.kind !== 'waiting-for-workers') this.event('waiting', `waiting for workers: ${alive.length} alive, ${need} needed`);
      this.phase = { kind: 'waiting-for-workers' };
      this.stopLeavers(); // leavers out of the ring can go
      return;
    }
    if (changing) {
      this.reform(desired);
      return;
    }
    this.phase = { kind: 'between-steps' };
    if (this.checkpointDue()) {
      // At most one save in flight: when the previous one still uploads, this boundary waits for it.
      if (this.saveBusy()) {
        this.waitForSave();
        return;
      }
      // Asynchronous: every rank snapshots the state before it runs the step sent next, and
      // uploads while it computes; the manifest is committed when all uploads have landed.
      this.startSave();
    }
    this.startStep();
  }

  /**
   * A planned change of the ring (workers leaving or joining, every current member still alive)
   * first checkpoints the current step when the state would otherwise go: with ZeRO-1 (optimizer
   * shards follow the ring; the new ring restores from the checkpoint) and when the job is about
   * to wait because the leavers take it below its minimum. No step is lost. Returns whether a
   * checkpoint started.
   */
  private checkpointBeforeChange(goingToWait: boolean): boolean {
    if (this.opts.zeroStage !== 1 && !goingToWait) return false;
    if (!this.opts.checkpoints || this.reformNeeded || this.ring.length === 0) return false;
    if (this.lastCheckpointStep === this.step || this.failedCheckpointStep === this.step) return false;
    if (!this.ring.every((id) => this.members.get(id)?.send)) return false;
    if (!this.saveBusy()) this.startSave();
    this.waitForSave();
    return true;
  }

  /** Survivors keep their order; joiners fill up to the target size, oldest first. */
  private desiredRing(alive: Member[]): string[] {
    const aliveIds = new Set(alive.map((m) => m.id));
    const ring = this.ring.filter((id) => aliveIds.has(id));
    const joiners = alive.filter((m) => !ring.includes(m.id)).sort((a, b) => a.joinedAt - b.joinedAt);
    for (const m of joiners) if (ring.length < this.opts.targetWorkers) ring.push(m.id);
    return ring;
  }

  private reform(ring: string[]): void {
    const previous = this.ring;
    this.reformNeeded = false;
    this.stopLeavers(ring);
    this.epoch += 1;
    this.started = true;
    const members = ring.map((id) => this.members.get(id)!);
    let restoreStep = -1;
    let reset = false;
    let syncFrom = -1;
    // With ZeRO-1 optimizer shards follow the ring: another ring needs them re-cut, which only a
    // checkpoint can do (a lost member took its shard along), and an aborted commit may have
    // updated some shards and not others.
    const reshard = this.opts.zeroStage === 1 && (this.troubled || (previous.length > 0 && !sameRing(previous, ring)));
    this.troubled = false;
    if (this.restoreStep !== null || reshard || members.every((m) => !m.synced)) {
      // No member holds the state of the current step (or a ZeRO shard was lost): go back to the
      // latest checkpoint, or to the start when there is none.
      const from = this.restoreStep ?? this.lastCheckpointStep;
      if (from !== null) {
        restoreStep = from;
      } else {
        reset = true;
      }
      this.rollBackTo(from ?? 0);
    } else {
      const source = members.findIndex((m) => m.synced);
      if (members.some((m) => !m.synced)) syncFrom = source;
    }
    this.restoreStep = null;
    this.ring = ring;
    const peers = members.map((m) => m.collectiveAddress);
    this.event('reform', `membership epoch ${this.epoch}: ${ring.length} workers [${members.map((m) => m.name).join(', ')}] at step ${this.step}` +
      (syncFrom >= 0 ? `, state from rank ${syncFrom}` : '') + (restoreStep >= 0 ? `, restoring checkpoint ${restoreStep}` : '') + (reset ? ', from initialization' : ''));
    this.phase = { kind: 'forming', epoch: this.epoch, pending: new Set(ring), startedAt: Date.now() };
    ring.forEach((id, rank) =>
      this.send(id, {
        reconfigure: { epoch: this.epoch, rank, peers, syncFromRank: syncFrom, restoreStep: reset ? -2 : restoreStep, step: this.step },
      }),
    );
  }

  private rollBackTo(step: number): void {
    if (step !== this.step) this.event('reform', `rolling back from step ${this.step} to step ${step}`);
    // Nobody holds the state of that step until it has restored it (reported READY).
    for (const m of this.members.values()) m.synced = false;
    this.step = step;
    this.ledger?.truncateTo(step);
  }

  private stopLeavers(keep: string[] = []): void {
    for (const m of [...this.members.values()]) {
      if (m.leaving && !keep.includes(m.id)) {
        this.send(m.id, { stop: { reason: 'left at a step boundary', finished: false } });
        this.members.delete(m.id);
        this.uploading.delete(m.id);
        this.ring = this.ring.filter((id) => id !== m.id);
      }
    }
  }

  private startStep(): void {
    const batch = this.opts.plan.samplesOf(this.step);
    const n = this.ring.length;
    this.phase = { kind: 'stepping', epoch: this.epoch, step: this.step, pending: new Set(this.ring), reports: [], startedAt: Date.now() };
    this.ring.forEach((id, rank) => {
      const part = this.opts.plan.rankPart(batch, n, rank);
      this.send(id, {
        step: { epoch: this.epoch, step: this.step, refs: part.refs, ids: part.ids, globalBatch: batch.refs.length, microBatch: this.opts.microBatch },
      });
    });
  }

  private commitStep(p: Extract<CoordinatorPhase, { kind: 'stepping' }>): void {
    const skipped = p.reports.some((r) => r.nonFinite);
    if (this.ledger) {
      const { refs, ids } = this.opts.plan.samplesOf(p.step);
      // The decision point: every rank holds the reduced gradient, so the step is applied exactly once.
      this.ledger.append({ step: p.step, samples: refs.map((r, i) => [r.epoch, ids[i]!]), worldSize: this.ring.length, skipped });
    }
    this.step = p.step + 1;
    this.abortsSinceCommit = 0;
    for (const id of this.ring) this.send(id, { commit: { epoch: p.epoch, step: p.step } });
    const byRank = this.ring.map((id) => p.reports.find((r) => r.workerId === id)!);
    const max = (f: (r: StepReport) => number) => Math.max(...p.reports.map(f));
    const skippedSamples: Record<string, number> = {};
    for (const r of p.reports) for (const [reason, n] of Object.entries(r.skippedSamples ?? {})) skippedSamples[reason] = (skippedSamples[reason] ?? 0) + n;
    const summary: StepSummary = {
      step: p.step,
      epoch: p.epoch,
      worldSize: this.ring.length,
      loss: p.reports[0]!.loss,
      skipped,
      computeMs: max((r) => r.computeMs),
      allReduceMs: max((r) => r.allReduceMs),
      allReduceBytes: max((r) => r.allReduceBytes ?? 0),
      allReduceOp: this.opts.zeroStage === 1 ? 'reduce-scatter' : 'all-reduce',
      skippedSamples,
      optimizerMs: max((r) => r.optimizerMs),
      stepMs: Date.now() - p.startedAt,
      samples: p.reports.reduce((n, r) => n + r.samples, 0),
      tokens: p.reports.reduce((n, r) => n + r.tokens, 0),
      gradNorm: p.reports[0]!.gradNorm,
      learningRate: p.reports[0]!.learningRate,
      optimizerStateBytes: byRank.map((r) => r.optimizerStateBytes),
      committedAt: Date.now(),
    };
    if (skipped) {
      this.skippedSteps += 1;
      this.event('skipped-step', `step ${p.step} skipped on every rank: non-finite gradient (${this.skippedSteps} so far)`);
    }
    this.history.push(summary);
    if (this.history.length > 100_000) this.history.shift();
    for (const fn of this.listeners) fn({ type: 'step', step: summary });
    this.phase = { kind: 'between-steps' };
    this.advance();
  }

  private checkpointDue(): boolean {
    if (!this.opts.checkpoints || this.lastCheckpointStep === this.step || this.failedCheckpointStep === this.step) return false;
    return this.opts.checkpointEvery > 0 && this.step % this.opts.checkpointEvery === 0 && this.step > 0;
  }

  /** A save is in flight, or a rank still uploads one (a dropped save's upload ends first). */
  private saveBusy(): boolean {
    return this.checkpointSave !== null || this.uploading.size > 0;
  }

  /**
   * Starts the save of the current step on every rank of the ring. The Checkpoint command comes
   * before the next Step on each command stream, so every rank snapshots exactly this step.
   */
  private startSave(): void {
    const save: CheckpointSave = {
      step: this.step,
      epoch: this.epoch,
      ring: [...this.ring],
      pending: new Set(this.ring),
      objects: [],
      startedAt: Date.now(),
      committing: false,
      snapshotMs: 0,
    };
    this.checkpointSave = save;
    for (const id of this.ring) this.uploading.add(id);
    for (const id of this.ring) this.send(id, { checkpoint: { step: save.step, epoch: save.epoch } });
  }

  /** Waits at this step boundary until no save is in flight (saveSettled goes on). */
  private waitForSave(): void {
    const s = this.checkpointSave;
    this.phase = { kind: 'checkpointing', epoch: this.epoch, step: s?.step ?? this.step, startedAt: Date.now(), objects: s?.objects ?? [] };
    this.saveSettled();
  }

  /** A save or an upload ended: a boundary that waited for it goes on. */
  private saveSettled(): void {
    if (this.phase.kind === 'checkpointing' && !this.saveBusy()) {
      this.phase = { kind: 'between-steps' };
      this.advance();
    }
  }

  /** The save in flight failed: nothing of it is committed; the next checkpoint step saves again. */
  private dropSave(reason: string): void {
    const s = this.checkpointSave;
    if (!s || s.committing) return;
    this.checkpointSave = null;
    this.failedSaves += 1;
    // a boundary that waited for this very save must not start it again in a loop
    this.failedCheckpointStep = s.step;
    this.log.warn({ step: s.step, epoch: s.epoch, reason, failedSaves: this.failedSaves }, 'checkpoint save failed; nothing of it is committed, the next checkpoint step saves again');
  }

  /** A boundary waited past its deadline: give up the save (and the uploads) it waited for. */
  private stopWaitingForSave(): void {
    const s = this.checkpointSave;
    if (s?.committing) return; // the manifest is being written: the store's own deadlines end it
    if (s) this.dropSave(`not saved within the deadline of ${this.opts.stepDeadlineMs} ms`);
    if (this.uploading.size > 0) this.log.warn({ workers: [...this.uploading] }, 'no longer waiting for checkpoint uploads that passed the deadline');
    this.uploading.clear();
    this.failedCheckpointStep = this.step;
    this.phase = { kind: 'between-steps' };
    this.advance();
  }

  /** Every rank's objects have landed: writes the manifest (the commit point). */
  private async commitSave(s: CheckpointSave): Promise<void> {
    s.committing = true;
    const bytes = s.objects.reduce((n, o) => n + o.size, 0);
    try {
      await this.opts.checkpoints!.commit(s.step, s.ring.length, s.objects);
      this.lastCheckpointStep = s.step;
      this.event(
        'checkpoint',
        `checkpoint of step ${s.step} committed (${s.objects.length} objects, ${bytes} bytes, ${Date.now() - s.startedAt} ms after it started; snapshot ${s.snapshotMs.toFixed(1)} ms)`,
        {},
        { step: s.step, bytes, startedAt: s.startedAt, snapshotMs: s.snapshotMs },
      );
    } catch (err) {
      // never half-committed: the manifest is not there; the next checkpoint step tries again
      this.failedSaves += 1;
      this.failedCheckpointStep = s.step;
      this.log.error({ err: (err as Error).message, step: s.step }, 'checkpoint commit failed; the next checkpoint step saves again');
    }
    if (this.checkpointSave === s) this.checkpointSave = null;
    this.saveSettled();
  }

  private failedCheckpointStep: number | null = null;
  /** Why the job failed (it stopped without finishing its steps), or null. */
  failed: string | null = null;

  /** The job ran all its steps (what Stop.finished and a finished join's refusal say). */
  private get ranAllSteps(): boolean {
    return !this.failed && this.step >= this.opts.totalSteps;
  }

  private finish(reason: string): void {
    // The save in flight commits (or fails) before the job ends.
    if (!this.failed && this.checkpointSave) {
      this.waitForSave();
      return;
    }
    // A final checkpoint first, when there is a store and the ring is complete.
    if (!this.failed && this.opts.checkpoints && this.opts.checkpointAtEnd && this.lastCheckpointStep !== this.step && this.failedCheckpointStep !== this.step && this.ring.length > 0 && this.step > 0) {
      const alive = this.ring.every((id) => this.members.get(id)?.send);
      if (alive) {
        if (!this.saveBusy()) this.startSave();
        this.waitForSave();
        return;
      }
    }
    // Stop.finished, not the reason's text, tells a worker the job is done (it exits 0).
    const finished = this.ranAllSteps;
    for (const m of this.members.values()) this.send(m.id, { stop: { reason, finished } });
    this.phase = { kind: 'done', reason };
    this.event('done', `job finished at step ${this.step}: ${reason}`);
    this.close();
    this.doneResolve({ step: this.step, reason });
  }
}

/** Aborted epochs in a row (no step committed in between) after which the job gives up. */
const MAX_ABORTS = 50;

/** host:port (a host name, IPv4 or [IPv6] address; port 1-65535), or `mem://N` of the in-process transport (tests). */
function isCollectiveAddress(a: string): boolean {
  if (/^mem:\/\/\d{1,9}$/.test(a)) return true;
  const m = /^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):(\d{1,5})$/.exec(a);
  return m !== null && Number(m[2]) >= 1 && Number(m[2]) <= 65535;
}

/** What a joining worker says about itself (job id and config hash are checked first). */
const joinFieldsSchema = z.object({
  workerName: z.string().max(256, 'at most 256 characters'),
  collectiveAddress: z.string().max(300, 'at most 300 characters').refine(isCollectiveAddress, 'must be host:port (a host name, an IPv4 or [IPv6] address, port 1-65535)'),
  paramCount: z.number().int().min(1, 'must be a positive integer').max(Number.MAX_SAFE_INTEGER),
});

/** The objects a rank reports for a checkpoint (checkpointObjectsJson); at most this many per rank. */
const checkpointObjectsSchema = z.array(checkpointObjectSchema).max(10_000, 'at most 10000 objects');

/** Parses and validates a rank's object list; returns the objects or what is wrong with them. */
export function parseCheckpointObjects(json: string, step: number): CheckpointObject[] | string {
  if (json === '') return [];
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (err) {
    return `checkpointObjectsJson is not JSON (${(err as Error).message})`;
  }
  const parsed = checkpointObjectsSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('');
    return `checkpointObjectsJson${where}: ${issue.message}`;
  }
  for (const o of parsed.data) {
    if (!isCheckpointObjectKey(step, o.name, o.key)) return `checkpointObjectsJson: object ${o.name} has key ${JSON.stringify(o.key.slice(0, 200))}, expected ${expectedObjectKeys(step, o.name)}`;
  }
  return parsed.data;
}

function sameRing(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
