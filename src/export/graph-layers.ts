import type { ParamLayout } from '../model/param-layout.ts';
import type { StackShape } from '../model/transformer.ts';
import type { OnnxGraph } from './onnx-graph.ts';

/**
 * The transformer pieces of src/model/transformer.ts and ops.ts as ONNX nodes, op for op in the
 * same order and with the same constants, so that ONNX Runtime reproduces tfjs to float32
 * rounding. Activations are [batch, T, D] (tfjs keeps [B*T, D]; the rows are the same);
 * attention is head-split [batch, H, T, dh]; caches hold keys and values as [batch, H, S, dh].
 */

/** Trained parameters by name, added to a graph as initializers the first time a node reads one. */
export class GraphWeights {
  private readonly added = new Set<string>();
  constructor(
    readonly graph: OnnxGraph,
    readonly layout: ParamLayout,
    readonly flat: Float32Array,
  ) {}

  /** The initializer of parameter `name` (its name in the graph is the parameter's). */
  get(name: string): string {
    if (!this.added.has(name)) {
      const e = this.layout.get(name);
      this.graph.weight(name, this.flat.subarray(e.offset, e.offset + e.size), e.shape);
      this.added.add(name);
    }
    return name;
  }

  /** A float32 tensor derived from parameters (e.g. a normalized codebook), added once. */
  derived(name: string, data: Float32Array, dims: number[]): string {
    if (!this.added.has(name)) {
      this.graph.weight(name, data, dims);
      this.added.add(name);
    }
    return name;
  }
}

/** Key (or value) tensors of one attention, head-split [batch, H, S, dh]. */
export interface GraphKeysValues {
  k: string;
  v: string;
}

/** LayerNorm over the last axis, epsilon 1e-5 as in ops.layerNorm. */
export function layerNorm(w: GraphWeights, x: string, prefix: string): string {
  return w.graph.op('LayerNormalization', [x, w.get(`${prefix}.g`), w.get(`${prefix}.b`)], { axis: { i: -1 }, epsilon: { f: 1e-5 } }, 'ln');
}

/** x W + b. */
export function linear(w: GraphWeights, x: string, weight: string, bias?: string): string {
  const g = w.graph;
  const y = g.op('MatMul', [x, w.get(weight)]);
  return bias ? g.op('Add', [y, w.get(bias)]) : y;
}

/** GELU, tanh approximation, in ops.gelu's order: (x * 0.5) * (tanh(x * (x^2 * c * 0.044715 + c)) + 1). */
export function gelu(g: OnnxGraph, x: string): string {
  const c = Math.sqrt(2 / Math.PI);
  const x2 = g.op('Mul', [x, x]);
  const inner = g.op('Add', [g.op('Mul', [x2, g.scalar(c * 0.044715)]), g.scalar(c)]);
  const t = g.op('Tanh', [g.op('Mul', [x, inner])]);
  return g.op('Mul', [g.op('Mul', [x, g.scalar(0.5)]), g.op('Add', [t, g.scalar(1)])], {}, 'gelu');
}

/** [batch, T, H*dh] -> [batch, H, T, dh]. */
export function splitHeads(g: OnnxGraph, x: string, H: number, dh: number): string {
  return g.op('Transpose', [g.op('Reshape', [x, g.ints([0, 0, H, dh])])], { perm: { ints: [0, 2, 1, 3] } });
}

/** [batch, H, T, dh] -> [batch, T, H*dh]. */
export function mergeHeads(g: OnnxGraph, x: string, D: number): string {
  return g.op('Reshape', [g.op('Transpose', [x], { perm: { ints: [0, 2, 1, 3] } }), g.ints([0, 0, D])]);
}

/** Splits the last axis of x into `parts` equal pieces (tf.split of the fused projections). */
export function splitLast(g: OnnxGraph, x: string, width: number, parts: number): string[] {
  return g.opN('Split', [x, g.ints(Array.from({ length: parts }, () => width))], parts, { axis: { i: -1 } });
}

/**
 * Scaled dot-product attention as transformer.attend: (q / sqrt(dh)) k^T [+ bias], softmax over
 * keys, times v. q [batch, H, T, dh]; k, v [batch, H, S, dh]; bias broadcasts to [batch, H, T, S].
 */
export function attend(g: OnnxGraph, q: string, kv: GraphKeysValues, dh: number, bias: string | null): string {
  const kT = g.op('Transpose', [kv.k], { perm: { ints: [0, 1, 3, 2] } });
  let scores = g.op('MatMul', [g.op('Mul', [q, g.scalar(1 / Math.sqrt(dh))]), kT], {}, 'scores');
  if (bias) scores = g.op('Add', [scores, bias]);
  const probs = g.op('Softmax', [scores], { axis: { i: -1 } }, 'probs');
  return g.op('MatMul', [probs, kv.v], {}, 'attn');
}

/** Cross-attention keys/values of one decoder block from the encoder memory [batch, L, Dm]. */
export function crossKeysValues(w: GraphWeights, prefix: string, memory: string, s: StackShape): GraphKeysValues {
  const g = w.graph;
  const dh = s.dModel / s.heads;
  const kv = linear(w, memory, `${prefix}.xattn.wkv`, `${prefix}.xattn.bkv`);
  const [k, v] = splitLast(g, kv, s.dModel, 2);
  return { k: splitHeads(g, k!, s.heads, dh), v: splitHeads(g, v!, s.heads, dh) };
}

/** Inputs of one block (see transformer.block). */
export interface GraphBlockInputs {
  /** Self-attention bias, broadcastable to [batch, H, T, S], or null. */
  selfBias: string | null;
  /** Cached keys/values of earlier positions, concatenated before this call's. */
  past?: GraphKeysValues;
  cross?: GraphKeysValues;
  crossBias?: string | null;
}

/** One pre-LN block; returns the output and the self-attention keys/values including `past`. */
export function block(w: GraphWeights, prefix: string, x: string, s: StackShape, o: GraphBlockInputs): { y: string; selfKV: GraphKeysValues } {
  const g = w.graph;
  const H = s.heads;
  const D = s.dModel;
  const dh = D / H;
  const xn = layerNorm(w, x, `${prefix}.ln1`);
  const qkv = linear(w, xn, `${prefix}.attn.wqkv`, `${prefix}.attn.bqkv`);
  const [q, k, v] = splitLast(g, qkv, D, 3);
  const fresh = { k: splitHeads(g, k!, H, dh), v: splitHeads(g, v!, H, dh) };
  const selfKV = o.past
    ? { k: g.op('Concat', [o.past.k, fresh.k], { axis: { i: 2 } }), v: g.op('Concat', [o.past.v, fresh.v], { axis: { i: 2 } }) }
    : fresh;
  const a = attend(g, splitHeads(g, q!, H, dh), selfKV, dh, o.selfBias);
  let h = g.op('Add', [x, linear(w, mergeHeads(g, a, D), `${prefix}.attn.wo`, `${prefix}.attn.bo`)]);
  if (o.cross) {
    const hn = layerNorm(w, h, `${prefix}.lnx`);
    const qx = splitHeads(g, linear(w, hn, `${prefix}.xattn.wq`, `${prefix}.xattn.bq`), H, dh);
    const c = attend(g, qx, o.cross, dh, o.crossBias ?? null);
    h = g.op('Add', [h, linear(w, mergeHeads(g, c, D), `${prefix}.xattn.wo`, `${prefix}.xattn.bo`)]);
  }
  const hn2 = layerNorm(w, h, `${prefix}.ln2`);
  const m = linear(w, gelu(g, linear(w, hn2, `${prefix}.mlp.w1`, `${prefix}.mlp.b1`)), `${prefix}.mlp.w2`, `${prefix}.mlp.b2`);
  return { y: g.op('Add', [h, m], {}, 'block'), selfKV };
}

/** A non-causal stack and its final norm (text encoder, ViT). */
export function encoderStack(w: GraphWeights, prefix: string, s: StackShape, x: string, selfBias: string | null): string {
  let h = x;
  for (let i = 0; i < s.layers; i++) h = block(w, `${prefix}.${i}`, h, s, { selfBias }).y;
  return layerNorm(w, h, `${prefix}.ln`);
}

/** Additive key-padding bias [batch, 1, 1, L] from a 0/1 float mask [batch, L]: (mask - 1) * 1e9. */
export function paddingBias(g: OnnxGraph, mask: string, L: number): string {
  const b = g.op('Mul', [g.op('Sub', [mask, g.scalar(1)]), g.scalar(1e9)]);
  return g.op('Reshape', [b, g.ints([-1, 1, 1, L])], {}, 'pad_bias');
}
