import type { ImageTokenizerConfig, ModelConfig } from '../config/model-schema.ts';
import { partiLayout } from '../model/parti.ts';
import { vqganLayout } from '../model/vit-vqgan.ts';
import { block, crossKeysValues, encoderStack, GraphWeights, linear, layerNorm, paddingBias, type GraphKeysValues } from './graph-layers.ts';
import { OnnxGraph } from './onnx-graph.ts';

/**
 * The graphs `parti export onnx` writes, built from trained parameters (flat vectors in the
 * layouts of partiLayout / vqganLayout). Input and output names are the serving contract, listed
 * in the export's parti-onnx.json:
 *
 * text-encoder:  text_ids int64 [batch, L], text_mask float [batch, L] (1 real token, 0 padding)
 *                -> memory float [batch, L, Dtext]
 * decoder-prefill: input_ids int64 [batch, T] (BOS then image tokens, positions 0..T-1),
 *                memory, text_mask -> logits [batch, T, codes], present_key_i / present_value_i
 *                [batch, H, T, dh], cross_key_i / cross_value_i [batch, H, L, dh] (i = decoder layer)
 * decoder-step:  input_ids int64 [batch, 1] at position `past` (the caches' length), text_mask,
 *                past_key_i / past_value_i [batch, H, past, dh], cross_key_i / cross_value_i
 *                -> logits [batch, 1, codes], present_key_i / present_value_i [batch, H, past+1, dh]
 * vqgan-decoder: codes int64 [batch, N] -> pixels float [batch, S, S, C], about [0, 1] (clamp,
 *                then round(x * 255), as VitVqgan.unpatchify)
 */

/** Text encoder graph (PartiModel.encode). */
export function textEncoderGraph(config: ModelConfig, params: Float32Array): OnnxGraph {
  const g = new OnnxGraph('parti_text_encoder');
  const w = new GraphWeights(g, partiLayout(config), params);
  const t = config.text;
  const L = t.maxLength;
  const ids = g.input('text_ids', 'int64', ['batch', L]);
  const mask = g.input('text_mask', 'float32', ['batch', L]);
  const bias = paddingBias(g, mask, L);
  const x = g.op('Add', [g.op('Gather', [w.get('text.embed'), ids], { axis: { i: 0 } }), w.get('text.pos')]);
  const memory = encoderStack(w, 'text.encoder', t, x, bias);
  g.output('memory', memory, 'float32', ['batch', L, t.dModel]);
  return g;
}

/** Decoder embeddings + positions [start, start+T): rows of image.pos sliced at run time. */
function embedImage(w: GraphWeights, ids: string, start: string, end: string): string {
  const g = w.graph;
  const pos = g.op('Slice', [w.get('image.pos'), start, end, g.ints([0])]);
  return g.op('Add', [g.op('Gather', [w.get('image.embed'), ids], { axis: { i: 0 } }), pos]);
}

function decoderHead(w: GraphWeights, h: string): string {
  return linear(w, layerNorm(w, h, 'image.decoder.ln'), 'image.output.w', 'image.output.b');
}

/** Decoder prefill graph: a prefix from position 0, causal, computing the cross-attention keys/values. */
export function decoderPrefillGraph(config: ModelConfig, params: Float32Array): OnnxGraph {
  const g = new OnnxGraph('parti_decoder_prefill');
  const w = new GraphWeights(g, partiLayout(config), params);
  const im = config.image;
  const L = config.text.maxLength;
  const dh = im.dModel / im.heads;
  const ids = g.input('input_ids', 'int64', ['batch', 'tokens']);
  const memory = g.input('memory', 'float32', ['batch', L, config.text.dModel]);
  const mask = g.input('text_mask', 'float32', ['batch', L]);
  const crossBias = paddingBias(g, mask, L);
  const T = g.op('Shape', [ids], { start: { i: 1 }, end: { i: 2 } }, 'T');
  // Causal bias [T, T]: -1e9 where key position > query position (transformer.causalBias).
  const Ts = g.op('Squeeze', [T, g.ints([0])]);
  const r = g.op('Range', [g.ints([0], { scalar: true }), Ts, g.ints([1], { scalar: true })]);
  const later = g.op('Greater', [g.op('Unsqueeze', [r, g.ints([0])]), g.op('Unsqueeze', [r, g.ints([1])])]);
  const causal = g.op('Where', [later, g.scalar(-1e9), g.scalar(0)], {}, 'causal_bias');
  let h = embedImage(w, ids, g.ints([0]), T);
  for (let i = 0; i < im.layers; i++) {
    const prefix = `image.decoder.${i}`;
    const cross = crossKeysValues(w, prefix, memory, im);
    const r2 = block(w, prefix, h, im, { selfBias: causal, cross, crossBias });
    h = r2.y;
    g.output(`present_key_${i}`, r2.selfKV.k, 'float32', ['batch', im.heads, 'tokens', dh]);
    g.output(`present_value_${i}`, r2.selfKV.v, 'float32', ['batch', im.heads, 'tokens', dh]);
    g.output(`cross_key_${i}`, cross.k, 'float32', ['batch', im.heads, L, dh]);
    g.output(`cross_value_${i}`, cross.v, 'float32', ['batch', im.heads, L, dh]);
  }
  g.output('logits', decoderHead(w, h), 'float32', ['batch', 'tokens', config.tokenizer.codebookSize]);
  // Outputs in a stable order: logits first.
  g.outputs.unshift(g.outputs.pop()!);
  return g;
}

/** Decoder one-step graph: one token per row at position past, extending the self-attention caches. */
export function decoderStepGraph(config: ModelConfig, params: Float32Array): OnnxGraph {
  const g = new OnnxGraph('parti_decoder_step');
  const w = new GraphWeights(g, partiLayout(config), params);
  const im = config.image;
  const L = config.text.maxLength;
  const dh = im.dModel / im.heads;
  const ids = g.input('input_ids', 'int64', ['batch', 1]);
  const mask = g.input('text_mask', 'float32', ['batch', L]);
  const past: GraphKeysValues[] = [];
  const cross: GraphKeysValues[] = [];
  for (let i = 0; i < im.layers; i++) {
    past.push({
      k: g.input(`past_key_${i}`, 'float32', ['batch', im.heads, 'past', dh]),
      v: g.input(`past_value_${i}`, 'float32', ['batch', im.heads, 'past', dh]),
    });
  }
  for (let i = 0; i < im.layers; i++) {
    cross.push({
      k: g.input(`cross_key_${i}`, 'float32', ['batch', im.heads, L, dh]),
      v: g.input(`cross_value_${i}`, 'float32', ['batch', im.heads, L, dh]),
    });
  }
  const crossBias = paddingBias(g, mask, L);
  const start = g.op('Shape', [past[0]!.k], { start: { i: 2 }, end: { i: 3 } }, 'position');
  const end = g.op('Add', [start, g.ints([1])]);
  let h = embedImage(w, ids, start, end);
  const present: GraphKeysValues[] = [];
  for (let i = 0; i < im.layers; i++) {
    // One query over all cached keys: nothing to mask (causalBias(1, t) is all zeros).
    const r = block(w, `image.decoder.${i}`, h, im, { selfBias: null, past: past[i], cross: cross[i], crossBias });
    h = r.y;
    present.push(r.selfKV);
  }
  g.output('logits', decoderHead(w, h), 'float32', ['batch', 1, config.tokenizer.codebookSize]);
  present.forEach((kv, i) => {
    g.output(`present_key_${i}`, kv.k, 'float32', ['batch', im.heads, 'present', dh]);
    g.output(`present_value_${i}`, kv.v, 'float32', ['batch', im.heads, 'present', dh]);
  });
  return g;
}

/** Logit-Laplace keeps pixels away from 0 and 1 by this margin (VitVqgan's LAPLACE_EPS). */
const LAPLACE_EPS = 0.1;

/**
 * Row-wise l2-normalized codebook as VitVqgan.l2Normalize computes it (x * rsqrt(sum x^2 + 1e-12)),
 * folded into a constant at export in float32 steps.
 */
export function normalizedCodebook(c: ImageTokenizerConfig, params: Float32Array): Float32Array {
  const e = vqganLayout(c).get('vq.codebook');
  const K = c.codebookSize;
  const d = c.codeDim;
  const out = new Float32Array(K * d);
  for (let k = 0; k < K; k++) {
    const row = params.subarray(e.offset + k * d, e.offset + (k + 1) * d);
    let s = 0;
    for (let j = 0; j < d; j++) s = Math.fround(s + Math.fround(row[j]! * row[j]!));
    const inv = Math.fround(1 / Math.sqrt(Math.fround(s + 1e-12)));
    for (let j = 0; j < d; j++) out[k * d + j] = Math.fround(row[j]! * inv);
  }
  return out;
}

/** ViT-VQGAN decoder graph: codes -> pixels (VitVqgan.decode before the byte rounding). */
export function vqganDecoderGraph(c: ImageTokenizerConfig, params: Float32Array): OnnxGraph {
  const g = new OnnxGraph('parti_vqgan_decoder');
  const w = new GraphWeights(g, vqganLayout(c), params);
  const grid = c.imageSize / c.patchSize;
  const N = grid * grid;
  const P = c.patchSize;
  const C = c.channels;
  const patchDim = P * P * C;
  const codes = g.input('codes', 'int64', ['batch', N]);
  const codebook = w.derived('vq.codebook.normalized', normalizedCodebook(c, params), [c.codebookSize, c.codeDim]);
  const q = g.op('Gather', [codebook, codes], { axis: { i: 0 } });
  const x = g.op('Add', [linear(w, q, 'vq.decoder.proj.w', 'vq.decoder.proj.b'), w.get('vq.decoder.pos')]);
  const h = encoderStack(w, 'vq.decoder', c.decoder, x, null);
  const out = linear(w, h, 'vq.decoder.out.w', 'vq.decoder.out.b');
  let px: string;
  if (c.losses.logitLaplace > 0) {
    const mu = g.op('Slice', [out, g.ints([0]), g.ints([patchDim]), g.ints([2])]);
    px = g.op('Div', [g.op('Sub', [g.op('Sigmoid', [mu]), g.scalar(LAPLACE_EPS)]), g.scalar(1 - 2 * LAPLACE_EPS)]);
  } else {
    px = g.op('Div', [g.op('Add', [out, g.scalar(1)]), g.scalar(2)]);
  }
  // [batch, N, P*P*C] -> [batch, g, g, P, P, C] -> [batch, g, P, g, P, C] -> [batch, S, S, C].
  const six = g.op('Reshape', [px, g.ints([-1, grid, grid, P, P, C])]);
  const img = g.op('Reshape', [g.op('Transpose', [six], { perm: { ints: [0, 1, 3, 2, 4, 5] } }), g.ints([-1, c.imageSize, c.imageSize, C])]);
  g.output('pixels', img, 'float32', ['batch', c.imageSize, c.imageSize, C]);
  return g;
}
