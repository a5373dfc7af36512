import * as tf from '@tensorflow/tfjs';
import { PartiModel } from './parti.ts';
import { TextTokenizer } from './text-tokenizer.ts';
import { uniformAt, hashName } from './rng.ts';
import { flatGradients, type GradientOptions, type GradientResult, type Trainable } from './trainable.ts';
import type { ModelConfig } from '../config/model-schema.ts';

/** One Parti training batch: B captions (already tokenized) and their image tokens. */
export interface PartiBatch {
  /** Sample identities (index in the data set), one per sample. */
  ids: readonly number[];
  /** [B * text.maxLength] token ids. */
  text: Int32Array;
  /** [B * text.maxLength] 1 for real tokens, 0 for PAD. */
  textMask: Uint8Array;
  /** [B * imageTokens] image codes from the frozen tokenizer. */
  imageTokens: Int32Array;
}

const CONDITION_SITE = hashName('condition-dropout');

/** Whether sample `id` has its caption dropped at `step` (classifier-free guidance training). */
export function captionDropped(p: number, seed: number, step: number, id: number): boolean {
  return p > 0 && uniformAt(seed, step, id, CONDITION_SITE) < p;
}

/** Parti as a Trainable: next-image-token cross-entropy with condition dropout. */
export class PartiTrainable implements Trainable<PartiBatch> {
  readonly model: PartiModel;
  readonly tokenizer: TextTokenizer;
  private readonly empty: { ids: Int32Array; mask: Uint8Array };

  constructor(readonly config: ModelConfig) {
    this.model = new PartiModel(config);
    this.tokenizer = new TextTokenizer(config.text.maxLength);
    this.empty = this.tokenizer.encode('');
  }

  get layout() {
    return this.model.layout;
  }

  /** Tokenizes captions into a batch. */
  makeBatch(ids: readonly number[], captions: readonly string[], imageTokens: Int32Array): PartiBatch {
    const L = this.config.text.maxLength;
    const text = new Int32Array(ids.length * L);
    const textMask = new Uint8Array(ids.length * L);
    captions.forEach((c, i) => {
      const e = this.tokenizer.encode(c);
      text.set(e.ids, i * L);
      textMask.set(e.mask, i * L);
    });
    return { ids, text, textMask, imageTokens };
  }

  computeGradients(params: Float32Array, batch: PartiBatch, opts: GradientOptions): GradientResult {
    const B = batch.ids.length;
    const L = this.config.text.maxLength;
    // Condition dropout: replace the caption by the empty caption, decided per (seed, step, id).
    const text = batch.text.slice();
    const textMask = batch.textMask.slice();
    let dropped = 0;
    batch.ids.forEach((id, i) => {
      if (captionDropped(this.config.conditionDropout, opts.seed, opts.step, id)) {
        text.set(this.empty.ids, i * L);
        textMask.set(this.empty.mask, i * L);
        dropped++;
      }
    });
    const ctx = { training: true, seed: opts.seed, step: opts.step, sampleIds: batch.ids };
    const { loss, grads } = flatGradients(this.layout, params, (p) =>
      this.model.loss(p, text, textMask, batch.imageTokens, B, ctx),
    );
    return {
      loss,
      grads,
      samples: B,
      tokens: B * this.model.imageTokens,
      metrics: { captionsDropped: dropped },
      aux: {},
    };
  }

  /** Mean loss of a batch without dropout or condition dropout (evaluation). */
  evaluate(params: Float32Array, batch: PartiBatch): number {
    const tensors = this.layout.toTensors(params);
    try {
      const B = batch.ids.length;
      const ctx = { training: false, seed: 0, step: 0, sampleIds: batch.ids };
      const l = tf.tidy(() => this.model.loss(tensors, batch.text, batch.textMask, batch.imageTokens, B, ctx));
      const v = l.dataSync()[0]!;
      l.dispose();
      return v / B;
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  }
}
