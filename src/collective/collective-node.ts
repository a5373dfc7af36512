import { PartiError } from '../errors.ts';
import { tracer } from '../observability/log.ts';
import { sameToken, type Frame } from './frame.ts';
import {
  ringAllGather,
  ringAllReduce,
  ringBroadcast,
  ringReduceScatter,
  segmentBounds,
  type ChunkAddress,
  type ReduceOp,
  type RingContext,
} from './ring.ts';
import type { CollectiveTransport, Membership, TransportSession } from './transport.ts';
import { wireBytesPerElement, type WireCompression } from './wire-compression.ts';

const trace = tracer('collective');

/** Settings of a node; every field has a default. Mirrors the `collective` config section. */
export interface CollectiveNodeOptions {
  /** The job this worker belongs to; frames and links of other jobs are refused. */
  jobId: string;
  /** Reserved for the job token (a shared secret); links must present the same bytes. */
  jobToken?: Uint8Array;
  /** Bytes of float32 per chunk (a chunk is one message on the wire). Default 4 MiB. */
  chunkBytes?: number;
  /** Chunks in flight at once per collective. Default 1 (see collective-schema.ts `inflight`). */
  inflight?: number;
  /** Default deadline of one collective, ms. Default 60 000. */
  deadlineMs?: number;
  /** Default wire compression. Default 'none'. */
  compress?: WireCompression;
  /** Largest message accepted or sent, bytes. Default 64 MiB; chunkBytes must fit. */
  maxMessageBytes?: number;
  /** Most elements a broadcast may announce. Default 2^30. */
  maxBroadcastElements?: number;
  /**
   * Most payload bytes held for collectives that have not asked for them yet (frames that arrive
   * early). Past it the epoch fails with 'refused': a peer cannot make us buffer without bound.
   * Default 1 GiB.
   */
  maxPendingBytes?: number;
}

/** Options of one collective call; unset fields take the node's defaults. */
export interface CollectiveCallOptions {
  /** The collective fails with PartiError 'deadline' (on this rank; peers get 'collective-aborted') after this many ms. */
  deadlineMs?: number;
  /** Wire compression (reductions are always in float32). Ignored by broadcast. */
  compress?: WireCompression;
}

/** Options of allReduce. */
export interface AllReduceOptions extends CollectiveCallOptions {
  /** 'sum' or 'mean' (sum, then divided by the world size on the owning rank). Default 'mean'. */
  op?: ReduceOp;
  /** Reduce into `data` itself (and return it) instead of a copy: saves one copy of the buffer. */
  inPlace?: boolean;
}

/** This rank's share after reduceScatter: elements [start, end) of the reduced array. */
export interface ReduceScatterResult {
  chunk: Float32Array;
  start: number;
  end: number;
  /** Length of the whole array. */
  length: number;
}

/** Counters since the node started. */
export interface CollectiveNodeStats {
  /** Frames dropped because of another job, another epoch, or an oversized payload. */
  refusedFrames: number;
  bytesSent: number;
  bytesReceived: number;
  collectives: number;
  aborts: number;
}

type NodeState =
  | { kind: 'unconfigured' }
  | { kind: 'ready'; m: Membership; session: TransportSession; nextOp: number; failed: Promise<never>; fail: (e: PartiError) => void }
  | { kind: 'aborted'; m: Membership; error: PartiError }
  | { kind: 'closed' };

interface Waiter {
  resolve(p: Uint8Array): void;
  reject(e: PartiError): void;
}

interface Resolved {
  jobId: string;
  jobToken: Uint8Array;
  chunkBytes: number;
  inflight: number;
  deadlineMs: number;
  compress: WireCompression;
  maxMessageBytes: number;
  maxBroadcastElements: number;
  maxPendingBytes: number;
}

function resolveOptions(o: CollectiveNodeOptions): Resolved {
  const r: Resolved = {
    jobId: o.jobId,
    jobToken: o.jobToken ?? new Uint8Array(0),
    chunkBytes: o.chunkBytes ?? 4 << 20,
    inflight: o.inflight ?? 1,
    deadlineMs: o.deadlineMs ?? 60_000,
    compress: o.compress ?? 'none',
    maxMessageBytes: o.maxMessageBytes ?? 64 << 20,
    maxBroadcastElements: o.maxBroadcastElements ?? 2 ** 30,
    maxPendingBytes: o.maxPendingBytes ?? 2 ** 30,
  };
  if (!r.jobId) throw new PartiError('usage', 'collective node: jobId must not be empty');
  if (!Number.isInteger(r.chunkBytes) || r.chunkBytes < 16 || r.chunkBytes % 4 !== 0) {
    throw new PartiError('usage', `collective node: chunkBytes must be a multiple of 4 >= 16, got ${r.chunkBytes}`);
  }
  if (r.chunkBytes + 1024 > r.maxMessageBytes) {
    throw new PartiError('usage', `collective node: chunkBytes ${r.chunkBytes} does not fit maxMessageBytes ${r.maxMessageBytes}`);
  }
  if (!Number.isInteger(r.inflight) || r.inflight < 1) throw new PartiError('usage', `collective node: inflight must be >= 1, got ${r.inflight}`);
  return r;
}

/**
 * One worker's end of the collectives: ring all-reduce, reduce-scatter, all-gather and broadcast
 * over a {@link CollectiveTransport} (gRPC between processes, in-memory in tests). Create it with
 * `createGrpcCollectiveNode` (grpc-transport.ts) or `createInMemoryCollectiveGroup`.
 *
 * Lifecycle: `unconfigured` -> configure() -> `ready` (epoch e) -> [a failure] -> `aborted`
 * (epoch e) -> configure() with a newer epoch -> `ready` ... -> close() -> `closed`.
 *
 * Rules the caller must keep:
 * - Every rank of an epoch calls the same collectives in the same order with the same lengths
 *   (frames are matched by the call's sequence number within the epoch). Calls may overlap (e.g.
 *   one all-reduce per bucket, started back to back); they are matched by order of the call.
 * - Any failure (a deadline, abort(), a peer that dies or aborts, a link refused, a new epoch)
 *   fails every in-flight collective of the epoch at once and leaves the node `aborted`: later
 *   calls fail at once until configure() brings a newer epoch. Peers learn of it (an abort frame
 *   and the closing of our links) and fail too. Nothing waits longer than its deadline.
 * - Errors are PartiError with code 'deadline' (this rank's deadline passed), 'collective-aborted'
 *   (abort(), a peer failed, a new epoch), 'refused' (a peer refused us: other job, token or an
 *   older epoch) or 'illegal-state' (called before configure() or after close()).
 *
 * Results are deterministic: the reduction order is fixed by the ring, so every rank gets bitwise
 * the same array, in every run with the same ring order and inputs.
 */
export class CollectiveNode {
  private readonly opts: Resolved;
  private state: NodeState = { kind: 'unconfigured' };
  /** The latest transport session; closed when its epoch fails or a new one is configured. */
  private session: TransportSession | null = null;
  private readonly mailbox = new Map<string, Uint8Array>();
  /** Payload bytes in `mailbox` (bounded by maxPendingBytes). */
  private pendingBytes = 0;
  private readonly waiters = new Map<string, Waiter>();
  private readonly counters: CollectiveNodeStats = { refusedFrames: 0, bytesSent: 0, bytesReceived: 0, collectives: 0, aborts: 0 };

  constructor(
    private readonly transport: CollectiveTransport,
    options: CollectiveNodeOptions,
  ) {
    this.opts = resolveOptions(options);
  }

  /** Where peers reach this node (put it in the ring's `peers`). */
  get address(): string {
    return this.transport.address;
  }

  /** The current state, for logs and tests: 'unconfigured' | 'ready' | 'aborted' | 'closed'. */
  get status(): NodeState['kind'] {
    return this.state.kind;
  }

  /** The membership epoch the node is in, or -1 before the first configure(). */
  get epoch(): number {
    return this.state.kind === 'ready' || this.state.kind === 'aborted' ? this.state.m.epoch : -1;
  }

  stats(): CollectiveNodeStats {
    return { ...this.counters };
  }

  /**
   * Enters membership epoch `epoch` as `rank` of the ring `peers` (addresses in ring order, this
   * node's own at `rank`). Call it on every membership change; epochs must increase. A collective
   * still running in the old epoch fails with 'collective-aborted'.
   */
  configure(membership: { epoch: number; rank: number; peers: readonly string[] }): void {
    const { epoch, rank, peers } = membership;
    if (this.state.kind === 'closed') throw new PartiError('illegal-state', 'collective node: configure() after close()');
    if (!Number.isSafeInteger(epoch) || epoch < 0) throw new PartiError('usage', `collective node: epoch must be an integer >= 0, got ${epoch}`);
    if (this.epoch >= epoch) {
      throw new PartiError('illegal-state', `collective node: epoch ${epoch} is not newer than the current epoch ${this.epoch}`);
    }
    if (peers.length < 1 || !Number.isInteger(rank) || rank < 0 || rank >= peers.length) {
      throw new PartiError('usage', `collective node: rank ${rank} is not an index of ${peers.length} peers`);
    }
    this.fail(new PartiError('collective-aborted', `membership epoch ${epoch} replaced epoch ${this.epoch}`), false);
    this.mailbox.clear();
    this.pendingBytes = 0;
    this.session?.close();
    const m: Membership = { jobId: this.opts.jobId, jobToken: this.opts.jobToken, epoch, rank, peers: [...peers] };
    let fail!: (e: PartiError) => void;
    const failed = new Promise<never>((_, reject) => (fail = reject));
    failed.catch(() => {});
    const session = this.transport.open(m, {
      onFrame: (f) => this.onFrame(m, f),
      onLinkError: (peer, err) => {
        if (this.state.kind === 'ready' && this.state.m === m) {
          this.fail(new PartiError(err.code === 'refused' ? 'refused' : 'collective-aborted', `link with rank ${peer} (${peers[peer]}): ${err.message}`), true);
        }
      },
    });
    this.session = session;
    this.state = { kind: 'ready', m, session, nextOp: 0, failed, fail };
    trace('configured', { epoch, rank, size: peers.length });
  }

  /**
   * Fails every in-flight collective of the current epoch, on this rank and (through an abort frame
   * and the closing of links) on every peer, with PartiError 'collective-aborted' naming `reason`.
   * The node stays `aborted` until configure() with a newer epoch. A no-op when not `ready`.
   */
  abort(reason: string): void {
    this.fail(new PartiError('collective-aborted', `aborted on rank ${this.rankOrDash()}: ${reason}`), true);
  }

  /** Aborts what runs, closes links and the transport (the gRPC server). Idempotent. */
  async close(): Promise<void> {
    if (this.state.kind === 'closed') return;
    this.fail(new PartiError('collective-aborted', `rank ${this.rankOrDash()} closed`), true);
    this.state = { kind: 'closed' };
    this.session?.close();
    await this.transport.close();
  }

  /**
   * All-reduce of `data` (the same length on every rank): every rank gets the element-wise sum or
   * mean (default 'mean'), bitwise identical on all ranks. Returns a new array unless `inPlace`.
   */
  async allReduce(data: Float32Array, options: AllReduceOptions = {}): Promise<Float32Array> {
    const buf = options.inPlace ? data : data.slice();
    const compress = options.compress ?? this.opts.compress;
    await this.run('allReduce', options.deadlineMs, (ctx) => ringAllReduce(ctx, buf, options.op ?? 'mean', compress));
    return buf;
  }

  /**
   * Reduce-scatter of `data` (same length on every rank): returns this rank's segment
   * [start, end) of the reduction, where segments split the array evenly in rank order
   * (`segmentBounds(length, size, rank)`). `data` is not changed.
   */
  async reduceScatter(data: Float32Array, options: CollectiveCallOptions & { op?: ReduceOp } = {}): Promise<ReduceScatterResult> {
    const buf = data.slice();
    const compress = options.compress ?? this.opts.compress;
    const { rank, size } = await this.run('reduceScatter', options.deadlineMs, async (ctx) => {
      await ringReduceScatter(ctx, buf, options.op ?? 'mean', compress);
      return { rank: ctx.rank, size: ctx.size };
    });
    const { start, end } = segmentBounds(buf.length, size, rank);
    return { chunk: buf.slice(start, end), start, end, length: buf.length };
  }

  /**
   * All-gather: each rank passes its segment (as reduceScatter returned it: elements
   * segmentBounds(layout.length, size, rank)) and gets the whole array of `layout.length`.
   */
  async allGather(chunk: Float32Array, layout: { length: number }, options: CollectiveCallOptions = {}): Promise<Float32Array> {
    const compress = options.compress ?? this.opts.compress;
    return this.run('allGather', options.deadlineMs, async (ctx) => {
      const { start, end } = segmentBounds(layout.length, ctx.size, ctx.rank);
      if (chunk.length !== end - start) {
        throw new PartiError('usage', `allGather: rank ${ctx.rank} must pass ${end - start} elements (segment ${start}..${end} of ${layout.length}), got ${chunk.length}`);
      }
      const buf = new Float32Array(layout.length);
      buf.set(chunk, start);
      await ringAllGather(ctx, buf, compress);
      return buf;
    });
  }

  /**
   * Broadcast from `rootRank`: the root passes its data, the others null; all get a copy of the
   * root's array (exact float32, never compressed).
   */
  async broadcast(rootRank: number, data: Float32Array | null, options: { deadlineMs?: number } = {}): Promise<Float32Array> {
    return this.run('broadcast', options.deadlineMs, (ctx) => {
      if (!Number.isInteger(rootRank) || rootRank < 0 || rootRank >= ctx.size) {
        throw new PartiError('usage', `broadcast: root rank ${rootRank} is not in 0..${ctx.size - 1}`);
      }
      return ringBroadcast(ctx, rootRank, data, this.opts.maxBroadcastElements);
    });
  }

  private rankOrDash(): string {
    return this.state.kind === 'ready' || this.state.kind === 'aborted' ? String(this.state.m.rank) : '-';
  }

  private async run<T>(name: string, deadlineMs: number | undefined, body: (ctx: RingContext) => Promise<T>): Promise<T> {
    const st = this.state;
    if (st.kind === 'unconfigured') throw new PartiError('illegal-state', `${name}: the collective node is unconfigured; call configure() first`);
    if (st.kind === 'closed') throw new PartiError('illegal-state', `${name}: the collective node is closed`);
    if (st.kind === 'aborted') {
      throw new PartiError('collective-aborted', `${name}: epoch ${st.m.epoch} was aborted (${st.error.message}); configure() a newer epoch`);
    }
    const op = st.nextOp++;
    const ms = deadlineMs ?? this.opts.deadlineMs;
    this.counters.collectives++;
    const ctx = this.context(st, op);
    const timer = setTimeout(() => {
      this.fail(new PartiError('deadline', `${name} (epoch ${st.m.epoch}, op ${op}) passed its deadline of ${ms} ms on rank ${st.m.rank}`), true, st);
    }, ms);
    let work: Promise<T>;
    try {
      work = body(ctx);
    } catch (err) {
      work = Promise.reject(err);
    }
    work.catch((err: unknown) => this.fail(PartiError.from(err, 'collective-aborted'), true, st));
    try {
      return await Promise.race([work, st.failed]);
    } finally {
      clearTimeout(timer);
    }
  }

  private context(st: Extract<NodeState, { kind: 'ready' }>, op: number): RingContext {
    const { m, session } = st;
    const chunkElements = this.opts.chunkBytes / 4;
    return {
      rank: m.rank,
      size: m.peers.length,
      chunkElements,
      inflight: this.opts.inflight,
      send: async (to: number, at: ChunkAddress, payload: Uint8Array) => {
        this.counters.bytesSent += payload.byteLength;
        try {
          await session.send(to, {
            jobId: m.jobId, epoch: m.epoch, fromRank: m.rank, op, kind: 'data', phase: at.phase, step: at.step, chunk: at.chunk,
            reason: '', jobToken: m.jobToken, payload,
          });
        } catch (err) {
          // A send that fails ends the epoch at once (so that no recv waits for its answer).
          this.fail(PartiError.from(err, 'collective-aborted'), true, st);
          throw err;
        }
      },
      recv: (from: number, at: ChunkAddress) => {
        const key = `${op}/${at.phase}/${at.step}/${at.chunk}/${from}`;
        const got = this.mailbox.get(key);
        if (got) {
          this.mailbox.delete(key);
          this.pendingBytes -= got.byteLength;
          return Promise.resolve(got);
        }
        if (this.state !== st) return st.failed;
        return new Promise<Uint8Array>((resolve, reject) => this.waiters.set(key, { resolve, reject }));
      },
    };
  }

  private onFrame(m: Membership, f: Frame): void {
    const st = this.state;
    if (st.kind !== 'ready' || st.m !== m) return; // a late frame of a closed session
    if (f.jobId !== m.jobId || f.epoch !== m.epoch || f.fromRank >= m.peers.length || f.fromRank === m.rank) {
      this.counters.refusedFrames++;
      trace('refused frame', { job: f.jobId, epoch: f.epoch, from: f.fromRank });
      return;
    }
    // The receiving side's check of the sender (the subscriber is the receiver in the gRPC pull
    // model, so the sender's server checked our token and we check the sender's here).
    if (!sameToken(f.jobToken, m.jobToken)) {
      this.counters.refusedFrames++;
      const why = f.jobToken.byteLength === 0 ? 'without the job token' : 'with a wrong job token';
      this.fail(new PartiError('refused', `rank ${f.fromRank} (${m.peers[f.fromRank]}) sent a frame ${why}`), true);
      return;
    }
    if (f.kind === 'data' && (f.phase < 1 || f.phase > 4)) {
      this.counters.refusedFrames++;
      this.fail(new PartiError('refused', `rank ${f.fromRank} sent a frame of unknown phase ${f.phase}`), true);
      return;
    }
    if (f.kind === 'abort') {
      // The reason is the peer's text: cut to one short line before it reaches errors and logs.
      const reason = f.reason.replace(/[\u0000-\u001f\u007f]+/g, ' ').slice(0, 500);
      this.fail(new PartiError('collective-aborted', `rank ${f.fromRank} aborted epoch ${m.epoch}: ${reason}`), false);
      return;
    }
    if (f.payload.byteLength > this.opts.maxMessageBytes) {
      this.counters.refusedFrames++;
      this.fail(new PartiError('refused', `rank ${f.fromRank} sent ${f.payload.byteLength} bytes, over the cap of ${this.opts.maxMessageBytes}`), true);
      return;
    }
    this.counters.bytesReceived += f.payload.byteLength;
    const key = `${f.op}/${f.phase}/${f.step}/${f.chunk}/${f.fromRank}`;
    const w = this.waiters.get(key);
    if (w) {
      this.waiters.delete(key);
      w.resolve(f.payload);
    } else {
      const prev = this.mailbox.get(key);
      this.pendingBytes += f.payload.byteLength - (prev?.byteLength ?? 0);
      this.mailbox.set(key, f.payload);
      if (this.pendingBytes > this.opts.maxPendingBytes) {
        this.fail(new PartiError('refused', `rank ${f.fromRank} sent ${this.pendingBytes} bytes ahead of the collectives (cap ${this.opts.maxPendingBytes})`), true);
      }
    }
  }

  /** Ends the current epoch with `err`: rejects every waiter, tells peers (if `propagate`), closes links. */
  private fail(err: PartiError, propagate: boolean, only?: NodeState): void {
    const st = this.state;
    if (st.kind !== 'ready' || (only && only !== st)) return;
    this.state = { kind: 'aborted', m: st.m, error: err };
    this.counters.aborts++;
    trace('epoch failed', { epoch: st.m.epoch, code: err.code, message: err.message });
    st.fail(err);
    for (const w of this.waiters.values()) w.reject(err);
    this.waiters.clear();
    this.mailbox.clear();
    this.pendingBytes = 0;
    if (propagate) {
      const { m } = st;
      for (let to = 0; to < m.peers.length; to++) {
        if (to === m.rank) continue;
        st.session
          .send(to, {
            jobId: m.jobId, epoch: m.epoch, fromRank: m.rank, op: 0, kind: 'abort', phase: 0, step: 0, chunk: 0,
            reason: `${err.code}: ${err.message}`, jobToken: m.jobToken, payload: new Uint8Array(0),
          })
          .catch(() => {});
      }
    }
    // Let the abort frames go out before the links close (closing is what peers see if they don't).
    setImmediate(() => st.session.close());
  }
}

/** Bytes a rank sends in one ring all-reduce of `elements` floats: 2(N-1)/N of the wire bytes. */
export function allReduceBytesSent(elements: number, size: number, compress: WireCompression): number {
  return (2 * (size - 1) * elements * wireBytesPerElement(compress)) / size;
}
