/**
 * What the gallery thread computes: samples of the fixed prompts from one committed checkpoint,
 * as PNGs, with their cross-attention maps. Pure of threads and messages (gallery-thread.ts runs
 * it on its own thread), so a test can call it in-process.
 */
import { fetchPublishedState, isStoreUrl } from '../storage/published-state.ts';
import { PartiError } from '../errors.ts';
import { crossAttentionMaps, textTokenLabel } from '../generate/attention-maps.ts';
import { Generator } from '../generate/generator.ts';
import { imagePng } from '../generate/image-grid.ts';
import { SAMPLER_DEFAULTS } from '../generate/sampler.ts';
import { initBackend } from '../model/backend.ts';
import { partiLayout } from '../model/parti.ts';
import { BOS_ID, EOS_ID, PAD_ID } from '../model/text-tokenizer.ts';
import { loadTrainingState } from '../model/training-state.ts';
import { vqganLayout } from '../model/vit-vqgan.ts';
import { loadCheckpoint } from '../storage/checkpoint-load.ts';
import { openStore } from '../storage/open-store.ts';
import { attentionHeatmapPng } from './attention-heatmap.ts';
import type { GallerySource } from './gallery-source.ts';

/** One generated sample, ready for RunStateStore.addGalleryItem. */
export interface GalleryRender {
  prompt: string;
  png: Uint8Array;
  width: number;
  height: number;
  attention: { token: string; png: Uint8Array }[];
}

/** Sampler settings of the gallery: the CLI's defaults, one sample per prompt, a fixed seed (so steps compare). */
export const GALLERY_SETTINGS = { ...SAMPLER_DEFAULTS, samples: 1 } as const;

/** A text token as a person reads it: the character, or `␣`, `<bos>`, `<eos>`, `x2c`. */
function tokenText(id: number): string {
  if (id === BOS_ID) return '<bos>';
  if (id === EOS_ID) return '<eos>';
  if (id === PAD_ID) return '<pad>';
  if (id === 0x20) return '␣';
  if (id > 0x20 && id < 0x7f) return String.fromCharCode(id);
  return textTokenLabel(id);
}

/**
 * Loads the tokenizer once and the Parti parameters of each checkpoint it is asked for, and
 * samples the prompts. Keep one per thread: the backend and the tokenizer stay loaded.
 */
export class GallerySampler {
  #tokenizer: Float32Array | null = null;

  constructor(readonly source: GallerySource) {}

  /**
   * One image per prompt (in order) from the committed checkpoint of `step`, with one attention
   * map per prompt character when `attentionMaps`. Throws a one-line PartiError on a missing or
   * foreign checkpoint or tokenizer.
   */
  /** Starts the backend and loads the tokenizer, so that the first samples come quickly. */
  async warm(): Promise<void> {
    await this.#ready();
  }

  async #ready(): Promise<Float32Array> {
    const { config, tokenizerDir } = this.source;
    await initBackend(config.runtime.backend);
    if (!this.#tokenizer) {
      // A tokenizer published to a store (a cluster job) is fetched and verified first.
      const from = config.training.tokenizerFrom;
      if (from && isStoreUrl(from)) await fetchPublishedState(from, tokenizerDir);
      const state = await loadTrainingState(tokenizerDir, vqganLayout(config.model.tokenizer));
      if (!state) throw new PartiError('checkpoint', `${tokenizerDir}: no trained image tokenizer (checkpoint.json missing)`);
      this.#tokenizer = state.params;
    }
    return this.#tokenizer;
  }

  async render(step: number, prompts: readonly string[], attentionMaps: boolean): Promise<GalleryRender[]> {
    const { config, configHash, checkpointStore } = this.source;
    const tokenizer = await this.#ready();
    const store = openStore(checkpointStore);
    let parti: Float32Array;
    try {
      const loaded = await loadCheckpoint(store, step, { configHash, select: (o) => o.name === 'params.bin' });
      const bytes = loaded.objects.get('params.bin');
      if (!bytes) throw new PartiError('checkpoint', `checkpoint ${step} in ${store.url}: no params.bin`);
      parti = new Float32Array(new Uint8Array(bytes).buffer);
    } finally {
      await store.close();
    }
    const expected = partiLayout(config.model).size;
    if (parti.length !== expected) throw new PartiError('checkpoint', `checkpoint ${step}: params.bin has ${parti.length} parameters, the config's Parti model ${expected}`);
    const gen = new Generator({ source: `${checkpointStore} step ${step}`, config, configHash, parti, partiStep: step, tokenizer });
    try {
      const results = await gen.generate(
        prompts.map((prompt, promptIndex) => ({ prompt, promptIndex })),
        GALLERY_SETTINGS,
      );
      const size = gen.imageSize;
      // About 128 pixels a side, like `parti generate`'s grids: the page shows them at 160.
      const scale = Math.max(1, Math.round(128 / size));
      return results.map((r) => {
        const image = r.images[0]!;
        const set = { images: [image.image], size, channels: gen.channels };
        const attention: GalleryRender['attention'] = [];
        if (attentionMaps) {
          const maps = crossAttentionMaps(gen.runner, r.prompt, [image.tokens])[0]!;
          const T = maps.grid * maps.grid;
          const L = maps.textIds.length;
          for (let l = 0; l < L; l++) {
            const id = maps.textIds[l]!;
            // The prompt's own bytes: BOS, EOS and padding say little about where things are drawn.
            if (!maps.textMask[l] || id === BOS_ID || id === EOS_ID || id === PAD_ID) continue;
            const column = new Float32Array(T);
            for (let t = 0; t < T; t++) column[t] = maps.mean[t * L + l]!;
            attention.push({ token: tokenText(id), png: attentionHeatmapPng(column, maps.grid, maps.grid, Math.max(4, Math.round(64 / maps.grid))) });
          }
        }
        return { prompt: r.prompt, png: imagePng(set, 0, scale), width: size * scale, height: size * scale, attention };
      });
    } finally {
      gen.dispose();
    }
  }
}
