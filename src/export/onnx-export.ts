import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Config } from '../config/schema.ts';
import { SAMPLER_DEFAULTS } from '../generate/sampler.ts';
import { BOS_ID, EOS_ID, PAD_ID } from '../model/text-tokenizer.ts';
import { log } from '../observability/log.ts';
import { ExternalDataFile, IR_VERSION, OPSET, writeOnnxModel, type WrittenModel } from './onnx-file.ts';
import type { OnnxGraph, ValueSpec } from './onnx-graph.ts';
import { decoderPrefillGraph, decoderStepGraph, textEncoderGraph, vqganDecoderGraph } from './parti-graphs.ts';
import { MANIFEST_FILE, type OnnxManifest } from './onnx-manifest.ts';

/** What an export reads: a trained run's config and parameters (a GenerationCheckpoint fits). */
export interface ExportSource {
  /** Where it came from (a path or URL), recorded in the manifest. */
  source: string;
  config: Config;
  configHash: string;
  parti: Float32Array;
  partiStep: number;
  tokenizer: Float32Array;
}

/** Options of `exportOnnx`. */
export interface ExportOptions {
  /** Weights of at least this many bytes go to external data files (default 1 MiB). */
  externalThreshold?: number;
}

/** What `exportOnnx` wrote. */
export interface ExportResult {
  dir: string;
  manifest: OnnxManifest;
  models: WrittenModel[];
  /** External data files and their sizes in bytes. */
  externalData: { file: string; bytes: number }[];
}

function spec(g: OnnxGraph): { inputs: ValueSpec[]; outputs: ValueSpec[] } {
  return { inputs: g.inputs, outputs: g.outputs };
}

/**
 * Writes the ONNX graphs of a trained run to `dir`: text-encoder.onnx, decoder-prefill.onnx and
 * decoder-step.onnx (sharing decoder.onnx.data), vqgan-decoder.onnx, their external data files
 * (weights at or above the threshold) and parti-onnx.json, which describes shapes, names,
 * vocabularies and sampling defaults for a server.
 */
export async function exportOnnx(src: ExportSource, dir: string, opts: ExportOptions = {}): Promise<ExportResult> {
  await mkdir(dir, { recursive: true });
  const m = src.config.model;
  const started = performance.now();
  const models: WrittenModel[] = [];
  const externals: ExternalDataFile[] = [];
  const meta = { source: src.source, configHash: src.configHash, partiStep: String(src.partiStep) };
  const write = async (g: OnnxGraph, file: string, external: ExternalDataFile) => {
    const w = await writeOnnxModel(g, join(dir, file), { externalThreshold: opts.externalThreshold, external, metadata: meta, docString: `parti ${g.name}` });
    models.push(w);
  };
  const textData = new ExternalDataFile(join(dir, 'text-encoder.onnx.data'));
  const decData = new ExternalDataFile(join(dir, 'decoder.onnx.data'));
  const vqData = new ExternalDataFile(join(dir, 'vqgan-decoder.onnx.data'));
  externals.push(textData, decData, vqData);
  // One graph at a time: the graphs hold views of the parameters, not copies.
  const text = textEncoderGraph(m, src.parti);
  await write(text, 'text-encoder.onnx', textData);
  const prefill = decoderPrefillGraph(m, src.parti);
  await write(prefill, 'decoder-prefill.onnx', decData);
  const step = decoderStepGraph(m, src.parti);
  await write(step, 'decoder-step.onnx', decData);
  const vq = vqganDecoderGraph(m.tokenizer, src.tokenizer);
  await write(vq, 'vqgan-decoder.onnx', vqData);
  const externalData: { file: string; bytes: number }[] = [];
  for (const x of externals) {
    await x.close();
    if (x.bytes > 0) externalData.push({ file: x.location, bytes: x.bytes });
    else await rm(x.path, { force: true });
  }
  const grid = m.tokenizer.imageSize / m.tokenizer.patchSize;
  const manifest: OnnxManifest = {
    format: 'parti-onnx-v1',
    source: src.source,
    configHash: src.configHash,
    partiStep: src.partiStep,
    irVersion: IR_VERSION,
    opset: OPSET,
    graphs: {
      textEncoder: { file: 'text-encoder.onnx', ...spec(text) },
      decoderPrefill: { file: 'decoder-prefill.onnx', ...spec(prefill) },
      decoderStep: { file: 'decoder-step.onnx', ...spec(step) },
      vqganDecoder: { file: 'vqgan-decoder.onnx', ...spec(vq) },
    },
    externalData,
    text: {
      tokenizer: 'utf8-bytes',
      vocabSize: m.text.vocabSize,
      maxLength: m.text.maxLength,
      padId: PAD_ID,
      bosId: BOS_ID,
      eosId: EOS_ID,
      dModel: m.text.dModel,
    },
    image: {
      codes: m.tokenizer.codebookSize,
      bosId: m.tokenizer.codebookSize,
      tokens: grid * grid,
      grid,
      imageSize: m.tokenizer.imageSize,
      patchSize: m.tokenizer.patchSize,
      channels: m.tokenizer.channels,
      decoderLayers: m.image.layers,
      heads: m.image.heads,
      headDim: m.image.dModel / m.image.heads,
      dModel: m.image.dModel,
    },
    sampling: {
      defaults: { ...SAMPLER_DEFAULTS },
      tokenChoice: 'src/generate/token-choice.ts (chooseToken with samplerUniform(seed, promptIndex, sample, t); guidance uncond + cfg * (cond - uncond) in float64)',
    },
  };
  await writeFile(join(dir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
  log.info({ dir, models: models.length, externalData, ms: Math.round(performance.now() - started) }, `ONNX export written to ${dir}`);
  return { dir, manifest, models, externalData };
}
