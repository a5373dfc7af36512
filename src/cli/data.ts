import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import { usageError } from '../errors.ts';
import { openStore } from '../storage/open-store.ts';
import { writeShapesSet } from '../data/shapes-shards.ts';
import { inspectShards } from '../data/shard-inspector.ts';
import { importImages, listImportItems } from '../data/image-import.ts';
import { openShardSet } from '../data/shard-index.ts';
import { parseShardSetUrl } from '../data/shard-url.ts';
import { tokenizeShards } from '../data/shard-tokenizer.ts';
import { loadConfig } from '../config/load.ts';

/**
 * `parti data synth|import|tokenize|inspect`: make, enrich and check WebDataset shard sets.
 * Results go to stdout (one line, or JSON with --json); progress bars and logs to stderr.
 */

function int(flag: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    if (!/^\d+$/.test(value.trim())) throw usageError(flag, `must be an integer >= ${min}, got ${JSON.stringify(value)}`);
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < min || n > max) throw usageError(flag, `must be an integer in [${min}, ${max}], got ${value}`);
    return n;
  };
}

function progressBar(label: string): cliProgress.SingleBar | null {
  if (!process.stderr.isTTY) return null;
  return new cliProgress.SingleBar(
    { format: `${label} [{bar}] {value}/{total} {eta_formatted}`, stream: process.stderr, hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
}

export function register(program: Command): void {
  const data = program.command('data').description('Make, tokenize and inspect WebDataset shard sets.');

  data
    .command('synth')
    .description('Write the generated shapes set (train split and held-out split) as shards, deterministic from the seed.')
    .requiredOption('--out <url>', 'folder to write to: file:///dir, a path, or s3://bucket/prefix')
    .requiredOption('--samples <n>', 'training samples', int('--samples', 1))
    .option('--image-size <px>', 'square image side', int('--image-size', 8, 4096), 32)
    .option('--seed <s>', 'seed of the set', int('--seed', 0), 0)
    .option('--shard-size <k>', 'samples per shard', int('--shard-size', 1), 1000)
    .option('--held-out <n>', 'held-out samples (default: a tenth of --samples, at least 64; 0 for none)', int('--held-out', 0))
    .option('--json', 'print one JSON object')
    .action(async (o: { out: string; samples: number; imageSize: number; seed: number; shardSize: number; heldOut?: number; json?: boolean }) => {
      const store = openStore(o.out);
      try {
        const heldOut = o.heldOut ?? Math.max(64, Math.ceil(o.samples / 10));
        const bar = progressBar('synth');
        bar?.start(o.samples + heldOut, 0);
        const train = await writeShapesSet(store, { samples: o.samples, seed: o.seed, imageSize: o.imageSize, shardSize: o.shardSize, split: 'train', onSample: (n) => bar?.update(n) });
        const held = heldOut > 0
          ? await writeShapesSet(store, { samples: heldOut, seed: o.seed, imageSize: o.imageSize, shardSize: o.shardSize, split: 'heldOut', onSample: (n) => bar?.update(o.samples + n) })
          : null;
        bar?.stop();
        const result = { train: train.url, trainSamples: o.samples, heldOut: held?.url ?? null, heldOutSamples: heldOut, shards: train.index.shards.length + (held?.index.shards.length ?? 0) };
        process.stdout.write(o.json ? `${JSON.stringify(result)}\n` : `train    ${train.url} (${o.samples} samples)\n${held ? `held-out ${held.url} (${heldOut} samples)\n` : ''}`);
      } finally {
        await store.close();
      }
    });

  data
    .command('import')
    .description('Import a folder of images with same-named .txt captions, or a .jsonl/.csv of {image, caption}, as shards (resized and center-cropped).')
    .requiredOption('--from <path>', 'a folder, a .jsonl file or a .csv file')
    .requiredOption('--out <url>', 'folder to write to: file:///dir, a path, or s3://bucket/prefix')
    .option('--image-size <px>', 'square image side', int('--image-size', 8, 4096), 256)
    .option('--shard-size <k>', 'samples per shard', int('--shard-size', 1), 1000)
    .option('--format <f>', 'png or jpg (default: png up to 64 px, jpg above)')
    .option('--prefix <name>', 'shard name prefix', 'train')
    .option('--json', 'print one JSON object')
    .action(async (o: { from: string; out: string; imageSize: number; shardSize: number; format?: string; prefix: string; json?: boolean }) => {
      if (o.format !== undefined && o.format !== 'png' && o.format !== 'jpg') throw usageError('--format', `png or jpg, got ${o.format}`);
      const items = await listImportItems(o.from);
      if (items.length === 0) throw usageError('--from', `${o.from}: no images found`);
      const store = openStore(o.out);
      try {
        const bar = progressBar('import');
        bar?.start(items.length, 0);
        const report = await importImages(items, store, {
          imageSize: o.imageSize,
          shardSize: o.shardSize,
          format: o.format as 'png' | 'jpg' | undefined,
          prefix: o.prefix,
          onItem: (n) => bar?.update(n),
        });
        bar?.stop();
        process.stdout.write(o.json ? `${JSON.stringify(report)}\n` : `${report.url}: ${report.written} samples; skipped ${JSON.stringify(report.skipped)}\n`);
      } finally {
        await store.close();
      }
    });

  data
    .command('tokenize')
    .description('Copy a shard set adding KEY.tokens (the frozen image tokenizer\'s tokens) to every sample.')
    .requiredOption('--tokenizer <dir>', 'tokenizer checkpoint folder (parti-local-v1: checkpoint.json + state.bin)')
    .requiredOption('--in <url>', 'input shard set URL')
    .requiredOption('--out <url>', 'output folder: file:///dir, a path, or s3://bucket/prefix')
    .option('--config <file>', 'config whose model.tokenizer the checkpoint was trained with', 'configs/tiny.yaml')
    .option('--batch <n>', 'images per encode call', int('--batch', 1), 32)
    .option('--json', 'print one JSON object')
    .action(async (o: { tokenizer: string; in: string; out: string; config: string; batch: number; json?: boolean }) => {
      const cfg = loadConfig(o.config);
      // The model code (tfjs) is loaded only by this command.
      const [{ initBackend }, { VitVqgan }, { loadTrainingState }] = await Promise.all([
        import('../model/backend.ts'),
        import('../model/vit-vqgan.ts'),
        import('../model/training-state.ts'),
      ]);
      await initBackend(cfg.runtime.backend);
      const vq = new VitVqgan(cfg.model.tokenizer);
      const state = await loadTrainingState(o.tokenizer, vq.layout);
      if (!state) throw usageError('--tokenizer', `${o.tokenizer}: no checkpoint.json there`);
      const input = await openShardSet(o.in);
      const out = openStore(o.out);
      try {
        const inIndex = parseShardSetUrl(o.in).indexName;
        const prefix = inIndex === 'index.json' ? 'tokens' : inIndex.replace(/\.index\.json$/, '');
        const bar = progressBar('tokenize');
        bar?.start(input.shards.length, 0);
        const report = await tokenizeShards(input, out, prefix, {
          imageSize: cfg.model.tokenizer.imageSize,
          tokensPerImage: vq.tokens,
          batchSize: o.batch,
          encode: (images, count) => vq.encode(state.params, images, count),
          onShard: (n) => bar?.update(n),
        });
        bar?.stop();
        process.stdout.write(o.json ? `${JSON.stringify(report)}\n` : `${report.url}: ${report.samples} samples with tokens; bad ${JSON.stringify(report.bad)}\n`);
      } finally {
        await input.store.close();
        await out.close();
      }
    });

  data
    .command('inspect')
    .description('Read every sample of a shard set like training does: shard, sample and byte counts, bad samples by reason.')
    .argument('<url>', 'shard set URL: file:///dir/train-{000000..000009}.tar, a path, s3://bucket/prefix/..., or a folder')
    .option('--image-size <px>', 'count images of another size as bad (default: any size)', int('--image-size', 1, 4096))
    .option('--max-caption-bytes <n>', 'longer captions are bad', int('--max-caption-bytes', 1), 4096)
    .option('--write-index', 'scan the shards and write the index beside them')
    .option('--json', 'print one JSON object {shards, samples, good, bytes, bad: {reason: count}}')
    .action(async (url: string, o: { imageSize?: number; maxCaptionBytes: number; writeIndex?: boolean; json?: boolean }) => {
      const bar = progressBar('inspect');
      let started = false;
      const report = await inspectShards(url, {
        imageSize: o.imageSize ?? 0,
        maxCaptionBytes: o.maxCaptionBytes,
        writeIndex: o.writeIndex,
        onShard: (n, total) => {
          if (!started) bar?.start(total, 0);
          started = true;
          bar?.update(n);
        },
      });
      bar?.stop();
      if (o.json) {
        process.stdout.write(`${JSON.stringify(report)}\n`);
        return;
      }
      const bad = Object.entries(report.bad);
      process.stdout.write(
        [
          `${report.url}${report.indexed ? '' : ' (no index: scanned)'}`,
          `shards   ${report.shards}`,
          `samples  ${report.samples} (${report.good} good)`,
          `bytes    ${report.bytes}`,
          `bad      ${bad.length ? bad.map(([r, n]) => `${r}=${n}`).join(' ') : 'none'}`,
          ...(report.indexWritten ? [`index    ${report.indexWritten}`] : []),
        ].join('\n') + '\n',
      );
    });
}
