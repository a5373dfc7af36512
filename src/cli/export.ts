import type { Command } from 'commander';
import { PartiError, usageError } from '../errors.ts';

/** Raw flags of `parti export onnx`. */
interface ExportFlags {
  checkpoint: string;
  out: string;
  verify?: boolean;
  externalThreshold?: string;
}

/**
 * `parti export onnx --checkpoint RUN --out DIR [--verify]`: the run's text encoder, image decoder
 * (prefill + one-step with key/value caches) and ViT-VQGAN decoder as ONNX graphs, plus
 * parti-onnx.json. `--verify` runs each graph in onnxruntime-node against tfjs on random inputs and
 * fails (exit 1) when any output differs by more than 1e-4.
 */
export function register(program: Command): void {
  const exp = program.command('export').description('Export a trained run to other runtimes.');
  exp
    .command('onnx')
    .description('Write the ONNX graphs of a trained run (text encoder, image decoder prefill/step, ViT-VQGAN decoder) and parti-onnx.json.')
    .requiredOption('--checkpoint <run>', 'run directory written by parti train, or the checkpoint store of a cluster job (a path, file:// or s3:// URL; RUN@STEP for a committed step)')
    .requiredOption('--out <dir>', 'directory to write the graphs into')
    .option('--verify', 'run every graph in onnxruntime-node and compare with tfjs on random inputs (max abs diff <= 1e-4)')
    .option('--external-threshold <bytes>', 'weights of at least this many bytes go to external data files', String(1 << 20))
    .action(async (f: ExportFlags) => {
      const raw = f.externalThreshold ?? String(1 << 20);
      if (!/^\d+$/.test(raw.trim())) throw usageError('--external-threshold', `must be an integer >= 0 (bytes), got ${JSON.stringify(raw)}`);
      const threshold = Number(raw);
      // Loaded here, not at the top: `parti serve` and other commands need none of tfjs's export path.
      const { loadGenerationCheckpoint } = await import('../generate/generation-checkpoint.ts');
      const { exportOnnx } = await import('../export/onnx-export.ts');
      const ckpt = await loadGenerationCheckpoint(f.checkpoint);
      const result = await exportOnnx(ckpt, f.out, { externalThreshold: threshold });
      for (const m of result.models) process.stdout.write(`${m.path}\t${m.bytes} bytes\t${m.inlineTensors} inline, ${m.externalTensors} external tensors\n`);
      for (const x of result.externalData) process.stdout.write(`${f.out}/${x.file}\t${x.bytes} bytes (external data)\n`);
      if (!f.verify) return;
      const { initBackend } = await import('../model/backend.ts');
      const { verifyOnnxExport, VERIFY_TOLERANCE } = await import('../export/onnx-verify.ts');
      await initBackend(ckpt.config.runtime.backend);
      const diffs = await verifyOnnxExport(ckpt, f.out, result.manifest);
      let worst = 0;
      for (const d of diffs) {
        worst = Math.max(worst, d.maxAbsDiff);
        process.stdout.write(`verify ${d.graph}.${d.output}: max abs diff ${d.maxAbsDiff.toExponential(2)} over ${d.size} values\n`);
      }
      if (!(worst <= VERIFY_TOLERANCE)) {
        throw new PartiError('internal', `--verify: ONNX Runtime and tfjs differ by ${worst} (> ${VERIFY_TOLERANCE})`);
      }
      process.stdout.write(`verify: all ${diffs.length} outputs within ${VERIFY_TOLERANCE} (max ${worst.toExponential(2)})\n`);
    });
}
