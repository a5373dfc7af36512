import type { Command } from 'commander';
import { loadConfig } from '../config/load.ts';
import { usageError } from '../errors.ts';

/** A commander parser for a port flag: 0..65535 (0 = any free); a usage error names the flag. */
export function port(flag: string) {
  return (v: string): number => {
    const n = /^\d{1,5}$/.test(v) ? Number(v) : NaN;
    if (!(n <= 65535)) throw usageError(flag, `must be a port, 0..65535 (0 = any free), got ${JSON.stringify(v)}`);
    return n;
  };
}

function hostPort(flag: string) {
  return (v: string): string => {
    if (!/^[^\s:]+:\d{1,5}$/.test(v) || Number(v.split(':').pop()) > 65535) throw usageError(flag, `must be HOST:PORT, got ${JSON.stringify(v)}`);
    return v;
  };
}

/**
 * `parti worker --coordinator HOST:PORT`: one data-parallel worker (what a cluster runs per pod).
 * Exit code 0 when the job finished, 143 when it left after SIGTERM/SIGINT before the end, 75 when
 * the coordinator stopped the job before the end or stayed unreachable (src/worker/worker-exit-code.ts).
 */
export function register(program: Command): void {
  program
    .command('worker')
    .description('Run a training worker: joins the coordinator, computes gradients, all-reduces with its ring neighbours.')
    .requiredOption('--coordinator <host:port>', 'the coordinator to join', hostPort('--coordinator'))
    .requiredOption('--config <file>', 'YAML config file (must hash like the coordinator\'s)')
    .option('--run-dir <dir>', 'run directory (trained tokenizer, checkpoints)', 'runs/default')
    .option('--job-id <id>', 'job id (default: the config name)')
    .option('--listen <host:port>', 'collective endpoint (default runtime.workerHost:workerPort)', hostPort('--listen'))
    .option('--advertise <host:port>', 'address peers reach the collective endpoint at (e.g. the pod IP)', hostPort('--advertise'))
    .option('--params-out <file>', 'write the final parameters (float32) here when the job ends')
    .option('--stop-with-parent', 'leave when the parent process goes away (used by parti train)')
    .option('--metrics-port <port>', 'serve this worker\'s Prometheus /metrics and /healthz on this port, 0 = any free (default: no server)', port('--metrics-port'))
    .option('--metrics-host <host>', 'bind address of --metrics-port (default 127.0.0.1; 0.0.0.0 in a pod Prometheus scrapes)')
    .action(async (o: { coordinator: string; config: string; runDir: string; jobId?: string; listen?: string; advertise?: string; paramsOut?: string; stopWithParent?: boolean; metricsPort?: number; metricsHost?: string }) => {
      if (o.metricsHost !== undefined && o.metricsPort === undefined) throw usageError('--metrics-host', 'needs --metrics-port');
      const config = loadConfig(o.config);
      // loaded here, not at start-up: every `parti` command imports this module
      const { runWorker } = await import('../worker/worker-process.ts');
      const exit = await runWorker(config, { ...o, onMetricsListening: (url) => process.stdout.write(`worker metrics on ${url}\n`) });
      await new Promise<void>((resolve) => process.stdout.write(`${JSON.stringify({ worker: 'stopped', ...exit })}\n`, () => resolve()));
      // main() would exit 0 once the action returns; an unfinished job must not look complete.
      if (exit.exitCode !== 0) {
        process.stderr.write(`parti: worker stopped before the job finished: ${exit.reason} (exit ${exit.exitCode})\n`);
        process.exit(exit.exitCode);
      }
    });
}
