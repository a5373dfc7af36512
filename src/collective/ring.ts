import { PartiError } from '../errors.ts';
import { Phase } from './frame.ts';
import {
  addWireInto,
  decodeWireInto,
  encodeWire,
  roundToWire,
  wireBytesPerElement,
  type WireCompression,
  copyBytes,
} from './wire-compression.ts';

/** Where a payload belongs within one collective. */
export interface ChunkAddress {
  phase: number;
  step: number;
  chunk: number;
}

/**
 * What the ring algorithms need from the world: their place in the ring and point-to-point
 * messages addressed by (phase, step, chunk). CollectiveNode provides it over a transport.
 */
export interface RingContext {
  readonly rank: number;
  readonly size: number;
  /** Elements per chunk; a segment is cut into chunks that travel independently. */
  readonly chunkElements: number;
  /** Chunks whose chains run at the same time (so sending overlaps reducing). */
  readonly inflight: number;
  /** Resolves when the payload was handed over (its memory may be reused after). */
  send(to: number, at: ChunkAddress, payload: Uint8Array): Promise<void>;
  /** The payload that rank `from` sent to us at this address. */
  recv(from: number, at: ChunkAddress): Promise<Uint8Array>;
}

/** Elements [start, end) of segment `s` when `length` elements are split over `size` ranks. */
export function segmentBounds(length: number, size: number, s: number): { start: number; end: number } {
  return { start: Math.floor((s * length) / size), end: Math.floor(((s + 1) * length) / size) };
}

function chunkCount(length: number, size: number, chunkElements: number): number {
  return Math.ceil(Math.ceil(length / size) / chunkElements);
}

function chunkOf(ctx: RingContext, length: number, s: number, c: number): [number, number] {
  const { start, end } = segmentBounds(length, ctx.size, s);
  const a = Math.min(end, start + c * ctx.chunkElements);
  return [a, Math.min(end, a + ctx.chunkElements)];
}

/** Runs fn(0..n-1) with at most `inflight` running at once, in increasing order of start. */
async function forEachChunk(n: number, inflight: number, fn: (c: number) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < n) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(n, Math.max(1, inflight)) }, lane));
}

const mod = (a: number, n: number): number => ((a % n) + n) % n;

function checkLength(got: Uint8Array, elements: number, compress: WireCompression, from: number, what: string): void {
  const want = elements * wireBytesPerElement(compress);
  if (got.byteLength !== want) {
    throw new PartiError(
      'collective-aborted',
      `${what}: rank ${from} sent ${got.byteLength} bytes where ${want} were expected (do all ranks pass the same length and compression?)`,
    );
  }
}

/**
 * The chain of one chunk index through reduce-scatter: N-1 steps; at step k rank r sends its
 * partial sum of segment r-k-1 and adds what it gets into segment r-k-2, so that after the chain
 * rank r holds the full sum of segment r. Each segment is summed in the fixed ring order
 * r+1, r+2, ..., r: the result does not depend on timing.
 */
async function reduceScatterChain(ctx: RingContext, buf: Float32Array, c: number, op: ReduceOp, compress: WireCompression): Promise<void> {
  const { rank: r, size: n } = ctx;
  const next = mod(r + 1, n);
  const prev = mod(r - 1, n);
  for (let k = 0; k < n - 1; k++) {
    const [sa, sb] = chunkOf(ctx, buf.length, mod(r - k - 1, n), c);
    const [ra, rb] = chunkOf(ctx, buf.length, mod(r - k - 2, n), c);
    const at = { phase: Phase.reduceScatter, step: k, chunk: c };
    const sent = ctx.send(next, at, encodeWire(buf.subarray(sa, sb), compress));
    sent.catch(() => {}); // a failed send fails the epoch; the recv below then rejects too
    const got = await ctx.recv(prev, at);
    checkLength(got, rb - ra, compress, prev, 'reduce-scatter');
    // The last step completes this rank's own segment: the mean's division is fused into it.
    addWireInto(got, compress, buf.subarray(ra, rb), k === n - 2 && op === 'mean' ? n : 1);
    await sent;
  }
}

/** The chain of one chunk index through all-gather: at step k send segment r-k, receive r-k-1. */
async function allGatherChain(ctx: RingContext, buf: Float32Array, c: number, compress: WireCompression): Promise<void> {
  const { rank: r, size: n } = ctx;
  const next = mod(r + 1, n);
  const prev = mod(r - 1, n);
  for (let k = 0; k < n - 1; k++) {
    const [sa, sb] = chunkOf(ctx, buf.length, mod(r - k, n), c);
    const [ra, rb] = chunkOf(ctx, buf.length, mod(r - k - 1, n), c);
    const at = { phase: Phase.allGather, step: k, chunk: c };
    const sent = ctx.send(next, at, encodeWire(buf.subarray(sa, sb), compress));
    sent.catch(() => {}); // a failed send fails the epoch; the recv below then rejects too
    const got = await ctx.recv(prev, at);
    checkLength(got, rb - ra, compress, prev, 'all-gather');
    decodeWireInto(got, compress, buf.subarray(ra, rb));
    await sent;
  }
}

/** After reduce-scatter, this rank's own chunk becomes what its peers will see of it. */
function finishOwned(ctx: RingContext, buf: Float32Array, c: number, compress: WireCompression): void {
  const [a, b] = chunkOf(ctx, buf.length, ctx.rank, c);
  roundToWire(buf.subarray(a, b), compress);
}

export type ReduceOp = 'sum' | 'mean';

/**
 * Ring reduce-scatter in place: afterwards buf[segmentBounds(len, N, rank)] holds the reduction
 * (sum or mean) over all ranks of that segment, rounded to the wire format; the rest of buf is
 * scratch. Each rank sends (N-1)/N of the bytes.
 */
export async function ringReduceScatter(ctx: RingContext, buf: Float32Array, op: ReduceOp, compress: WireCompression): Promise<void> {
  const n = chunkCount(buf.length, ctx.size, ctx.chunkElements);
  if (ctx.size === 1) return;
  await forEachChunk(n, ctx.inflight, async (c) => {
    await reduceScatterChain(ctx, buf, c, op, compress);
    finishOwned(ctx, buf, c, compress);
  });
}

/** Ring all-gather in place: segment s of buf comes from rank s; this rank's segment is sent as is. */
export async function ringAllGather(ctx: RingContext, buf: Float32Array, compress: WireCompression): Promise<void> {
  if (ctx.size === 1) return;
  const n = chunkCount(buf.length, ctx.size, ctx.chunkElements);
  await forEachChunk(n, ctx.inflight, (c) => allGatherChain(ctx, buf, c, compress));
}

/**
 * Ring all-reduce in place = reduce-scatter then all-gather, chunk by chunk: chunk c starts its
 * all-gather as soon as its reduce-scatter is done, so the two phases overlap. Each rank sends
 * 2(N-1)/N of the bytes. Every rank ends with bitwise the same buffer.
 */
export async function ringAllReduce(ctx: RingContext, buf: Float32Array, op: ReduceOp, compress: WireCompression): Promise<void> {
  if (ctx.size === 1) return;
  const n = chunkCount(buf.length, ctx.size, ctx.chunkElements);
  await forEachChunk(n, ctx.inflight, async (c) => {
    await reduceScatterChain(ctx, buf, c, op, compress);
    finishOwned(ctx, buf, c, compress);
    await allGatherChain(ctx, buf, c, compress);
  });
}

/**
 * Pipelined ring broadcast: the root's data flow root -> root+1 -> ... in chunks, each rank
 * forwarding a chunk as soon as it has it. Float32 exactly (no compression: this hands over state).
 * Non-root ranks learn the length from the root. `maxElements` bounds what a peer can make us
 * allocate.
 */
export async function ringBroadcast(
  ctx: RingContext,
  root: number,
  data: Float32Array | null,
  maxElements: number,
): Promise<Float32Array> {
  const { rank: r, size: n } = ctx;
  if (r === root && !data) throw new PartiError('illegal-state', `broadcast: rank ${r} is the root and must pass data`);
  if (n === 1) return data!.slice();
  const next = mod(r + 1, n);
  const prev = mod(r - 1, n);
  const forward = next !== root;
  let out: Float32Array;
  if (r === root) {
    out = data!;
    const len = new Float64Array([out.length]);
    await ctx.send(next, { phase: Phase.broadcastLength, step: 0, chunk: 0 }, new Uint8Array(len.buffer));
  } else {
    const got = await ctx.recv(prev, { phase: Phase.broadcastLength, step: 0, chunk: 0 });
    if (got.byteLength !== 8) throw new PartiError('collective-aborted', `broadcast: rank ${prev} sent a bad length header`);
    const length = new Float64Array(copyBytes(got).buffer)[0]!;
    if (!Number.isInteger(length) || length < 0 || length > maxElements) {
      throw new PartiError('refused', `broadcast: rank ${prev} announced ${length} elements, more than the cap ${maxElements}`);
    }
    if (forward) await ctx.send(next, { phase: Phase.broadcastLength, step: 0, chunk: 0 }, got);
    out = new Float32Array(length);
  }
  const chunks = Math.ceil(out.length / ctx.chunkElements);
  await forEachChunk(chunks, ctx.inflight, async (c) => {
    const a = c * ctx.chunkElements;
    const b = Math.min(out.length, a + ctx.chunkElements);
    const at = { phase: Phase.broadcastData, step: 0, chunk: c };
    if (r !== root) {
      const got = await ctx.recv(prev, at);
      checkLength(got, b - a, 'none', prev, 'broadcast');
      decodeWireInto(got, 'none', out.subarray(a, b));
    }
    if (r === root || forward) await ctx.send(next, at, encodeWire(out.subarray(a, b), 'none'));
  });
  return r === root ? out.slice() : out;
}
