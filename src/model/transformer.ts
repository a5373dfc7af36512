import * as tf from '@tensorflow/tfjs';
import { batchMatmul, gelu, layerNorm, linear, splitHeadBlocks } from './ops.ts';
import { hashInts, hashName } from './rng.ts';
import { param, type LayoutBuilder, type ParamTensors } from './param-layout.ts';

/**
 * Pre-LN transformer pieces shared by the text encoder, the image decoder and both ViTs of the
 * image tokenizer. Activations are 2-D, [B*T, D] (rows grouped by sample), which keeps every
 * weight product a plain NN matmul on wasm; only attention reshapes to [B*H, T, dh].
 */

/** Shape of one stack (a subset of the config's transformer section). */
export interface StackShape {
  layers: number;
  dModel: number;
  heads: number;
  mlpRatio: number;
  dropout: number;
}

/** Std of the normal init of weight matrices. */
export const INIT_STD = 0.02;

/**
 * What makes a forward pass reproducible: dropout masks are a function of (seed, step, sample id,
 * site) only, so a sample gets the same mask whichever process or micro-batch runs it.
 */
export interface ForwardContext {
  training: boolean;
  seed: number;
  step: number;
  /** Identity of each sample in the batch (its index in the data set), in row-group order. */
  sampleIds: readonly number[];
}

export const EVAL_CONTEXT: ForwardContext = { training: false, seed: 0, step: 0, sampleIds: [] };

function addNorm(b: LayoutBuilder, prefix: string, d: number): void {
  b.add(`${prefix}.g`, [d], { kind: 'ones' });
  b.add(`${prefix}.b`, [d], { kind: 'zeros' });
}

/** Adds one block's parameters. `crossDim` adds cross-attention to a memory of that width. */
export function addBlockParams(b: LayoutBuilder, prefix: string, s: StackShape, crossDim?: number): void {
  const d = s.dModel;
  const w = { kind: 'normal', std: INIT_STD } as const;
  const z = { kind: 'zeros' } as const;
  addNorm(b, `${prefix}.ln1`, d);
  b.add(`${prefix}.attn.wqkv`, [d, 3 * d], w);
  b.add(`${prefix}.attn.bqkv`, [3 * d], z);
  b.add(`${prefix}.attn.wo`, [d, d], w);
  b.add(`${prefix}.attn.bo`, [d], z);
  if (crossDim !== undefined) {
    addNorm(b, `${prefix}.lnx`, d);
    b.add(`${prefix}.xattn.wq`, [d, d], w);
    b.add(`${prefix}.xattn.bq`, [d], z);
    b.add(`${prefix}.xattn.wkv`, [crossDim, 2 * d], w);
    b.add(`${prefix}.xattn.bkv`, [2 * d], z);
    b.add(`${prefix}.xattn.wo`, [d, d], w);
    b.add(`${prefix}.xattn.bo`, [d], z);
  }
  addNorm(b, `${prefix}.ln2`, d);
  b.add(`${prefix}.mlp.w1`, [d, s.mlpRatio * d], w);
  b.add(`${prefix}.mlp.b1`, [s.mlpRatio * d], z);
  b.add(`${prefix}.mlp.w2`, [s.mlpRatio * d, d], w);
  b.add(`${prefix}.mlp.b2`, [d], z);
}

/** Adds a stack of blocks `${prefix}.${i}` and its final LayerNorm `${prefix}.ln`. */
export function addStackParams(b: LayoutBuilder, prefix: string, s: StackShape, crossDim?: number): void {
  for (let i = 0; i < s.layers; i++) addBlockParams(b, `${prefix}.${i}`, s, crossDim);
  addNorm(b, `${prefix}.ln`, s.dModel);
}

/** Final LayerNorm of a stack. */
export function finalNorm(p: ParamTensors, prefix: string, x: tf.Tensor): tf.Tensor2D {
  return layerNorm(x, param(p, `${prefix}.ln.g`), param(p, `${prefix}.ln.b`));
}

/**
 * Inverted dropout on x [B*T, D] whose rows are grouped by sample. Each sample's mask is drawn
 * from its own seed (seed, step, sample id, site), independent of batch composition.
 */
export function dropout(x: tf.Tensor, rate: number, ctx: ForwardContext, site: string): tf.Tensor {
  if (!ctx.training || rate <= 0) return x;
  const rows = x.shape[0]!;
  const cols = x.shape[1]!;
  const B = ctx.sampleIds.length;
  const T = rows / B;
  const siteHash = hashName(site);
  const masks = ctx.sampleIds.map((id) =>
    tf.randomUniform([T, cols], 0, 1, 'float32', hashInts(ctx.seed, ctx.step, id, siteHash)),
  );
  const keep = tf.cast(tf.greaterEqual(masks.length === 1 ? masks[0]! : tf.concat(masks, 0), rate), 'float32');
  return tf.mul(x, tf.mul(keep, 1 / (1 - rate)));
}

/** [B*T, H*dh] -> [B*H, T, dh]. */
export function splitHeads(x: tf.Tensor, B: number, T: number, H: number): tf.Tensor3D {
  const dh = x.shape[1]! / H;
  return tf.reshape(tf.transpose(tf.reshape(x, [B, T, H, dh]), [0, 2, 1, 3]), [B * H, T, dh]);
}

/** [B*S, H*dh] -> keys transposed for an NN product, [B*H, dh, S]. */
export function splitHeadsTransposed(x: tf.Tensor, B: number, S: number, H: number): tf.Tensor3D {
  const dh = x.shape[1]! / H;
  return tf.reshape(tf.transpose(tf.reshape(x, [B, S, H, dh]), [0, 2, 3, 1]), [B * H, dh, S]);
}

/** [B*H, T, dh] -> [B*T, H*dh]. */
export function mergeHeads(x: tf.Tensor, B: number, T: number, H: number): tf.Tensor2D {
  const dh = x.shape[2]!;
  return tf.reshape(tf.transpose(tf.reshape(x, [B, H, T, dh]), [0, 2, 1, 3]), [B * T, H * dh]);
}

/** Keys (transposed) and values of one attention, head-split: what a key/value cache stores. */
export interface KeysValues {
  /** [B*H, dh, S] */
  kT: tf.Tensor3D;
  /** [B*H, S, dh] */
  v: tf.Tensor3D;
}

/**
 * Scaled dot-product attention over head-split tensors. `q` [B*H, T, dh] is scaled here; `bias`
 * broadcasts to [B, H, T, S] (0 or a large negative number). Returns the head-split output and
 * the attention probabilities [B, H, T, S].
 */
export function attend(
  q: tf.Tensor3D,
  kv: KeysValues,
  B: number,
  H: number,
  bias: tf.Tensor | null,
): { out: tf.Tensor3D; probs: tf.Tensor4D } {
  const T = q.shape[1];
  const S = kv.v.shape[1];
  const dh = q.shape[2];
  const scores = batchMatmul(tf.mul(q, 1 / Math.sqrt(dh)), kv.kT);
  let s4 = tf.reshape(scores, [B, H, T, S]) as tf.Tensor4D;
  if (bias) s4 = tf.add(s4, bias);
  const probs = tf.softmax(s4) as tf.Tensor4D;
  const out = batchMatmul(tf.reshape(probs, [B * H, T, S]), kv.v);
  return { out, probs };
}

/** Additive causal mask for T queries at positions [start, start+T) over start+T keys: [1, 1, T, start+T]. */
export function causalBias(T: number, start = 0): tf.Tensor4D {
  const S = start + T;
  const m = new Float32Array(T * S);
  for (let t = 0; t < T; t++) for (let s = start + t + 1; s < S; s++) m[t * S + s] = -1e9;
  return tf.tensor4d(m, [1, 1, T, S]);
}

/** Additive key-padding mask [B, 1, 1, S] from a 0/1 validity array [B*S]. */
export function paddingBias(valid: ArrayLike<number>, B: number, S: number): tf.Tensor4D {
  const m = new Float32Array(B * S);
  for (let i = 0; i < B * S; i++) m[i] = valid[i] ? 0 : -1e9;
  return tf.tensor4d(m, [B, 1, 1, S]);
}

function mlp(p: ParamTensors, prefix: string, x: tf.Tensor): tf.Tensor2D {
  const h = gelu(linear(x, param(p, `${prefix}.mlp.w1`), param(p, `${prefix}.mlp.b1`)));
  return linear(h, param(p, `${prefix}.mlp.w2`), param(p, `${prefix}.mlp.b2`));
}

/** Projects x [B*T, D] to head-split query, keys and values of a block's self-attention. */
export function selfProjections(p: ParamTensors, prefix: string, xn: tf.Tensor, B: number, T: number, H: number) {
  const qkv = linear(xn, param(p, `${prefix}.attn.wqkv`), param(p, `${prefix}.attn.bqkv`));
  const [q, kT, v] = splitHeadBlocks(qkv, B, T, H, [false, true, false]);
  return { q: q!, kv: { kT: kT!, v: v! } };
}

/** Keys and values of a block's cross-attention over a memory [B*S, Dm]; compute once per caption. */
export function crossKeysValues(p: ParamTensors, prefix: string, memory: tf.Tensor, B: number, S: number, H: number): KeysValues {
  const kv = linear(memory, param(p, `${prefix}.xattn.wkv`), param(p, `${prefix}.xattn.bkv`));
  const [kT, v] = splitHeadBlocks(kv, B, S, H, [true, false]);
  return { kT: kT!, v: v! };
}

/** Options of one block's forward. */
export interface BlockInputs {
  B: number;
  /** Query rows per sample in x. */
  T: number;
  H: number;
  dropout: number;
  ctx: ForwardContext;
  /** Self-attention bias (causal and/or padding), broadcastable to [B, H, T, S]. */
  selfBias: tf.Tensor | null;
  /** Cached keys/values of earlier positions, prepended to this call's (incremental decoding). */
  past?: KeysValues;
  /** Cross-attention keys/values (decoder blocks) and its padding bias. */
  cross?: KeysValues;
  crossBias?: tf.Tensor | null;
  /** Return the cross-attention probabilities [B, H, T, S] (attention maps). */
  returnCrossAttention?: boolean;
}

/** Output of one block. */
export interface BlockOutputs {
  /** [B*T, D] */
  y: tf.Tensor2D;
  /** This block's self-attention keys/values including `past` (the new cache). */
  selfKV: KeysValues;
  crossProbs?: tf.Tensor4D;
}

/**
 * One pre-LN block: x + SelfAttn(LN(x)) [+ CrossAttn(LN(.), memory)] + MLP(LN(.)), with dropout
 * on each residual branch.
 */
export function block(p: ParamTensors, prefix: string, x: tf.Tensor, o: BlockInputs): BlockOutputs {
  const { B, T, H } = o;
  const xn = layerNorm(x, param(p, `${prefix}.ln1.g`), param(p, `${prefix}.ln1.b`));
  const proj = selfProjections(p, prefix, xn, B, T, H);
  const selfKV: KeysValues = o.past
    ? { kT: tf.concat([o.past.kT, proj.kv.kT], 2), v: tf.concat([o.past.v, proj.kv.v], 1) }
    : proj.kv;
  const a = attend(proj.q, selfKV, B, H, o.selfBias);
  const attnOut = linear(mergeHeads(a.out, B, T, H), param(p, `${prefix}.attn.wo`), param(p, `${prefix}.attn.bo`));
  let h: tf.Tensor = tf.add(x, dropout(attnOut, o.dropout, o.ctx, `${prefix}.attn`));
  let crossProbs: tf.Tensor4D | undefined;
  if (o.cross) {
    const hn = layerNorm(h, param(p, `${prefix}.lnx.g`), param(p, `${prefix}.lnx.b`));
    const [q] = splitHeadBlocks(linear(hn, param(p, `${prefix}.xattn.wq`), param(p, `${prefix}.xattn.bq`)), B, T, H, [false]);
    const c = attend(q!, o.cross, B, H, o.crossBias ?? null);
    if (o.returnCrossAttention) crossProbs = c.probs;
    const crossOut = linear(mergeHeads(c.out, B, T, H), param(p, `${prefix}.xattn.wo`), param(p, `${prefix}.xattn.bo`));
    h = tf.add(h, dropout(crossOut, o.dropout, o.ctx, `${prefix}.xattn`));
  }
  const hn2 = layerNorm(h, param(p, `${prefix}.ln2.g`), param(p, `${prefix}.ln2.b`));
  const y = tf.add(h, dropout(mlp(p, prefix, hn2), o.dropout, o.ctx, `${prefix}.mlp`)) as tf.Tensor2D;
  return { y, selfKV, crossProbs };
}

/** Runs a non-causal stack (text encoder, ViT) and its final norm: x [B*T, D] -> [B*T, D]. */
export function encoderStack(
  p: ParamTensors,
  prefix: string,
  s: StackShape,
  x: tf.Tensor,
  B: number,
  T: number,
  ctx: ForwardContext,
  selfBias: tf.Tensor | null = null,
): tf.Tensor2D {
  let h = x;
  for (let i = 0; i < s.layers; i++) {
    h = block(p, `${prefix}.${i}`, h, { B, T, H: s.heads, dropout: s.dropout, ctx, selfBias }).y;
  }
  return finalNorm(p, prefix, h);
}

/** Adds learned positions pos [Tmax, D] (rows [start, start+T)) to x [B*T, D]. */
export function addPositions(x: tf.Tensor, pos: tf.Tensor, B: number, T: number, start = 0): tf.Tensor2D {
  const D = x.shape[1]!;
  const rows = start === 0 && pos.shape[0] === T ? pos : tf.slice(pos, [start, 0], [T, D]);
  return tf.reshape(tf.add(tf.reshape(x, [B, T, D]), rows), [B * T, D]);
}
