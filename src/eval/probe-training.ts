import { PartiError } from '../errors.ts';
import { chooseLabelScheme, type LabelScheme } from './label-scheme.ts';
import { Probe, trainProbe, type ProbeTrainOptions } from './probe.ts';
import { agreement, type Agreement } from './prompt-agreement.ts';
import { readEvalSamples, type EvalDataUrls } from './eval-data.ts';
import { log } from '../observability/log.ts';

/** Options of trainProbeOnData. */
export interface ProbeDataOptions extends ProbeTrainOptions {
  /** Training images read (default 8000). */
  trainSamples?: number;
  /** Held-out images the probe is checked on (default 1000). */
  heldOutSamples?: number;
  imageSize: number;
}

/** Keeps the samples the scheme can label; returns them with their label rows. */
export function labelled(scheme: LabelScheme, captions: readonly string[], images: readonly Uint8Array[]) {
  const out = { captions: [] as string[], images: [] as Uint8Array[], labels: [] as number[][] };
  captions.forEach((c, i) => {
    const l = scheme.labelsOf(c);
    if (!l) return;
    out.captions.push(c);
    out.images.push(images[i]!);
    out.labels.push(l);
  });
  return out;
}

/**
 * `parti eval train-probe`: reads real training images, picks the label scheme from their
 * captions, trains the probe, and measures it on real held-out images (whose captions, for the
 * shapes set, it never saw). The accuracy goes in `probe.info.heldOutAccuracy`.
 */
export async function trainProbeOnData(urls: EvalDataUrls, opts: ProbeDataOptions): Promise<{ probe: Probe; heldOut: Agreement }> {
  const t0 = Date.now();
  const train = await readEvalSamples(urls.train, opts.imageSize, opts.trainSamples ?? 8000);
  const scheme = chooseLabelScheme(train.captions, urls.train);
  const data = labelled(scheme, train.captions, train.images);
  log.info({ samples: data.images.length, scheme: scheme.kind }, `probe: training on ${data.images.length} images of ${urls.train}`);
  const probe = trainProbe(scheme, data, opts.imageSize, {
    ...opts,
    onEpoch: (e, loss) => {
      log.info({ epoch: e, loss }, `probe epoch ${e + 1} loss ${loss.toFixed(4)}`);
      opts.onEpoch?.(e, loss);
    },
  });
  const held = await readEvalSamples(urls.heldOut, opts.imageSize, opts.heldOutSamples ?? 1000);
  const heldData = labelled(scheme, held.captions, held.images);
  if (heldData.images.length === 0) throw new PartiError('data', `${urls.heldOut}: no held-out sample has a caption the probe can label`);
  const acc = agreement(scheme, probe.predict(heldData.images).classes, heldData.labels);
  const withInfo = new Probe(probe.shape, scheme, probe.params, [...new Set(data.captions)].sort(), {
    data: urls,
    trainSamples: data.images.length,
    heldOutSamples: heldData.images.length,
    heldOutAccuracy: acc,
    trainSeconds: (Date.now() - t0) / 1000,
  });
  return { probe: withInfo, heldOut: acc };
}
