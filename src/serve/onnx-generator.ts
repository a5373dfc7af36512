import * as ort from 'onnxruntime-node';
import { join } from 'node:path';
import { PartiError } from '../errors.ts';
import { readOnnxManifest, type OnnxManifest } from '../export/onnx-manifest.ts';
import { chooseToken, guidedLogits, samplerUniform, type TokenChoiceSettings } from '../generate/token-choice.ts';
import { TextTokenizer } from '../model/text-tokenizer.ts';
import { tracer } from '../observability/log.ts';

/**
 * Image generation on ONNX Runtime from an `parti export onnx` directory, with no tfjs: the text
 * encoder once per distinct caption, the decoder's prefill graph for BOS, then its one-step graph
 * per image token with the self-attention caches fed back, tokens chosen on the host by
 * src/generate/token-choice.ts exactly as `parti generate` chooses them, and the ViT-VQGAN decoder
 * to pixels. Rows are laid out as src/generate/sampler.ts lays them out (conditional rows, then
 * one unconditional row per sample under guidance) so that the same prompt, settings and seed draw
 * the same tokens.
 */

const trace = tracer('serve');

/** ONNX Runtime execution providers parti offers. */
export type ExecutionProvider = 'cpu' | 'cuda';

/** Options of `OnnxGenerator.load`. */
export interface OnnxGeneratorOptions {
  /** Execution provider (default cpu). cuda needs onnxruntime-node's CUDA binaries and a GPU. */
  provider?: ExecutionProvider;
  /** Threads per operator (ORT intra-op pool); default: ORT's choice. */
  intraOpThreads?: number;
  /**
   * Let ORT's pool threads spin while waiting for work (default false; ORT's own default is true).
   * Measured here on 2 shared, loaded cores with the tiny model: ~470-500 ms per image spinning,
   * ~75-145 ms not. Spinning may win on an idle dedicated machine.
   */
  spinning?: boolean;
}

/** Settings of one generation (parti generate's flags). */
export interface OnnxSamplerSettings extends TokenChoiceSettings {
  cfg: number;
  seed: number;
}

/** Images of one prompt. */
export interface OnnxGeneration {
  tokens: Int32Array[];
  /** RGB(A) bytes [imageSize * imageSize * channels] per image. */
  images: Uint8Array[];
  truncated: boolean;
}

/** Thrown (as PartiError 'deadline') when a generation's signal aborts between steps. */
function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new PartiError('deadline', 'generation aborted: the request timed out or was cancelled');
}

function int64(values: ArrayLike<number>, dims: number[]): ort.Tensor {
  const a = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) a[i] = BigInt(values[i]!);
  return new ort.Tensor('int64', a, dims);
}

async function createSession(path: string, opts: OnnxGeneratorOptions): Promise<ort.InferenceSession> {
  const provider = opts.provider ?? 'cpu';
  try {
    return await ort.InferenceSession.create(path, {
      executionProviders: [provider],
      graphOptimizationLevel: 'all',
      ...(opts.intraOpThreads ? { intraOpNumThreads: opts.intraOpThreads } : {}),
      extra: { session: { intra_op: { allow_spinning: opts.spinning ? '1' : '0' } } },
    });
  } catch (err) {
    const msg = (err as Error).message.split('\n')[0];
    if (provider !== 'cpu') {
      throw new PartiError('backend', `--provider ${provider}: onnxruntime-node cannot create a ${provider} session for ${path} (${msg}); install its ${provider} binaries or use --provider cpu`);
    }
    throw new PartiError('checkpoint', `${path}: ONNX Runtime cannot load it (${msg})`);
  }
}

/** An exported model loaded in ONNX Runtime. */
export class OnnxGenerator {
  readonly tokenizer: TextTokenizer;

  private constructor(
    readonly dir: string,
    readonly manifest: OnnxManifest,
    readonly provider: ExecutionProvider,
    private readonly encoder: ort.InferenceSession,
    private readonly prefill: ort.InferenceSession,
    private readonly step: ort.InferenceSession,
    private readonly vqgan: ort.InferenceSession,
  ) {
    this.tokenizer = new TextTokenizer(manifest.text.maxLength);
  }

  /** Loads parti-onnx.json and the four graphs of `dir`. */
  static async load(dir: string, opts: OnnxGeneratorOptions = {}): Promise<OnnxGenerator> {
    const manifest = await readOnnxManifest(dir);
    const g = manifest.graphs;
    const settled = await Promise.allSettled(
      [g.textEncoder, g.decoderPrefill, g.decoderStep, g.vqganDecoder].map((x) => createSession(join(dir, x.file), opts)),
    );
    const failed = settled.find((r) => r.status === 'rejected');
    if (failed) {
      // Release the sessions that did load before reporting the first failure.
      await Promise.all(settled.map((r) => (r.status === 'fulfilled' ? r.value.release() : undefined)));
      throw (failed as PromiseRejectedResult).reason;
    }
    const [enc, pre, step, vq] = settled.map((r) => (r as PromiseFulfilledResult<ort.InferenceSession>).value);
    return new OnnxGenerator(dir, manifest, opts.provider ?? 'cpu', enc!, pre!, step!, vq!);
  }

  /** Side of generated images in pixels and bytes per pixel. */
  get imageSize(): number {
    return this.manifest.image.imageSize;
  }
  get channels(): number {
    return this.manifest.image.channels;
  }
  /** Image tokens per image. */
  get imageTokens(): number {
    return this.manifest.image.tokens;
  }
  /** Sampling defaults of the export (those of `parti generate`). */
  get defaults(): OnnxManifest['sampling']['defaults'] {
    return this.manifest.sampling.defaults;
  }
  /** What /healthz reports about the model. */
  get info(): Record<string, unknown> {
    const m = this.manifest;
    return { dir: this.dir, source: m.source, configHash: m.configHash, partiStep: m.partiStep, provider: this.provider, imageSize: m.image.imageSize, imageTokens: m.image.tokens };
  }

  /**
   * Draws image tokens for samples `samples` of prompt `promptIndex` (as `parti generate` with the
   * prompt at that index). Checks `signal` between decoder steps.
   */
  async sampleTokens(
    prompt: string,
    settings: OnnxSamplerSettings,
    opts: { promptIndex?: number; samples?: readonly number[]; n?: number; signal?: AbortSignal; onToken?: (t: number, total: number) => void } = {},
  ): Promise<{ tokens: Int32Array[]; truncated: boolean }> {
    const { text, image } = this.manifest;
    const promptIndex = opts.promptIndex ?? 0;
    const samples = opts.samples ?? Array.from({ length: opts.n ?? 1 }, (_, i) => i);
    const n = samples.length;
    const out = samples.map(() => new Int32Array(image.tokens));
    const enc = this.tokenizer.encode(prompt);
    if (n === 0) return { tokens: out, truncated: enc.truncated };
    const guided = settings.cfg !== 1;
    const L = text.maxLength;
    const D = text.dModel;
    const V = image.codes;
    const T = image.tokens;
    const B = guided ? 2 * n : n;
    const texts = guided ? [enc, this.tokenizer.encode('')] : [enc];
    const started = performance.now();
    // Encoder: once per distinct caption.
    const ids = new Int32Array(texts.length * L);
    const mask = new Float32Array(texts.length * L);
    texts.forEach((e, i) => {
      ids.set(e.ids, i * L);
      for (let j = 0; j < L; j++) mask[i * L + j] = e.mask[j]!;
    });
    checkAborted(opts.signal);
    const encoded = await this.encoder.run({ text_ids: int64(ids, [texts.length, L]), text_mask: new ort.Tensor('float32', mask, [texts.length, L]) });
    const memory = encoded.memory!.data as Float32Array;
    // Row b reads caption rowText[b]: conditional rows first, then unconditional ones.
    const rowMemory = new Float32Array(B * L * D);
    const rowMask = new Float32Array(B * L);
    for (let b = 0; b < B; b++) {
      const tx = b < n ? 0 : 1;
      rowMemory.set(memory.subarray(tx * L * D, (tx + 1) * L * D), b * L * D);
      rowMask.set(mask.subarray(tx * L, (tx + 1) * L), b * L);
    }
    const maskTensor = new ort.Tensor('float32', rowMask, [B, L]);
    const tokens = new Int32Array(B * T);
    const z = new Float64Array(V);
    const layers = image.decoderLayers;
    let feeds: Record<string, ort.Tensor> = {};
    for (let t = 0; t < T; t++) {
      checkAborted(opts.signal);
      let r: ort.InferenceSession.OnnxValueMapType;
      if (t === 0) {
        r = await this.prefill.run({
          input_ids: int64(new Int32Array(B).fill(image.bosId), [B, 1]),
          memory: new ort.Tensor('float32', rowMemory, [B, L, D]),
          text_mask: maskTensor,
        });
        feeds = { text_mask: maskTensor };
        for (let i = 0; i < layers; i++) {
          feeds[`cross_key_${i}`] = r[`cross_key_${i}`] as ort.Tensor;
          feeds[`cross_value_${i}`] = r[`cross_value_${i}`] as ort.Tensor;
        }
      } else {
        const prev = new Int32Array(B);
        for (let b = 0; b < B; b++) prev[b] = tokens[b * T + t - 1]!;
        feeds.input_ids = int64(prev, [B, 1]);
        r = await this.step.run(feeds);
      }
      for (let i = 0; i < layers; i++) {
        feeds[`past_key_${i}`] = r[`present_key_${i}`] as ort.Tensor;
        feeds[`past_value_${i}`] = r[`present_value_${i}`] as ort.Tensor;
      }
      const logits = r.logits!.data as Float32Array;
      for (let i = 0; i < n; i++) {
        guidedLogits(logits.subarray(i * V, (i + 1) * V), guided ? logits.subarray((n + i) * V, (n + i + 1) * V) : null, settings.cfg, z);
        const tok = chooseToken(z, settings, samplerUniform(settings.seed, promptIndex, samples[i]!, t));
        tokens[i * T + t] = tok;
        if (guided) tokens[(n + i) * T + t] = tok;
        out[i]![t] = tok;
      }
      opts.onToken?.(t + 1, T);
    }
    trace('sampled', { rows: B, tokens: T, cfg: settings.cfg, ms: Math.round(performance.now() - started) });
    return { tokens: out, truncated: enc.truncated };
  }

  /** Image tokens -> image bytes (clamped to [0, 1], times 255, rounded: VitVqgan.unpatchify's rule). */
  async decode(tokens: readonly Int32Array[], signal?: AbortSignal): Promise<Uint8Array[]> {
    if (tokens.length === 0) return [];
    checkAborted(signal);
    const N = this.manifest.image.tokens;
    const all = new Int32Array(tokens.length * N);
    tokens.forEach((t, i) => all.set(t, i * N));
    const r = await this.vqgan.run({ codes: int64(all, [tokens.length, N]) });
    const px = r.pixels!.data as Float32Array;
    const per = this.imageSize * this.imageSize * this.channels;
    return tokens.map((_, i) => {
      const img = new Uint8Array(per);
      for (let j = 0; j < per; j++) img[j] = Math.round(Math.min(1, Math.max(0, px[i * per + j]!)) * 255);
      return img;
    });
  }

  /** Tokens and images of `n` samples of one prompt (prompt index 0, samples 0..n-1). */
  async generate(prompt: string, n: number, settings: OnnxSamplerSettings, opts: { signal?: AbortSignal } = {}): Promise<OnnxGeneration> {
    const { tokens, truncated } = await this.sampleTokens(prompt, settings, { n, signal: opts.signal });
    const images = await this.decode(tokens, opts.signal);
    return { tokens, images, truncated };
  }

  /** Releases the ONNX Runtime sessions. */
  async release(): Promise<void> {
    await Promise.all([this.encoder, this.prefill, this.step, this.vqgan].map((s) => s.release()));
  }
}
