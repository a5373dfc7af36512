import type { Command } from 'commander';
import { loadConfig } from '../config/load.ts';
import { countParams } from '../model/param-count.ts';

function human(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

/** `parti model info --config FILE [--json]`: parameter counts without allocating the model. */
export function register(program: Command): void {
  const model = program.command('model').description('Inspect models.');
  model
    .command('info')
    .description('Count parameters per component from a config, without allocating the model.')
    .requiredOption('--config <file>', 'YAML config file')
    .option('--json', 'print one JSON object (total, nonEmbedding, components, tokenizer)')
    .action((opts: { config: string; json?: boolean }) => {
      const cfg = loadConfig(opts.config);
      const c = countParams(cfg.model);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ config: opts.config, name: cfg.name, ...c })}\n`);
        return;
      }
      const rows: [string, number][] = [
        ['text embedding + positions', c.components.textEmbedding],
        ['text encoder', c.components.textEncoder],
        ['image embedding + positions', c.components.imageEmbedding],
        ['image decoder', c.components.imageDecoder],
        ['output projection', c.components.outputProjection],
        ['Parti total', c.total],
        ['Parti non-embedding', c.nonEmbedding],
        ['tokenizer encoder', c.tokenizer.encoder],
        ['tokenizer codebook', c.tokenizer.quantizer],
        ['tokenizer decoder', c.tokenizer.decoder],
        ['tokenizer discriminator', c.tokenizer.discriminator],
        ['tokenizer total', c.tokenizer.total],
      ];
      const lines = rows.map(([k, v]) => `${k.padEnd(30)} ${String(v).padStart(14)}  ${human(v)}`);
      process.stdout.write(`${cfg.name} (${opts.config})\n${lines.join('\n')}\n`);
    });
}
