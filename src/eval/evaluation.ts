import { PartiError } from '../errors.ts';
import { shapesSplitOfCaption } from '../data/shapes.ts';
import { log } from '../observability/log.ts';
import { Generator } from '../generate/generator.ts';
import { SAMPLER_DEFAULTS } from '../generate/sampler.ts';
import { tokenLogLikelihoods, type RerankCandidate, type Scorer } from '../generate/reranking.ts';
import { readEvalSamples, type EvalDataUrls } from './eval-data.ts';
import { fid } from './frechet-distance.ts';
import type { LabelScheme } from './label-scheme.ts';
import { trainProbe, type Probe } from './probe.ts';
import { labelled } from './probe-training.ts';
import { agreement, describeLabels, type Agreement } from './prompt-agreement.ts';
import { measureTokenizer, type TokenizerMetrics } from './tokenizer-metrics.ts';

/** Options of runEvaluation; all but checkpoint, data and probe have defaults. */
/** What ranks an eval's candidates when it reranks (EvaluationOptions.rerankBy). */
export type RerankBy = 'caption' | 'probe';
export const RERANK_BY: readonly RerankBy[] = ['caption', 'probe'];

export interface EvaluationOptions {
  /** Run directory or URL (as `parti generate --checkpoint`). */
  checkpoint: string;
  data: EvalDataUrls;
  /** The probe (trained on the data set's real training images). */
  probe: Probe;
  /** Held-out samples for token loss, tokenizer metrics and FID (default 1000). */
  heldOutSamples?: number;
  /** Distinct held-out captions to generate for (default 48). */
  prompts?: number;
  /** Images per prompt (default 4). */
  samplesPerPrompt?: number;
  /** Guidance scale (default the sampler's, 3). */
  cfg?: number;
  topK?: number;
  topP?: number;
  temperature?: number;
  seed?: number;
  /** Candidates drawn per prompt, of which the best `samplesPerPrompt` are kept (0: none, the default). */
  rerank?: number;
  /**
   * What ranks the candidates: 'caption' (default) is the model's own caption likelihood, what
   * `parti generate --rerank` uses, so the agreement measured is what a user of the model gets;
   * 'probe' ranks by the probe's own reading of the prompt: an oracle upper bound of best-of-m,
   * not a measure of the model (the judge picks the images it then judges).
   */
  rerankBy?: RerankBy;
  /** Epochs of the CAS probe trained on generated images (default 30). */
  casEpochs?: number;
  /** Progress messages. */
  onProgress?: (message: string) => void;
}

/** One generated image in the report. */
export interface GeneratedRecord {
  prompt: string;
  /** RGB bytes. */
  image: Uint8Array;
  /** What the probe read in it (head -> class). */
  predicted: Record<string, string>;
  /** Per attribute: whether it matched the prompt. */
  agrees: Record<string, boolean>;
}

/** What `parti eval` reports (report.json is this without the image bytes). */
export interface EvalReport {
  checkpoint: string;
  configName: string;
  partiStep: number;
  data: EvalDataUrls;
  heldOut: {
    samples: number;
    /** Mean negative log-likelihood of a held-out image token given its caption (nats). */
    tokenLoss: number;
    perplexity: number;
  };
  tokenizer: TokenizerMetrics;
  probe: {
    kind: LabelScheme['kind'];
    heads: { name: string; classes: string[] }[];
    trainSamples: unknown;
    /** The probe on real held-out images: the ceiling of prompt agreement. */
    realHeldOutAccuracy: Agreement;
    /**
     * The probe on the tokenizer's reconstructions of those images: the ceiling for any Parti
     * on this tokenizer (an image Parti writes perfectly still passes through the decoder).
     */
    reconstructedHeldOutAccuracy: Agreement;
  };
  /** The guarantee that evaluation never used a training caption. */
  heldOutCaptions: { prompts: number; inProbeTrainingCaptions: number; rule: string };
  generation: {
    prompts: number;
    samplesPerPrompt: number;
    cfg: number;
    topK: number;
    topP: number;
    temperature: number;
    seed: number;
    rerank: number;
    /** The reranker when rerank > 0 ('probe' numbers are an oracle bound, see EvalOptions). */
    rerankBy: RerankBy;
    seconds: number;
  };
  /** Generated images whose probe-read attributes match their prompt. */
  promptAgreement: Agreement;
  fid: {
    /** Generated vs real held-out images, on the probe's feature layer. */
    generatedVsReal: number;
    /** Two disjoint halves of the real held-out images: the value of a perfect model at this sample size. */
    realVsReal: number;
    generated: number;
    real: number;
    features: number;
  };
  /** Classification Accuracy Score: a probe trained on the generated images, tested on real held-out ones. */
  cas: Agreement;
  seconds: number;
}

/**
 * Checks that no evaluation prompt is a training caption: none may be among the captions the
 * probe was trained on, and for the shapes set each must be held out by the set's split rule
 * (which covers every training caption of every seed). Throws PartiError('data') otherwise.
 */
export function assertHeldOutPrompts(prompts: readonly string[], probe: Probe): { inProbeTrainingCaptions: number; rule: string } {
  const seen = new Set(probe.trainCaptions);
  const leaked = prompts.filter((p) => seen.has(p));
  if (leaked.length > 0) {
    throw new PartiError('data', `held-out evaluation: ${leaked.length} prompt(s) are training captions, e.g. "${leaked[0]}"`);
  }
  if (probe.scheme.kind === 'shapes') {
    const notHeld = prompts.filter((p) => shapesSplitOfCaption(p) !== 'heldOut');
    if (notHeld.length > 0) {
      throw new PartiError('data', `held-out evaluation: ${notHeld.length} prompt(s) belong to the shapes training split, e.g. "${notHeld[0]}"`);
    }
    return { inProbeTrainingCaptions: 0, rule: 'not among the probe training captions; shapes split rule: every prompt is heldOut' };
  }
  return { inProbeTrainingCaptions: 0, rule: 'not among the probe training captions' };
}

/**
 * `parti eval`: measures a trained run on the held-out split of a data set. Returns the report and
 * the generated images (for the HTML page).
 */
export async function runEvaluation(o: EvaluationOptions): Promise<{ report: EvalReport; generated: GeneratedRecord[]; realSamples: { caption: string; image: Uint8Array }[] }> {
  const t0 = Date.now();
  const say = (m: string) => {
    log.info(m);
    o.onProgress?.(m);
  };
  const gen = await Generator.load(o.checkpoint);
  try {
    const probe = o.probe;
    const scheme = probe.scheme;
    if (probe.shape.imageSize !== gen.imageSize) {
      throw new PartiError('usage', `--probe: trained on ${probe.shape.imageSize}px images, the checkpoint makes ${gen.imageSize}px`);
    }
    if (gen.channels !== 3) throw new PartiError('usage', `--checkpoint: eval needs RGB images, the run makes ${gen.channels} channels`);
    const held = await readEvalSamples(o.data.heldOut, gen.imageSize, o.heldOutSamples ?? 1000);
    // Only labelled samples take part; with the shapes set that is all of them.
    const real = labelled(scheme, held.captions, held.images);
    if (real.images.length < 4) throw new PartiError('data', `${o.data.heldOut}: ${real.images.length} held-out samples the probe can label; need at least 4`);
    const check = assertHeldOutPrompts(real.captions, probe);
    say(`held-out: ${real.images.length} samples; tokenizer round trip and token loss`);

    const { metrics: tokenizer, tokens, reconstructions } = measureTokenizer(gen.vq, gen.checkpoint.tokenizer, real.images);
    const ll = tokenLogLikelihoods(gen.runner, real.captions, tokens);
    const T = gen.runner.model.imageTokens;
    let nll = 0;
    for (const v of ll) nll -= v;
    const tokenLoss = nll / (ll.length * T);

    const realPred = probe.predict(real.images);
    const realHeldOutAccuracy = agreement(scheme, realPred.classes, real.labels);
    const reconstructedHeldOutAccuracy = agreement(scheme, probe.predict(reconstructions).classes, real.labels);

    // Distinct prompts in file order (deterministic).
    const promptList = [...new Set(real.captions)].slice(0, o.prompts ?? 48);
    const settings = {
      samples: o.samplesPerPrompt ?? 4,
      cfg: o.cfg ?? SAMPLER_DEFAULTS.cfg,
      topK: o.topK ?? SAMPLER_DEFAULTS.topK,
      topP: o.topP ?? SAMPLER_DEFAULTS.topP,
      temperature: o.temperature ?? SAMPLER_DEFAULTS.temperature,
      seed: o.seed ?? SAMPLER_DEFAULTS.seed,
      rerank: o.rerank ?? 0,
      rerankBy: o.rerankBy ?? 'caption',
    };
    const reranked = settings.rerank > 0 ? `, the best of ${settings.rerank} by ${settings.rerankBy === 'probe' ? "the probe's reading (an oracle bound)" : 'caption likelihood'}` : '';
    say(`generating ${settings.samples} image(s) for each of ${promptList.length} held-out prompts (cfg ${settings.cfg}${reranked})`);
    const tg = Date.now();
    // undefined: the generator's default, the model's caption likelihood
    const scorer = settings.rerank > 0 && settings.rerankBy === 'probe' ? probeScorer(probe) : undefined;
    const generated: GeneratedRecord[] = [];
    const genLabels: number[][] = [];
    const genImages: Uint8Array[] = [];
    const chunk = 8;
    for (let s = 0; s < promptList.length; s += chunk) {
      const batch = promptList.slice(s, s + chunk).map((prompt, i) => ({ prompt, promptIndex: s + i }));
      const out = await gen.generate(batch, settings, { scorer });
      for (const p of out)
        for (const im of p.images) {
          genImages.push(im.image);
          genLabels.push(scheme.labelsOf(p.prompt)!);
        }
      say(`generated ${Math.min(promptList.length, s + chunk)}/${promptList.length} prompts`);
    }
    const genSeconds = (Date.now() - tg) / 1000;
    const genPred = probe.predict(genImages);
    const promptAgreement = agreement(scheme, genPred.classes, genLabels);
    const headIndex = new Map(scheme.heads.map((h, i) => [h.name, i]));
    genImages.forEach((image, i) => {
      const agrees: Record<string, boolean> = {};
      for (const [attr, names] of Object.entries(scheme.attributes)) {
        agrees[attr] = names.every((n) => genPred.classes[i]![headIndex.get(n)!] === genLabels[i]![headIndex.get(n)!]);
      }
      generated.push({ prompt: promptList[Math.floor(i / settings.samples)]!, image, predicted: describeLabels(scheme, genPred.classes[i]!), agrees });
    });

    const F = probe.shape.features;
    const half = Math.floor(real.images.length / 2);
    const fidReport = {
      generatedVsReal: fid(genPred.features, realPred.features, F),
      realVsReal: fid(realPred.features.subarray(0, half * F), realPred.features.subarray(half * F, 2 * half * F), F),
      generated: genImages.length,
      real: real.images.length,
      features: F,
    };

    say(`CAS: training a probe on the ${genImages.length} generated images`);
    const casProbe = trainProbe(scheme, { images: genImages, labels: genLabels }, gen.imageSize, {
      epochs: o.casEpochs ?? 30,
      batchSize: Math.min(32, genImages.length),
      seed: 1,
    });
    const cas = agreement(scheme, casProbe.predict(real.images).classes, real.labels);
    casProbe.dispose();

    const report: EvalReport = {
      checkpoint: o.checkpoint,
      configName: gen.config.name,
      partiStep: gen.checkpoint.partiStep,
      data: o.data,
      heldOut: { samples: real.images.length, tokenLoss, perplexity: Math.exp(tokenLoss) },
      tokenizer,
      probe: {
        kind: scheme.kind,
        heads: scheme.heads.map((h) => ({ name: h.name, classes: [...h.classes] })),
        trainSamples: probe.info.trainSamples ?? null,
        realHeldOutAccuracy,
        reconstructedHeldOutAccuracy,
      },
      heldOutCaptions: { prompts: promptList.length, ...check },
      generation: { prompts: promptList.length, samplesPerPrompt: settings.samples, cfg: settings.cfg, topK: settings.topK, topP: settings.topP, temperature: settings.temperature, seed: settings.seed, rerank: settings.rerank, rerankBy: settings.rerankBy, seconds: genSeconds },
      promptAgreement,
      fid: fidReport,
      cas,
      seconds: (Date.now() - t0) / 1000,
    };
    const realSamples = real.captions.slice(0, 16).map((caption, i) => ({ caption, image: real.images[i]! }));
    return { report, generated, realSamples };
  } finally {
    gen.dispose();
  }
}

/**
 * A reranking scorer for `parti generate --rerank` built on the probe: the number of heads of the
 * prompt the probe reads in the candidate (plus its share of whole-prompt agreement). Prompts the
 * probe cannot label score 0 for every candidate, keeping the sampler's order.
 */
export function probeScorer(probe: Probe): Scorer {
  return {
    name: 'probe-agreement',
    async score(prompt: string, candidates: readonly RerankCandidate[]): Promise<number[]> {
      const target = probe.scheme.labelsOf(prompt);
      if (!target) return candidates.map(() => 0);
      const { classes } = probe.predict(candidates.map((c) => c.pixels()));
      return classes.map((row) => {
        const right = row.filter((c, k) => c === target[k]).length;
        return right + (right === target.length ? 1 : 0);
      });
    },
  };
}
