import type { Config } from '../config/schema.ts';
import { PartiError } from '../errors.ts';
import { initBackend } from '../model/backend.ts';
import { PartiModel } from '../model/parti.ts';
import { TextTokenizer } from '../model/text-tokenizer.ts';
import { Upsampler } from '../model/upsampler.ts';
import { VitVqgan } from '../model/vit-vqgan.ts';
import { crossAttentionMaps, type CrossAttentionMaps } from './attention-maps.ts';
import { loadGenerationCheckpoint, type GenerationCheckpoint } from './generation-checkpoint.ts';
import { bestIndices, CaptionLikelihoodScorer, type RerankCandidate, type Scorer } from './reranking.ts';
import { sampleImageTokens, type PartiRunner, type SamplerSettings } from './sampler.ts';

/** What to generate per prompt. */
export interface GenerateSettings extends SamplerSettings {
  /** Images kept per prompt (>= 1). */
  samples: number;
  /**
   * Candidates drawn per prompt before keeping the best `samples` by the scorer; 0 or absent: no
   * reranking (exactly `samples` are drawn).
   */
  rerank?: number;
}

/** One prompt of a generation call. */
export interface PromptInput {
  prompt: string;
  /** Position in the request or prompt file; keys the random draws. */
  promptIndex: number;
}

/** One kept image. */
export interface GeneratedImage {
  /** Candidate index it was drawn with (its random stream). */
  candidate: number;
  tokens: Int32Array;
  /** RGB(A) bytes [imageSize * imageSize * channels]. */
  image: Uint8Array;
  /** The scorer's score, when reranked. */
  score?: number;
}

/** The kept images of one prompt, best first when reranked. */
export interface GeneratedPrompt extends PromptInput {
  images: GeneratedImage[];
  /** Whether the prompt was cut to the text length. */
  truncated: boolean;
}

/** Whether the tokenizer cuts `prompt` (without logging its warning again). */
export function promptTruncated(tokenizer: TextTokenizer, prompt: string): boolean {
  return new TextEncoder().encode(prompt).length > tokenizer.maxLength - 2;
}

/** Checks sampler settings; throws PartiError('usage') naming the flag. */
export function checkSettings(s: GenerateSettings): void {
  const fail = (flag: string, what: string, v: number) => {
    throw new PartiError('usage', `${flag}: ${what}, got ${v}`);
  };
  if (!Number.isInteger(s.samples) || s.samples <= 0) fail('--samples', 'must be an integer >= 1', s.samples);
  if (!Number.isInteger(s.topK) || s.topK < 0) fail('--top-k', 'must be an integer >= 0 (0 keeps all codes)', s.topK);
  if (!(s.topP > 0 && s.topP <= 1)) fail('--top-p', 'must be in (0, 1]', s.topP);
  if (!(s.temperature > 0) || !Number.isFinite(s.temperature)) fail('--temperature', 'must be a number > 0', s.temperature);
  if (!Number.isFinite(s.cfg)) fail('--cfg', 'must be a finite number', s.cfg);
  if (!Number.isSafeInteger(s.seed) || s.seed < 0) fail('--seed', 'must be an integer >= 0', s.seed);
  const m = s.rerank ?? 0;
  if (!Number.isInteger(m) || m < 0) fail('--rerank', 'must be an integer >= 0', m);
  if (m > 0 && m < s.samples) fail('--rerank', `must be >= --samples (${s.samples})`, m);
}

/**
 * A trained run ready to generate: Parti (parameters uploaded once), the image tokenizer's
 * decoder and, when trained, the upsampler.
 */
export class Generator {
  readonly runner: PartiRunner;
  readonly vq: VitVqgan;
  readonly upsampler: Upsampler | null;
  readonly config: Config;
  /** Side of generated images in pixels, and bytes per pixel. */
  readonly imageSize: number;
  readonly channels: number;

  constructor(readonly checkpoint: GenerationCheckpoint) {
    const config = checkpoint.config;
    this.config = config;
    const model = new PartiModel(config.model);
    this.runner = { model, tokenizer: new TextTokenizer(config.model.text.maxLength), params: model.layout.toTensors(checkpoint.parti) };
    this.vq = new VitVqgan(config.model.tokenizer);
    this.upsampler = checkpoint.upsampler
      ? new Upsampler(checkpoint.upsampler.config, config.model.tokenizer.channels, config.model.tokenizer.losses.l2)
      : null;
    this.imageSize = config.model.tokenizer.imageSize;
    this.channels = config.model.tokenizer.channels;
  }

  /** Loads a run (see loadGenerationCheckpoint) on the backend its config names. */
  static async load(ref: string): Promise<Generator> {
    const ckpt = await loadGenerationCheckpoint(ref);
    await initBackend(ckpt.config.runtime.backend);
    return new Generator(ckpt);
  }

  /** Image tokens -> images (bytes), one per token array. */
  decode(tokens: readonly Int32Array[]): Uint8Array[] {
    if (tokens.length === 0) return [];
    const T = this.runner.model.imageTokens;
    const all = new Int32Array(tokens.length * T);
    tokens.forEach((t, i) => all.set(t, i * T));
    const px = this.vq.decode(this.checkpoint.tokenizer, all, tokens.length);
    const n = this.imageSize * this.imageSize * this.channels;
    return tokens.map((_, i) => px.slice(i * n, (i + 1) * n));
  }

  /**
   * Generates for a batch of prompts: draws `rerank` (or `samples`) candidates per prompt in one
   * sampling batch, scores them with `scorer` (default: CaptionLikelihoodScorer) when reranking,
   * keeps the best `samples`, and decodes them.
   */
  async generate(
    prompts: readonly PromptInput[],
    settings: GenerateSettings,
    opts: { scorer?: Scorer; cache?: boolean; onToken?: (t: number, total: number) => void } = {},
  ): Promise<GeneratedPrompt[]> {
    checkSettings(settings);
    const m = settings.rerank && settings.rerank > 0 ? settings.rerank : settings.samples;
    const candidates = Array.from({ length: m }, (_, i) => i);
    const drawn = sampleImageTokens(
      this.runner,
      prompts.map((p) => ({ ...p, samples: candidates })),
      settings,
      { cache: opts.cache, onToken: opts.onToken },
    );
    const out: GeneratedPrompt[] = [];
    for (let i = 0; i < prompts.length; i++) {
      const toks = drawn[i]!;
      const truncated = promptTruncated(this.runner.tokenizer, prompts[i]!.prompt);
      if (m === settings.samples) {
        const images = this.decode(toks);
        out.push({ ...prompts[i]!, truncated, images: toks.map((t, j) => ({ candidate: j, tokens: t, image: images[j]! })) });
        continue;
      }
      const decoded = new Map<number, Uint8Array>();
      const pixels = (j: number) => {
        if (!decoded.has(j)) decoded.set(j, this.decode([toks[j]!])[0]!);
        return decoded.get(j)!;
      };
      const cands: RerankCandidate[] = toks.map((t, j) => ({ tokens: t, pixels: () => pixels(j) }));
      const scorer = opts.scorer ?? new CaptionLikelihoodScorer(this.runner);
      const scores = await scorer.score(prompts[i]!.prompt, cands);
      if (scores.length !== m) throw new PartiError('internal', `scorer ${scorer.name} returned ${scores.length} scores for ${m} candidates`);
      const best = bestIndices(scores, settings.samples);
      const missing = best.filter((j) => !decoded.has(j));
      this.decode(missing.map((j) => toks[j]!)).forEach((img, k) => decoded.set(missing[k]!, img));
      out.push({
        ...prompts[i]!,
        truncated,
        images: best.map((j) => ({ candidate: j, tokens: toks[j]!, image: decoded.get(j)!, score: scores[j]! })),
      });
    }
    return out;
  }

  /** Cross-attention maps of generated images of one prompt (see crossAttentionMaps). */
  attentionMaps(prompt: string, tokens: readonly Int32Array[]): CrossAttentionMaps[] {
    return crossAttentionMaps(this.runner, prompt, tokens);
  }

  /** Enlarges images with the run's upsampler; a run without one is a checkpoint error. */
  upsample(images: readonly Uint8Array[]): { images: Uint8Array[]; size: number } {
    if (!this.upsampler || !this.checkpoint.upsampler) {
      throw new PartiError('checkpoint', `${this.checkpoint.source}: the run has no trained upsampler (train the upsampler stage first)`);
    }
    const S = this.imageSize;
    const C = this.channels;
    const all = new Uint8Array(images.length * S * S * C);
    images.forEach((im, i) => all.set(im, i * S * S * C));
    const out = this.upsampler.upsample(this.checkpoint.upsampler.params, all, images.length, S);
    const big = S * this.upsampler.config.scale;
    const n = big * big * C;
    return { images: images.map((_, i) => out.slice(i * n, (i + 1) * n)), size: big };
  }

  /** Frees the uploaded parameters. */
  dispose(): void {
    for (const t of this.runner.params.values()) t.dispose();
  }
}
