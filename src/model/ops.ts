import * as tf from '@tensorflow/tfjs';
import { PartiError } from '../errors.ts';

/**
 * The few tensor ops the models are written with, and the one place that works around the gaps of
 * the tfjs wasm backend (see ../shared/notes/measured-facts.md):
 *
 * - Transposed matmuls leave wasm's fast path (NT ~10x, TN ~40x slower than NN), and tfjs's own
 *   matmul gradient uses them. `matmul` and `batchMatmul` carry a custom gradient that transposes
 *   explicitly and then multiplies NN.
 * - Rank-3 x rank-2 products are slow too, so layers work on 2-D activations [B*T, D].
 * - The gradient of `gather` needs UnsortedSegmentSum, which wasm lacks: `embed` gathers and
 *   takes the table's gradient as one NN matmul with the transposed one-hot rows, and `crossEntropy` picks the target logit
 *   with a one-hot product instead of a gather.
 * - wasm's OneHot ignores its dtype: `oneHot` casts.
 * - tfjs has no stopGradient op: `stopGradient` is an identity with a zero gradient.
 *
 * On the native backend (tfjs-node) the plain ops are used.
 */

/**
 * One-hot rows as float32. The wasm OneHot kernel ignores the dtype argument and writes int32
 * bits into a float32 tensor (1 reads as 1.4e-45), so build int32 and cast.
 */
export function oneHot(ids: tf.Tensor1D, depth: number): tf.Tensor2D {
  return tf.cast(tf.oneHot(ids, depth), 'float32') as tf.Tensor2D;
}

function onWasm(): boolean {
  return tf.getBackend() === 'wasm';
}

type Grad2 = (a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => { value: tf.Tensor; gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor[] };

const matmulNN = tf.customGrad(((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D),
    gradFunc: (dy: tf.Tensor, [sa, sb]: tf.Tensor[]) => [
      tf.matMul(dy as tf.Tensor2D, transpose2d(sb!)),
      tf.matMul(transpose2d(sa!), dy as tf.Tensor2D),
    ],
  };
}) as Grad2 as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (a: tf.Tensor, b: tf.Tensor) => tf.Tensor;

/**
 * The parts of the wasm backend the sliced batch product reaches into (tfjs-backend-wasm 4.22:
 * BackendWasm and its emscripten module). Not public API: checked once in `slicedKernelUsable`.
 */
interface WasmInternals {
  wasm: {
    cwrap: (name: string, ret: null, args: string[]) => (...a: number[]) => void;
    _malloc: (bytes: number) => number;
    HEAPU8: Uint8Array;
    tfjs: { registerTensor: (id: number, size: number, offset: number) => void; disposeData: (id: number) => void };
  };
  dataIdMap: { get: (dataId: object) => { id: number; memoryOffset: number } };
  dataIdNextNumber: number;
  makeOutput: (shape: number[], dtype: 'float32') => tf.TensorInfo;
}

const SLICED_MATMUL = 'PartiSlicedBatchMatMul';
const COLUMN_SUM = 'PartiColumnSum';
const TRANSPOSE_2D = 'PartiTranspose2D';
const HEAD_SPLIT = 'PartiHeadSplit';
const HEAD_MERGE = 'PartiHeadMerge';
const SCATTER_ROWS = 'PartiScatterRows';
/** Per wasm backend instance: its BatchMatMul entry point and a 6-int scratch for shapes. */
let slicedState: { backend: unknown; raw: (...a: number[]) => void; shapes: number } | null = null;
let kernelsRegistered = false;

function heapOffset(be: WasmInternals, t: tf.TensorInfo): number {
  return be.dataIdMap.get(t.dataId).memoryOffset;
}

/**
 * wasm's BatchMatMul takes XNNPACK's fast path only for one NN product (batch 1); a batch of
 * products runs a scalar loop at ~1-2 GFLOP/s. This kernel runs a batched NN product as one fast
 * product per batch entry: it registers each entry's slices of a, b and the output (views into
 * the wasm heap, no copies) under fresh tensor ids and calls the backend's own BatchMatMul with
 * batch 1. Disposing a view id drops the XNNPACK operator cached on it, so a reused id never
 * sees stale packed weights.
 */
function slicedKernel(args: { inputs: tf.NamedTensorInfoMap; backend: unknown }): tf.TensorInfo {
  const be = args.backend as WasmInternals;
  const a = args.inputs.a!;
  const b = args.inputs.b!;
  const [N, M, K] = a.shape as [number, number, number];
  const P = b.shape[2]!;
  const st = slicedState!;
  const out = be.makeOutput([N, M, P], 'float32');
  const aOff = heapOffset(be, a);
  const bOff = heapOffset(be, b);
  const oOff = heapOffset(be, out);
  new Int32Array(be.wasm.HEAPU8.buffer, st.shapes, 6).set([1, M, K, 1, K, P]);
  const reg = be.wasm.tfjs.registerTensor;
  const drop = be.wasm.tfjs.disposeData;
  for (let i = 0; i < N; i++) {
    const ia = be.dataIdNextNumber++;
    const ib = be.dataIdNextNumber++;
    const io = be.dataIdNextNumber++;
    reg(ia, M * K, aOff + i * M * K * 4);
    reg(ib, K * P, bOff + i * K * P * 4);
    reg(io, M * P, oOff + i * M * P * 4);
    st.raw(ia, st.shapes, 3, ib, st.shapes + 12, 3, 0, 0, io);
    drop(ia);
    drop(ib);
    drop(io);
  }
  return out;
}

/**
 * Sum over the rows of x [M, N] -> [N] (bias and gain gradients). wasm's Sum reduces only the
 * innermost axis, so an axis-0 sum transposes first; this reads the rows in place.
 */
function columnSumKernel(args: { inputs: tf.NamedTensorInfoMap; backend: unknown }): tf.TensorInfo {
  const be = args.backend as WasmInternals;
  const x = args.inputs.x!;
  const [M, N] = x.shape as [number, number];
  const out = be.makeOutput([N], 'float32');
  const heap = new Float32Array(be.wasm.HEAPU8.buffer);
  const xi = heapOffset(be, x) >> 2;
  const oi = heapOffset(be, out) >> 2;
  const acc = new Float32Array(N);
  for (let r = 0; r < M; r++) {
    const base = xi + r * N;
    for (let j = 0; j < N; j++) acc[j]! += heap[base + j]!;
  }
  heap.set(acc, oi);
  return out;
}

/**
 * 2-D transpose in cache-sized tiles. wasm's Transpose walks the input with a full-row stride,
 * which is slow for wide power-of-two rows (a [512, 1024] transpose took 3.4 ms, ~10x a copy).
 */
function transpose2DKernel(args: { inputs: tf.NamedTensorInfoMap; backend: unknown }): tf.TensorInfo {
  const be = args.backend as WasmInternals;
  const x = args.inputs.x!;
  const [M, N] = x.shape as [number, number];
  const out = be.makeOutput([N, M], 'float32');
  const heap = new Float32Array(be.wasm.HEAPU8.buffer);
  const xi = heapOffset(be, x) >> 2;
  const oi = heapOffset(be, out) >> 2;
  const TILE = 32;
  for (let r0 = 0; r0 < M; r0 += TILE) {
    const r1 = Math.min(M, r0 + TILE);
    for (let c0 = 0; c0 < N; c0 += TILE) {
      const c1 = Math.min(N, c0 + TILE);
      for (let r = r0; r < r1; r++) {
        const src = xi + r * N;
        for (let c = c0; c < c1; c++) heap[oi + c * M + r] = heap[src + c]!;
      }
    }
  }
  return out;
}

/**
 * wasm's Identity copies its input; tfjs clones every tensor it saves for the backward pass
 * through it (hundreds per step). Tensors are immutable, so the output can share the input's
 * data with a reference count, as the cpu backend and wasm's own Reshape do.
 */
function sharedIdentityKernel(args: { inputs: tf.NamedTensorInfoMap; backend: unknown }): tf.TensorInfo {
  const x = args.inputs.x!;
  (args.backend as { incRef: (d: object) => void }).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

/** Attributes of the head-split kernels: rows [B*T], `parts` column blocks of H heads of dh. */
interface HeadSplitAttrs {
  B: number;
  T: number;
  H: number;
  /** Per column block: true writes it keys-transposed [B*H, dh, T], false [B*H, T, dh]. */
  transposed: boolean[];
}

/**
 * x [B*T, P*H*dh] (P column blocks, e.g. q|k|v) -> P head-split tensors, each [B*H, T, dh] or
 * keys-transposed [B*H, dh, T], in one pass over x (replaces a SplitV, which copies along the
 * minor axis slowly on wasm, and one transpose per block).
 */
function headSplitKernel(args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }): tf.TensorInfo[] {
  const be = args.backend as WasmInternals;
  const x = args.inputs.x!;
  const { B, T, H, transposed } = args.attrs as unknown as HeadSplitAttrs;
  const P = transposed.length;
  const W = x.shape[1]!;
  const D = W / P;
  const dh = D / H;
  const outs = transposed.map((tr) => be.makeOutput(tr ? [B * H, dh, T] : [B * H, T, dh], 'float32'));
  const heap = new Float32Array(be.wasm.HEAPU8.buffer);
  const xi = heapOffset(be, x) >> 2;
  for (let p = 0; p < P; p++) {
    const oi = heapOffset(be, outs[p]!) >> 2;
    const tr = transposed[p]!;
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const src = xi + (b * T + t) * W + p * D;
        for (let h = 0; h < H; h++) {
          const s0 = src + h * dh;
          if (tr) {
            const d0 = oi + (b * H + h) * dh * T + t;
            for (let d = 0; d < dh; d++) heap[d0 + d * T] = heap[s0 + d]!;
          } else {
            const d0 = oi + ((b * H + h) * T + t) * dh;
            for (let d = 0; d < dh; d++) heap[d0 + d] = heap[s0 + d]!;
          }
        }
      }
    }
  }
  return outs;
}

/** The inverse of `headSplitKernel` (its gradient): P head-split tensors -> [B*T, P*H*dh]. */
function headMergeKernel(args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }): tf.TensorInfo {
  const be = args.backend as WasmInternals;
  const { B, T, H, transposed } = args.attrs as unknown as HeadSplitAttrs;
  const P = transposed.length;
  const parts = transposed.map((_, p) => args.inputs[`x${p}`]!);
  const dh = transposed[0] ? parts[0]!.shape[1]! : parts[0]!.shape[2]!;
  const D = H * dh;
  const W = P * D;
  const out = be.makeOutput([B * T, W], 'float32');
  const heap = new Float32Array(be.wasm.HEAPU8.buffer);
  const oi = heapOffset(be, out) >> 2;
  for (let p = 0; p < P; p++) {
    const xi = heapOffset(be, parts[p]!) >> 2;
    const tr = transposed[p]!;
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const dst = oi + (b * T + t) * W + p * D;
        for (let h = 0; h < H; h++) {
          const d1 = dst + h * dh;
          if (tr) {
            const s0 = xi + (b * H + h) * dh * T + t;
            for (let d = 0; d < dh; d++) heap[d1 + d] = heap[s0 + d * T]!;
          } else {
            const s0 = xi + ((b * H + h) * T + t) * dh;
            for (let d = 0; d < dh; d++) heap[d1 + d] = heap[s0 + d]!;
          }
        }
      }
    }
  }
  return out;
}

/** The gradient of the head split: merge the output gradients back (zeros for unused outputs). */
function headSplitGrad(dy: tf.Tensor | tf.Tensor[], _saved: tf.Tensor[], attrs: tf.NamedAttrMap) {
  const a = attrs as unknown as HeadSplitAttrs & { dh: number };
  const list = Array.isArray(dy) ? dy : [dy];
  const inputs: Record<string, tf.Tensor> = {};
  a.transposed.forEach((tr, p) => {
    inputs[`x${p}`] = list[p] ?? tf.zeros(tr ? [a.B * a.H, a.dh, a.T] : [a.B * a.H, a.T, a.dh]);
  });
  return { x: () => tf.engine().runKernel(HEAD_MERGE, inputs, attrs) as tf.Tensor };
}

/**
 * Splits x [B*T, P*H*dh] into P head-split tensors: [B*H, T, dh], or [B*H, dh, T] where
 * `transposed[p]` (keys ready for an NN product with the queries).
 */
export function splitHeadBlocks(x: tf.Tensor, B: number, T: number, H: number, transposed: boolean[]): tf.Tensor3D[] {
  const P = transposed.length;
  const D = x.shape[1]! / P;
  const dh = D / H;
  if (onWasm() && x.dtype === 'float32' && B * T > 0 && wasmKernelsUsable()) {
    const attrs = { B, T, H, dh, transposed } as unknown as tf.NamedAttrMap;
    return tf.engine().runKernel(HEAD_SPLIT, { x }, attrs) as unknown as tf.Tensor3D[];
  }
  const blocks = P === 1 ? [x] : tf.split(x, P, 1);
  return blocks.map((blk, p) => {
    const x4 = tf.reshape(blk, [B, T, H, dh]);
    return transposed[p]
      ? (tf.reshape(tf.transpose(x4, [0, 2, 3, 1]), [B * H, dh, T]) as tf.Tensor3D)
      : (tf.reshape(tf.transpose(x4, [0, 2, 1, 3]), [B * H, T, dh]) as tf.Tensor3D);
  });
}

/** Gradient of a row gather: dy [N, D] added into the rows `ids` of a zero table [V, D]. */
function scatterRowsKernel(args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }): tf.TensorInfo {
  const be = args.backend as WasmInternals;
  const { ids, dy } = args.inputs as { ids: tf.TensorInfo; dy: tf.TensorInfo };
  const V = args.attrs.rows as number;
  const [N, D] = dy.shape as [number, number];
  const out = be.makeOutput([V, D], 'float32');
  const heap = new Float32Array(be.wasm.HEAPU8.buffer);
  const idx = new Int32Array(be.wasm.HEAPU8.buffer, heapOffset(be, ids), N);
  const oi = heapOffset(be, out) >> 2;
  const yi = heapOffset(be, dy) >> 2;
  heap.fill(0, oi, oi + V * D);
  for (let n = 0; n < N; n++) {
    const row = idx[n]!;
    // An id outside the table would write outside it, into other tensors: refuse.
    if (!(row >= 0 && row < V)) throw new PartiError('internal', `embedding id ${row} outside a table of ${V} rows`);
    const dst = oi + row * D;
    const src = yi + n * D;
    for (let d = 0; d < D; d++) heap[dst + d]! += heap[src + d]!;
  }
  return out;
}

/** Registers the kernels above once, if this wasm backend has the internals they need. */
function wasmKernelsUsable(): boolean {
  const current = tf.backend();
  if (slicedState?.backend === current) return true;
  const be = current as unknown as Partial<WasmInternals> & { incRef?: unknown };
  const w = be.wasm;
  if (!w || typeof w.cwrap !== 'function' || typeof w._malloc !== 'function' || !w.HEAPU8 || !w.tfjs?.registerTensor || !w.tfjs.disposeData) return false;
  if (!be.dataIdMap || typeof be.dataIdNextNumber !== 'number' || typeof be.makeOutput !== 'function' || typeof be.incRef !== 'function') return false;
  // A new backend instance (re-initialized wasm) gets its own entry point and scratch.
  slicedState = { backend: current, raw: w.cwrap('BatchMatMul', null, Array(9).fill('number')), shapes: w._malloc(24) };
  if (kernelsRegistered) return true;
  kernelsRegistered = true;
  const kernels: [string, (args: { inputs: tf.NamedTensorInfoMap; backend: unknown }) => tf.TensorInfo][] = [
    [SLICED_MATMUL, slicedKernel],
    [COLUMN_SUM, columnSumKernel],
    [TRANSPOSE_2D, transpose2DKernel],
    [HEAD_SPLIT, headSplitKernel as unknown as (args: { inputs: tf.NamedTensorInfoMap; backend: unknown }) => tf.TensorInfo],
    [HEAD_MERGE, headMergeKernel as unknown as (args: { inputs: tf.NamedTensorInfoMap; backend: unknown }) => tf.TensorInfo],
    [SCATTER_ROWS, scatterRowsKernel as unknown as (args: { inputs: tf.NamedTensorInfoMap; backend: unknown }) => tf.TensorInfo],
  ];
  for (const [kernelName, kernelFunc] of kernels) {
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
  tf.registerGradient({ kernelName: HEAD_SPLIT, gradFunc: headSplitGrad as unknown as tf.GradFunc });
  tf.unregisterKernel('Identity', 'wasm');
  tf.registerKernel({ kernelName: 'Identity', backendName: 'wasm', kernelFunc: sharedIdentityKernel as unknown as tf.KernelFunc });
  return true;
}

/** x [M, N] -> x^T [N, M]. */
export function transpose2d(x: tf.Tensor): tf.Tensor2D {
  if (x.dtype === 'float32' && onWasm() && wasmKernelsUsable()) return tf.engine().runKernel(TRANSPOSE_2D, { x }, {}) as tf.Tensor2D;
  return tf.transpose(x) as tf.Tensor2D;
}

/** Sum over rows: x [M, N] -> [N]. No gradient (used inside hand-written gradients). */
export function sumRows(x: tf.Tensor): tf.Tensor1D {
  if (x.dtype === 'float32' && onWasm() && wasmKernelsUsable()) return tf.engine().runKernel(COLUMN_SUM, { x }, {}) as tf.Tensor1D;
  return tf.sum(x, 0) as tf.Tensor1D;
}

/** Batched NN product a [N, M, K] x b [N, K, P] on the fastest kernel this backend has. */
function batchNN(a: tf.Tensor, b: tf.Tensor): tf.Tensor3D {
  if (a.shape[0]! > 1 && a.shape[1]! > 0 && a.shape[2]! > 0 && b.shape[2]! > 0 && onWasm() && wasmKernelsUsable()) {
    return tf.engine().runKernel(SLICED_MATMUL, { a, b }, {}) as tf.Tensor3D;
  }
  return tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D);
}

const batchMatmulNN = tf.customGrad(((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: batchNN(a, b),
    gradFunc: (dy: tf.Tensor, [sa, sb]: tf.Tensor[]) => [
      batchNN(dy, tf.transpose(sb!, [0, 2, 1])),
      batchNN(tf.transpose(sa!, [0, 2, 1]), dy),
    ],
  };
}) as Grad2 as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (a: tf.Tensor, b: tf.Tensor) => tf.Tensor;

/**
 * Forward matmul FLOPs (2*M*K*N per product) issued through `matmul`/`batchMatmul` since the last
 * reset; a training step costs about 3x the forward count. Read by bench/.
 */
export const matmulFlops = { forward: 0 };

/** a [M, K] x b [K, N] -> [M, N], with a gradient that stays on fast kernels. */
export function matmul(a: tf.Tensor, b: tf.Tensor): tf.Tensor2D {
  matmulFlops.forward += 2 * a.shape[0]! * a.shape[1]! * b.shape[1]!;
  return (onWasm() ? matmulNN(a, b) : tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D)) as tf.Tensor2D;
}

/** a [N, M, K] x b [N, K, P] -> [N, M, P] (no broadcasting), gradient on fast kernels. */
export function batchMatmul(a: tf.Tensor, b: tf.Tensor): tf.Tensor3D {
  matmulFlops.forward += 2 * a.shape[0]! * a.shape[1]! * a.shape[2]! * b.shape[2]!;
  return (onWasm() ? batchMatmulNN(a, b) : tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D)) as tf.Tensor3D;
}

const linearNN = tf.customGrad(((x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([x, w]);
  return {
    // XNNPACK adds the bias inside the product: no separate Add kernel.
    value: tf.fused.matMul({ a: x as tf.Tensor2D, b: w as tf.Tensor2D, bias: b }),
    gradFunc: (dy: tf.Tensor, [sx, sw]: tf.Tensor[]) => [
      tf.matMul(dy as tf.Tensor2D, transpose2d(sw!)),
      tf.matMul(transpose2d(sx!), dy as tf.Tensor2D),
      sumRows(dy),
    ],
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor;

/** x [N, Din] W [Din, Dout] + b [Dout]. */
export function linear(x: tf.Tensor, w: tf.Tensor, b?: tf.Tensor): tf.Tensor2D {
  if (!b) return matmul(x, w);
  if (!onWasm()) return tf.add(matmul(x, w), b) as tf.Tensor2D;
  matmulFlops.forward += 2 * x.shape[0]! * x.shape[1]! * w.shape[1]!;
  return linearNN(x, w, b) as tf.Tensor2D;
}

/** Rows of `table` [V, D] for integer `ids` [N] -> [N, D]. */
export function embed(ids: tf.Tensor1D, table: tf.Tensor): tf.Tensor2D {
  if (!onWasm()) return tf.gather(table, ids) as tf.Tensor2D;
  // Forward is a plain gather; the table's gradient (a scatter-add, UnsortedSegmentSum) is
  // oneHot(ids)^T x dy, one NN matmul. No gradient flows to the integer ids.
  const V = table.shape[0]!;
  const f = tf.customGrad(((t: tf.Tensor, save: tf.GradSaveFunc) => {
    // The ids must be saved: the forward pass's scope disposes them before the backward runs.
    save([ids]);
    return {
      value: tf.gather(t, ids),
      gradFunc: (dy: tf.Tensor, [sids]: tf.Tensor[]) => [
        wasmKernelsUsable() && dy.rank === 2
          ? (tf.engine().runKernel(SCATTER_ROWS, { ids: sids!, dy }, { rows: V }) as tf.Tensor)
          : tf.matMul(tf.transpose(oneHot(sids as tf.Tensor1D, V)), dy as tf.Tensor2D),
      ],
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (t: tf.Tensor) => tf.Tensor;
  // Only the backward product counts, and only where it is one (not the scatter-add kernel).
  if (!wasmKernelsUsable()) matmulFlops.forward += (2 * ids.shape[0] * V * table.shape[1]!) / 3;
  return f(table) as tf.Tensor2D;
}

const stopGradientOp = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
  void save;
  return { value: tf.clone(x), gradFunc: (dy: tf.Tensor) => [tf.zerosLike(dy)] };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;

/** Identity forward, zero gradient backward. */
export function stopGradient<T extends tf.Tensor>(x: T): T {
  return stopGradientOp(x) as T;
}

/**
 * Per-row softmax cross-entropy: logits [N, V], integer targets [N] -> losses [N] (nats).
 */
export function crossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Tensor1D {
  const logp = tf.logSoftmax(logits);
  return tf.neg(tf.sum(tf.mul(logp, oneHot(targets, logits.shape[1])), 1)) as tf.Tensor1D;
}

/**
 * LayerNorm over the last axis of x [N, D] with gain g and bias b [D]. A hand-written gradient
 * (dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / sigma) replaces a dozen small
 * autodiff kernels per call.
 */
export function layerNorm(x: tf.Tensor, g: tf.Tensor, b: tf.Tensor, eps = 1e-5): tf.Tensor2D {
  return layerNormOp(x, g, b, eps) as tf.Tensor2D;
}

function layerNormOp(x: tf.Tensor, g: tf.Tensor, b: tf.Tensor, eps: number): tf.Tensor {
  const f = tf.customGrad(((xi: tf.Tensor, gi: tf.Tensor, bi: tf.Tensor, save: tf.GradSaveFunc) => {
    const mean = tf.mean(xi, -1, true);
    const xc = tf.sub(xi, mean);
    const inv = tf.rsqrt(tf.add(tf.mean(tf.square(xc), -1, true), eps));
    const xhat = tf.mul(xc, inv);
    save([xhat, inv, gi]);
    return {
      value: tf.add(tf.mul(xhat, gi), bi),
      gradFunc: (dy: tf.Tensor, [sxhat, sinv, sg]: tf.Tensor[]) => {
        const dxhat = tf.mul(dy, sg!);
        const dx = tf.mul(
          tf.sub(tf.sub(dxhat, tf.mean(dxhat, -1, true)), tf.mul(sxhat!, tf.mean(tf.mul(dxhat, sxhat!), -1, true))),
          sinv!,
        );
        return [dx, sumRows(tf.mul(dy, sxhat!)), sumRows(dy)];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => tf.Tensor;
  return f(x, g, b);
}

const GELU_C = Math.sqrt(2 / Math.PI);

const geluOp = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
  // 0.5 x (1 + tanh(z)) = x sigmoid(2z): wasm's Sigmoid is ~15x faster than its Tanh.
  const x2 = tf.square(x);
  const s = tf.sigmoid(tf.mul(x, tf.add(tf.mul(x2, 2 * GELU_C * 0.044715), 2 * GELU_C)));
  save([x, x2, s]);
  return {
    value: tf.mul(x, s),
    gradFunc: (dy: tf.Tensor, [sx, sx2, ss]: tf.Tensor[]) => {
      // d/dx x s(2z) = s + x s (1 - s) 2 c (1 + 3 * 0.044715 x^2)
      const ds = tf.mul(tf.mul(ss!, tf.sub(1, ss!)), tf.add(tf.mul(sx2!, 2 * GELU_C * 3 * 0.044715), 2 * GELU_C));
      return [tf.mul(dy, tf.add(ss!, tf.mul(sx!, ds)))];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;

/** GELU, tanh approximation (as in GPT-2 / T5 MLPs), with a fused hand-written gradient. */
export function gelu(x: tf.Tensor): tf.Tensor {
  return geluOp(x);
}
