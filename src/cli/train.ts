import type { Command } from 'commander';
import { loadConfig } from '../config/load.ts';
import { usageError } from '../errors.ts';
import { trainPipeline, type StageName } from '../worker/single-process-trainer.ts';

/**
 * `parti train --config FILE --run-dir DIR [--steps K] [--stage tokenizer|parti]`: trains in one
 * process for now (the orchestration area turns it into a local cluster).
 */
export function register(program: Command): void {
  program
    .command('train')
    .description('Train the image tokenizer, then Parti, in one process; ends with a sample image.')
    .requiredOption('--config <file>', 'YAML config file')
    .requiredOption('--run-dir <dir>', 'directory for the config, checkpoints, metrics.jsonl and sample.png')
    .option('--steps <k>', "override each stage's configured steps")
    .option('--stage <stage>', 'only this stage: tokenizer or parti')
    .action(async (opts: { config: string; runDir: string; steps?: string; stage?: string }) => {
      let steps: number | undefined;
      if (opts.steps !== undefined) {
        steps = Number(opts.steps);
        if (!/^\d+$/.test(opts.steps) || !Number.isSafeInteger(steps)) throw usageError('--steps', `must be an integer >= 0, got ${opts.steps}`);
      }
      if (opts.stage !== undefined && opts.stage !== 'tokenizer' && opts.stage !== 'parti') {
        throw usageError('--stage', `must be tokenizer or parti, got ${opts.stage}`);
      }
      const config = loadConfig(opts.config);
      await trainPipeline({ config, runDir: opts.runDir, steps, stage: opts.stage as StageName | undefined });
    });
}
