import type { ModelConfig } from '../config/model-schema.ts';
import { partiLayout } from './parti.ts';
import type { ParamLayout } from './param-layout.ts';
import { vqganLayout } from './vit-vqgan.ts';

/** Parameter counts of a config, computed from the layouts (nothing is allocated). */
export interface ParamCounts {
  /** The Parti encoder-decoder (what the paper's 350M/750M/3B/20B count). */
  total: number;
  /**
   * `total` without the embedding tables: text and image token embeddings, learned positions and
   * the output projection over the image codes (the decoder's unembedding).
   */
  nonEmbedding: number;
  components: {
    textEmbedding: number;
    textEncoder: number;
    imageEmbedding: number;
    imageDecoder: number;
    outputProjection: number;
  };
  /** The ViT-VQGAN image tokenizer, counted separately. */
  tokenizer: { total: number; encoder: number; quantizer: number; decoder: number; discriminator: number };
}

function sum(layout: ParamLayout, pred: (name: string) => boolean): number {
  return layout.entries.filter((e) => pred(e.name)).reduce((n, e) => n + e.size, 0);
}

export function countParams(config: ModelConfig): ParamCounts {
  const p = partiLayout(config);
  const v = vqganLayout(config.tokenizer);
  const emb = p.entries.filter((e) => e.embedding).reduce((n, e) => n + e.size, 0);
  return {
    total: p.size,
    nonEmbedding: p.size - emb,
    components: {
      textEmbedding: sum(p, (n) => n === 'text.embed' || n === 'text.pos'),
      textEncoder: sum(p, (n) => n.startsWith('text.encoder.')),
      imageEmbedding: sum(p, (n) => n === 'image.embed' || n === 'image.pos'),
      imageDecoder: sum(p, (n) => n.startsWith('image.decoder.')),
      outputProjection: sum(p, (n) => n.startsWith('image.output.')),
    },
    tokenizer: {
      total: v.size,
      encoder: sum(v, (n) => n.startsWith('vq.encoder.')),
      quantizer: sum(v, (n) => n === 'vq.codebook'),
      decoder: sum(v, (n) => n.startsWith('vq.decoder.')),
      discriminator: sum(v, (n) => n.startsWith('vq.disc.')),
    },
  };
}
