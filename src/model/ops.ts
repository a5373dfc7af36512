import * as tf from '@tensorflow/tfjs';

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
      tf.matMul(dy as tf.Tensor2D, tf.transpose(sb!) as tf.Tensor2D),
      tf.matMul(tf.transpose(sa!) as tf.Tensor2D, dy as tf.Tensor2D),
    ],
  };
}) as Grad2 as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (a: tf.Tensor, b: tf.Tensor) => tf.Tensor;

const batchMatmulNN = tf.customGrad(((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D),
    gradFunc: (dy: tf.Tensor, [sa, sb]: tf.Tensor[]) => [
      tf.matMul(dy as tf.Tensor3D, tf.transpose(sb!, [0, 2, 1]) as tf.Tensor3D),
      tf.matMul(tf.transpose(sa!, [0, 2, 1]) as tf.Tensor3D, dy as tf.Tensor3D),
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

/** x [N, Din] W [Din, Dout] + b [Dout]. */
export function linear(x: tf.Tensor, w: tf.Tensor, b?: tf.Tensor): tf.Tensor2D {
  const y = matmul(x, w);
  return (b ? tf.add(y, b) : y) as tf.Tensor2D;
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
      gradFunc: (dy: tf.Tensor, [sids]: tf.Tensor[]) => [tf.matMul(tf.transpose(oneHot(sids as tf.Tensor1D, V)), dy as tf.Tensor2D)],
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (t: tf.Tensor) => tf.Tensor;
  matmulFlops.forward += 2 * ids.shape[0] * V * table.shape[1]! / 3; // only the backward product
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
        return [dx, tf.sum(tf.mul(dy, sxhat!), 0), tf.sum(dy, 0)];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => tf.Tensor;
  return f(x, g, b);
}

const GELU_C = Math.sqrt(2 / Math.PI);

const geluOp = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
  const x2 = tf.square(x);
  const t = tf.tanh(tf.mul(x, tf.add(tf.mul(x2, GELU_C * 0.044715), GELU_C)));
  save([x, x2, t]);
  return {
    value: tf.mul(tf.mul(x, 0.5), tf.add(t, 1)),
    gradFunc: (dy: tf.Tensor, [sx, sx2, st]: tf.Tensor[]) => {
      // d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2)
      const dt = tf.mul(tf.sub(1, tf.square(st!)), tf.add(tf.mul(sx2!, GELU_C * 3 * 0.044715), GELU_C));
      return [tf.mul(dy, tf.mul(tf.add(tf.add(st!, 1), tf.mul(sx!, dt)), 0.5))];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;

/** GELU, tanh approximation (as in GPT-2 / T5 MLPs), with a fused hand-written gradient. */
export function gelu(x: tf.Tensor): tf.Tensor {
  return geluOp(x);
}
