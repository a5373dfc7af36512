import type { Command } from 'commander';
import { join, resolve } from 'node:path';
import { stat } from 'node:fs/promises';
import { usageError } from '../errors.ts';
import { initBackend } from '../model/backend.ts';
import { resolveEvalData } from '../eval/eval-data.ts';
import { RERANK_BY, runEvaluation, type RerankBy } from '../eval/evaluation.ts';
import { Probe } from '../eval/probe.ts';
import { trainProbeOnData } from '../eval/probe-training.ts';
import { writeReport } from '../eval/report-page.ts';
import { loadGenerationCheckpoint } from '../generate/generation-checkpoint.ts';

function parseNumber(flag: string, raw: string | undefined, integer: boolean, min: number): number | undefined {
  if (raw === undefined) return undefined;
  const s = raw.trim();
  const ok = integer ? /^[+-]?\d+$/.test(s) : /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(s);
  const v = Number(s);
  if (!ok || !Number.isFinite(v) || (integer && !Number.isSafeInteger(v))) throw usageError(flag, `must be ${integer ? 'an integer' : 'a number'}, got ${JSON.stringify(raw)}`);
  if (v < min) throw usageError(flag, `must be >= ${min}, got ${v}`);
  return v;
}

function parseRerankBy(raw: string | undefined): RerankBy | undefined {
  if (raw === undefined) return undefined;
  if (!(RERANK_BY as readonly string[]).includes(raw)) throw usageError('--rerank-by', `must be one of ${RERANK_BY.join(', ')}, got ${JSON.stringify(raw)}`);
  return raw as RerankBy;
}

const exists = (p: string) => stat(p).then(
  () => true,
  () => false,
);

interface EvalFlags {
  checkpoint: string;
  data: string;
  heldOut?: string;
  probe?: string;
  out?: string;
  json?: boolean;
  prompts?: string;
  samples?: string;
  cfg?: string;
  topK?: string;
  topP?: string;
  temperature?: string;
  seed?: string;
  rerank?: string;
  rerankBy?: string;
  heldOutSamples?: string;
  probeSamples?: string;
  probeEpochs?: string;
}

interface TrainProbeFlags {
  data?: string;
  heldOut?: string;
  out?: string;
  imageSize: string;
  samples?: string;
  epochs?: string;
  seed?: string;
  json?: boolean;
}

/**
 * `parti eval --checkpoint RUN --data URL [--json] [--out DIR]` and
 * `parti eval train-probe --data URL --out DIR`.
 */
export function register(program: Command): void {
  const evalCmd = program
    .command('eval')
    .description('Measure a trained run on held-out data: token loss, tokenizer PSNR and codebook use, and with the probe prompt agreement, FID and CAS. Writes report.json and index.html.')
    .option('--checkpoint <run>', 'run directory written by parti train, or the checkpoint store of a cluster job (a path, file:// or s3:// URL; RUN@STEP for a committed step)')
    .option('--data <url>', 'folder with train and heldout shard sets (parti data synth), or training shards with --held-out')
    .option('--held-out <url>', 'held-out shard set (default: the heldout set beside --data)')
    .option('--probe <dir>', 'probe made by parti eval train-probe (default: <out>/probe, trained now when missing)')
    .option('--out <dir>', 'where report.json, index.html and a trained probe go (default ./eval-report)')
    .option('--json', 'print the report as one JSON object on stdout')
    .option('--prompts <n>', 'distinct held-out captions to generate for (default 48)')
    .option('--samples <n>', 'images per prompt (default 4)')
    .option('--cfg <scale>', 'classifier-free guidance scale (default 3)')
    .option('--top-k <k>', 'top-k (default 0: all codes)')
    .option('--top-p <p>', 'top-p (default 1)')
    .option('--temperature <t>', 'sampling temperature (default 1)')
    .option('--seed <s>', 'sampling seed (default 0)')
    .option('--rerank <m>', 'draw m candidates per prompt and keep the best --samples (default 0: off)')
    .option('--rerank-by <scorer>', "with --rerank: 'caption' (default), the model's caption likelihood as parti generate --rerank uses; 'probe', the probe's own reading: an oracle bound, not a measure of the model")
    .option('--held-out-samples <n>', 'held-out images for token loss, PSNR and FID (default 1000)')
    .option('--probe-samples <n>', 'training images when the probe is trained now (default 8000)')
    .option('--probe-epochs <n>', 'epochs when the probe is trained now (default 12)')
    .action(async (f: EvalFlags) => {
      if (!f.checkpoint) throw usageError('--checkpoint', 'required (a run directory or URL)');
      if (!f.data) throw usageError('--data', 'required (a shard folder or URL)');
      const opts = {
        prompts: parseNumber('--prompts', f.prompts, true, 1),
        samplesPerPrompt: parseNumber('--samples', f.samples, true, 1),
        cfg: parseNumber('--cfg', f.cfg, false, -1e9),
        topK: parseNumber('--top-k', f.topK, true, 0),
        topP: parseNumber('--top-p', f.topP, false, 0),
        temperature: parseNumber('--temperature', f.temperature, false, 0),
        seed: parseNumber('--seed', f.seed, true, 0),
        rerank: parseNumber('--rerank', f.rerank, true, 0),
        rerankBy: parseRerankBy(f.rerankBy),
        heldOutSamples: parseNumber('--held-out-samples', f.heldOutSamples, true, 4),
      };
      if (opts.rerankBy !== undefined && !opts.rerank) throw usageError('--rerank-by', 'needs --rerank M with M > 0');
      const probeSamples = parseNumber('--probe-samples', f.probeSamples, true, 1);
      const probeEpochs = parseNumber('--probe-epochs', f.probeEpochs, true, 1);
      const out = resolve(f.out ?? 'eval-report');
      const say = (m: string) => {
        if (!f.json) process.stderr.write(`${m}\n`);
      };
      // Check the checkpoint before spending minutes on a probe.
      const ckpt = await loadGenerationCheckpoint(f.checkpoint);
      await initBackend(ckpt.config.runtime.backend);
      const urls = await resolveEvalData(f.data, f.heldOut);
      const probeDir = f.probe ?? join(out, 'probe');
      let probe: Probe;
      if (f.probe || (await exists(join(probeDir, 'probe.json')))) {
        probe = await Probe.load(probeDir);
      } else {
        say(`no probe at ${probeDir}: training one on ${urls.train}`);
        probe = (await trainProbeOnData(urls, { imageSize: ckpt.config.model.tokenizer.imageSize, trainSamples: probeSamples, epochs: probeEpochs })).probe;
        await probe.save(probeDir);
      }
      const { report, generated, realSamples } = await runEvaluation({ checkpoint: f.checkpoint, data: urls, probe, ...opts, onProgress: say });
      const paths = await writeReport(out, report, generated, realSamples, ckpt.config.model.tokenizer.imageSize);
      probe.dispose();
      if (f.json) {
        process.stdout.write(`${JSON.stringify(report)}\n`);
        return;
      }
      const a = report.promptAgreement;
      const attrs = Object.entries(a.attributes)
        .map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`)
        .join(', ');
      process.stdout.write(
        [
          `held-out token loss ${report.heldOut.tokenLoss.toFixed(4)} (perplexity ${report.heldOut.perplexity.toFixed(2)})`,
          `tokenizer PSNR ${report.tokenizer.psnr.toFixed(2)} dB, codebook usage ${(100 * report.tokenizer.codebookUsage).toFixed(1)}%, perplexity ${report.tokenizer.codebookPerplexity.toFixed(1)}`,
          `prompt agreement: ${attrs}, whole prompt ${(100 * a.whole).toFixed(1)}% (${a.images} images, ${report.generation.prompts} held-out prompts)`,
          `FID ${report.fid.generatedVsReal.toFixed(3)} (real vs real ${report.fid.realVsReal.toFixed(3)})`,
          `CAS: ${Object.entries(report.cas.attributes).map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`).join(', ')}, whole ${(100 * report.cas.whole).toFixed(1)}%`,
          `report ${paths.json}`,
          `page   ${paths.html}`,
        ].join('\n') + '\n',
      );
    });

  // commander parses options of `parti eval train-probe` that `parti eval` also has (--data,
  // --held-out, --out, --samples, --seed, --json) as the parent's, so the action merges both.
  evalCmd
    .command('train-probe')
    .description('Train the evaluation probe on the real training images of a data set and measure it on its held-out images.')
    .option('--data <url>', 'folder with train and heldout shard sets, or training shards with --held-out (required)')
    .option('--held-out <url>', 'held-out shard set (default: the heldout set beside --data)')
    .option('--out <dir>', 'where probe.json and probe.bin go (default ./probe)')
    .option('--image-size <px>', 'image side the probe reads (the tokenizer image size)', '32')
    .option('--samples <n>', 'training images (default 8000)')
    .option('--epochs <n>', 'passes over them (default 12)')
    .option('--seed <s>', 'initialization and shuffle seed (default 0)')
    .option('--json', 'print one JSON object')
    .action(async (own: TrainProbeFlags, cmd: Command) => {
      const parent = cmd.parent!.opts() as Partial<TrainProbeFlags>;
      const f: TrainProbeFlags = { ...parent, ...Object.fromEntries(Object.entries(own).filter(([, v]) => v !== undefined)) } as TrainProbeFlags;
      if (!f.data) throw usageError('--data', 'required (a shard folder or URL)');
      const imageSize = parseNumber('--image-size', f.imageSize, true, 4)!;
      const trainSamples = parseNumber('--samples', f.samples, true, 1);
      const epochs = parseNumber('--epochs', f.epochs, true, 1);
      const seed = parseNumber('--seed', f.seed, true, 0);
      await initBackend('auto');
      const urls = await resolveEvalData(f.data!, f.heldOut);
      const { probe, heldOut } = await trainProbeOnData(urls, { imageSize, trainSamples, epochs, seed });
      const outDir = resolve(f.out ?? 'probe');
      await probe.save(outDir);
      const result = { out: outDir, kind: probe.scheme.kind, trainSamples: probe.info.trainSamples, heldOutAccuracy: heldOut };
      if (f.json) {
        process.stdout.write(`${JSON.stringify(result)}\n`);
        return;
      }
      const attrs = Object.entries(heldOut.attributes)
        .map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`)
        .join(', ');
      process.stdout.write(`probe ${result.out} (${probe.scheme.kind}, ${result.trainSamples} training images)\nreal held-out accuracy: ${attrs}, whole ${(100 * heldOut.whole).toFixed(1)}% (${heldOut.images} images)\n`);
    });
}
