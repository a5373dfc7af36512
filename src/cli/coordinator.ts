import type { Command } from 'commander';
import { loadConfig } from '../config/load.ts';
import { usageError } from '../errors.ts';

function int(flag: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw usageError(flag, `must be an integer >= ${min}, got ${JSON.stringify(v)}`);
    return n;
  };
}

/** Parses `--resume latest|STEP` (STEP a committed step, an integer >= 0). */
export function parseResume(v: string): 'latest' | number {
  if (v === 'latest') return v;
  const n = /^\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n)) throw usageError('--resume', `must be latest or a committed step (an integer >= 0), got ${JSON.stringify(v)}`);
  return n;
}

function whenFinished(v: string): 'exit' | 'serve' {
  if (v !== 'exit' && v !== 'serve') throw usageError('--when-finished', `must be exit or serve, got ${JSON.stringify(v)}`);
  return v;
}

/** `parti coordinator`: the coordinator of one job (what a cluster runs; `parti train` starts one locally). */
export function register(program: Command): void {
  program
    .command('coordinator')
    .description('Run the coordinator of a training job: membership, step clock, data plan, checkpoint commits.')
    .requiredOption('--config <file>', 'YAML config file')
    .option('--run-dir <dir>', 'run directory (checkpoints, ledger)', 'runs/default')
    .option('--job-id <id>', 'job id workers must present (default: the config name)')
    .option('--host <host>', 'listen host (default runtime.coordinatorHost)')
    .option('--port <port>', 'listen port, 0 = any free (default runtime.coordinatorPort)', int('--port', 0))
    .option('--workers <n>', 'workers the job starts with (default runtime.workers)', int('--workers', 1))
    .option('--min-workers <n>', 'fewest workers it keeps training with (default runtime.minWorkers)', int('--min-workers', 1))
    .option('--steps <n>', 'optimizer steps (default: the stage config)', int('--steps', 1))
    .option('--ledger <file>', 'test mode: write the exactly-once ledger here (relative to the run dir)')
    .option('--resume <latest|step>', 'resume from the newest committed checkpoint (default) or exactly this committed step', parseResume)
    .option('--stop-with-parent', 'checkpoint and stop when the parent process goes away (used by parti train)')
    .option('--when-finished <exit|serve>', 'after the last step: exit (default), or serve the finished job until SIGTERM (a Kubernetes Deployment)', whenFinished)
    .action(async (o: { config: string; runDir: string; jobId?: string; host?: string; port?: number; workers?: number; minWorkers?: number; steps?: number; ledger?: string; resume?: 'latest' | number; stopWithParent?: boolean; whenFinished?: 'exit' | 'serve' }) => {
      const config = loadConfig(o.config);
      // loaded here, not at start-up: every `parti` command imports this module
      const { runCoordinator } = await import('../coordinator/coordinator-process.ts');
      const result = await runCoordinator(config, {
        runDir: o.runDir,
        jobId: o.jobId,
        host: o.host,
        port: o.port,
        workers: o.workers,
        minWorkers: o.minWorkers,
        steps: o.steps,
        ledger: o.ledger,
        resume: o.resume,
        stopWithParent: o.stopWithParent,
        whenFinished: o.whenFinished,
        onDone: (result) => process.stdout.write(`${JSON.stringify({ done: true, ...result })}\n`),
        onDashboard: (url) => process.stdout.write(`dashboard: ${url}\n`),
        onListening: (address) => process.stdout.write(`coordinator listening on ${address}\n`),
        onStep: (s) =>
          process.stdout.write(
            `${JSON.stringify({ step: s.step, loss: s.loss, worldSize: s.worldSize, skipped: s.skipped, stepMs: Math.round(s.stepMs), allReduceMs: Math.round(s.allReduceMs), computeMs: Math.round(s.computeMs), optimizerMs: Math.round(s.optimizerMs * 10) / 10, optimizerStateBytes: s.optimizerStateBytes, at: s.committedAt })}\n`,
          ),
      });
      if (o.whenFinished === 'serve') process.stdout.write(`${JSON.stringify({ served: true, step: result.step })}\n`);
    });
}
