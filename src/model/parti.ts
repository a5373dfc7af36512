import * as tf from '@tensorflow/tfjs';
import type { ModelConfig } from '../config/model-schema.ts';
import { crossEntropy, embed, linear } from './ops.ts';
import { LayoutBuilder, param, type ParamLayout, type ParamTensors } from './param-layout.ts';
import {
  addPositions,
  addStackParams,
  block,
  causalBias,
  crossKeysValues,
  encoderStack,
  finalNorm,
  INIT_STD,
  paddingBias,
  type ForwardContext,
  type KeysValues,
  type StackShape,
} from './transformer.ts';

/**
 * The Parti encoder-decoder: a pre-LN text encoder with learned positions, and an image decoder
 * (causal self-attention, cross-attention to the encoder output, GELU MLP) with a final LayerNorm
 * and an output projection over the image codes. The decoder reads BOS followed by the image
 * tokens and predicts each next token.
 *
 * Parameter names: `text.embed`, `text.pos`, `text.encoder.{i}.*`, `text.encoder.ln.*`,
 * `image.embed` (codes + BOS), `image.pos`, `image.decoder.{i}.*`, `image.decoder.ln.*`,
 * `image.output.w`, `image.output.b`.
 */
export class PartiModel {
  readonly layout: ParamLayout;
  readonly text: StackShape & { vocabSize: number; maxLength: number };
  readonly image: StackShape;
  /** Number of image codes (the codebook size); the BOS id is this number. */
  readonly codes: number;
  /** Image tokens per image. */
  readonly imageTokens: number;

  constructor(readonly config: ModelConfig) {
    this.text = config.text;
    this.image = config.image;
    this.codes = config.tokenizer.codebookSize;
    this.imageTokens = (config.tokenizer.imageSize / config.tokenizer.patchSize) ** 2;
    this.layout = partiLayout(config);
  }

  /** Id of the BOS token that starts every image sequence. */
  get bosId(): number {
    return this.codes;
  }

  /**
   * Text encoder: ids [B*Lt] (int32) with validity mask [B*Lt] -> memory [B*Lt, Dtext] and the
   * padding bias [B,1,1,Lt] used by cross-attention.
   */
  encode(p: ParamTensors, textIds: tf.Tensor1D, textMask: ArrayLike<number>, B: number, ctx: ForwardContext) {
    const L = this.text.maxLength;
    const bias = paddingBias(textMask, B, L);
    const x = addPositions(embed(textIds, param(p, 'text.embed')), param(p, 'text.pos'), B, L);
    const memory = encoderStack(p, 'text.encoder', this.text, x, B, L, ctx, bias);
    return { memory, bias };
  }

  /** Cross-attention keys/values of every decoder layer for one encoded batch (cache them when sampling). */
  crossKeysValues(p: ParamTensors, memory: tf.Tensor, B: number): KeysValues[] {
    const out: KeysValues[] = [];
    for (let i = 0; i < this.image.layers; i++) {
      out.push(crossKeysValues(p, `image.decoder.${i}`, memory, B, this.text.maxLength, this.image.heads));
    }
    return out;
  }

  /**
   * Image decoder over T input tokens per sample at positions [start, start+T): input ids
   * [B*T] (BOS then image tokens) -> logits [B*T, codes]. With `past` (one KeysValues per layer),
   * attends also to the cached earlier positions and returns the extended cache in `selfKV`.
   */
  decode(
    p: ParamTensors,
    inputIds: tf.Tensor1D,
    B: number,
    T: number,
    cross: KeysValues[],
    crossBias: tf.Tensor,
    ctx: ForwardContext,
    opts: { start?: number; past?: KeysValues[]; returnCrossAttention?: boolean } = {},
  ) {
    const start = opts.start ?? 0;
    let h: tf.Tensor = addPositions(embed(inputIds, param(p, 'image.embed')), param(p, 'image.pos'), B, T, start);
    const selfBias = causalBias(T, start);
    const selfKV: KeysValues[] = [];
    const crossAttention: tf.Tensor4D[] = [];
    for (let i = 0; i < this.image.layers; i++) {
      const r = block(p, `image.decoder.${i}`, h, {
        B,
        T,
        H: this.image.heads,
        dropout: this.image.dropout,
        ctx,
        selfBias,
        past: opts.past?.[i],
        cross: cross[i],
        crossBias,
        returnCrossAttention: opts.returnCrossAttention,
      });
      h = r.y;
      selfKV.push(r.selfKV);
      if (r.crossProbs) crossAttention.push(r.crossProbs);
    }
    const hn = finalNorm(p, 'image.decoder', h);
    const logits = linear(hn, param(p, 'image.output.w'), param(p, 'image.output.b'));
    return { logits, selfKV, crossAttention };
  }

  /** Decoder inputs for teacher forcing: BOS then all but the last image token, per sample. */
  shiftRight(imageTokens: Int32Array, B: number): Int32Array {
    const T = this.imageTokens;
    const out = new Int32Array(B * T);
    for (let b = 0; b < B; b++) {
      out[b * T] = this.bosId;
      out.set(imageTokens.subarray(b * T, b * T + T - 1), b * T + 1);
    }
    return out;
  }

  /**
   * Training loss: sum over samples of each sample's mean next-token cross-entropy (nats).
   * `text` [B*Lt] ids and mask, `imageTokens` [B*Li].
   */
  loss(p: ParamTensors, text: Int32Array, textMask: Uint8Array, imageTokens: Int32Array, B: number, ctx: ForwardContext): tf.Scalar {
    const T = this.imageTokens;
    const { memory, bias } = this.encode(p, tf.tensor1d(text, 'int32'), textMask, B, ctx);
    const cross = this.crossKeysValues(p, memory, B);
    const inputs = tf.tensor1d(this.shiftRight(imageTokens, B), 'int32');
    const { logits } = this.decode(p, inputs, B, T, cross, bias, ctx);
    const ce = crossEntropy(logits, tf.tensor1d(imageTokens, 'int32'));
    return tf.sum(tf.mean(tf.reshape(ce, [B, T]), 1)) as tf.Scalar;
  }
}

/** The Parti parameter layout for a config (no tensors allocated). */
export function partiLayout(config: ModelConfig): ParamLayout {
  const b = new LayoutBuilder();
  const t = config.text;
  const im = config.image;
  const codes = config.tokenizer.codebookSize;
  const imageTokens = (config.tokenizer.imageSize / config.tokenizer.patchSize) ** 2;
  const w = { kind: 'normal', std: INIT_STD } as const;
  b.add('text.embed', [t.vocabSize, t.dModel], w, { decay: false, embedding: true });
  b.add('text.pos', [t.maxLength, t.dModel], w, { decay: false, embedding: true });
  addStackParams(b, 'text.encoder', t);
  b.add('image.embed', [codes + 1, im.dModel], w, { decay: false, embedding: true });
  b.add('image.pos', [imageTokens, im.dModel], w, { decay: false, embedding: true });
  addStackParams(b, 'image.decoder', im, t.dModel);
  // The output projection is the decoder's unembedding: counted with the embeddings.
  b.add('image.output.w', [im.dModel, codes], w, { embedding: true });
  b.add('image.output.b', [codes], { kind: 'zeros' }, { embedding: true });
  return b.build();
}
