/**
 * One coordinator process: resolves the job from the config, recovers from the latest committed
 * checkpoint, serves the coordinator service until the job is done, and stops cleanly on SIGINT or
 * SIGTERM (a checkpoint first, then every worker is told to stop).
 *
 * `whenFinished: 'serve'` (what a Kubernetes Deployment runs) keeps a finished job finished: the
 * process does not exit at the end (a Deployment would restart it forever), and a coordinator that
 * starts on a job whose latest committed checkpoint is at its last step serves that finished job
 * at once: the dashboard and /healthz stay up, and a worker that joins is told the job has
 * finished (it exits 0, so its Job index completes), until SIGTERM.
 */
import type { Config } from '../config/schema.ts';
import { log } from '../observability/log.ts';
import { PartiError } from '../errors.ts';
import { resolveJobSecurity } from '../security/job-security.ts';
import { Coordinator, type StepSummary } from './coordinator.ts';
import { startCoordinatorServer } from './coordinator-server.ts';
import { checkpointUrl } from './protocol.ts';
import { jobStage, resolveCoordinatorOptions, type JobOverrides } from './job.ts';
import { startCoordinatorDashboard, type CoordinatorDashboard } from '../dashboard/coordinator-bridge.ts';

/** Options of runCoordinator beyond the job's. */
export interface CoordinatorProcessOptions extends JobOverrides {
  host?: string;
  port?: number;
  /** Called once the service listens, with its host:port. */
  onListening?: (address: string) => void;
  /** Called once the dashboard serves, with its URL. */
  onDashboard?: (url: string) => void;
  /** Called for every committed step. */
  onStep?: (s: StepSummary) => void;
  /** Stop on these signals (default SIGINT and SIGTERM). */
  signals?: NodeJS.Signals[];
  /** Stop (checkpoint first) when the parent process goes away (a local launcher that was killed). */
  stopWithParent?: boolean;
  /**
   * When the job has run all its steps: `exit` (default: a local launcher's child) or `serve`
   * the finished job until a signal (a Kubernetes Deployment, which restarts a process that exits).
   */
  whenFinished?: 'exit' | 'serve';
  /** Called once when the job is over (finished or stopped; not when it failed), before any serving of the finished job. */
  onDone?: (result: CoordinatorResult) => void;
}

/** How a job's coordinator ended. */
export interface CoordinatorResult {
  step: number;
  reason: string;
  skippedSteps: number;
  /** The job ran all its steps (now, or before this coordinator started). */
  finished: boolean;
}

/** Runs a job's coordinator to the end; resolves with the final step and why it ended. */
export async function runCoordinator(config: Config, o: CoordinatorProcessOptions): Promise<CoordinatorResult> {
  const security = resolveJobSecurity(config.security);
  const opts = await resolveCoordinatorOptions(config, o);
  const coordinator = new Coordinator(opts);
  await coordinator.recover(o.resume ?? 'latest');
  const serveFinished = o.whenFinished === 'serve';
  // The latest committed checkpoint is at the last step: the job finished before this process started.
  const finishedBefore = coordinator.step >= opts.totalSteps;
  const server = await startCoordinatorServer(
    coordinator,
    o.host ?? config.runtime.coordinatorHost,
    o.port ?? config.runtime.coordinatorPort,
    config.runtime.maxMessageBytes,
    security,
  );
  const signals = o.signals ?? ['SIGINT', 'SIGTERM'];
  // While a finished job is served, a signal ends the serving; before, it stops the job.
  let endServing: (() => void) | null = null;
  let serving = false;
  let signalled = false;
  const stopOrEndServing = (why: string) => {
    signalled = true;
    if (serving) endServing?.();
    else coordinator.requestStop(why);
  };
  const onSignal = (sig: NodeJS.Signals) => stopOrEndServing(`${sig}`);
  for (const s of signals) process.on(s, onSignal);
  const parent = process.ppid;
  // (a finished job served for a launcher that is gone ends too)
  const parentWatch = o.stopWithParent ? setInterval(() => process.ppid !== parent && stopOrEndServing('the launcher is gone'), 1000) : null;
  parentWatch?.unref();
  if (o.onStep) coordinator.subscribe((e) => e.type === 'step' && o.onStep!(e.step));
  let dashboard: CoordinatorDashboard | null = null;
  // Everything from here on is undone in `finally`, also when the dashboard cannot start.
  try {
    if (config.dashboard.enabled) {
      const stage = jobStage(config);
      dashboard = await startCoordinatorDashboard(coordinator, config.dashboard, {
        name: config.name,
        stage: stage.stage,
        batchSize: stage.batch,
        checkpointStore: checkpointUrl(config, o.runDir),
        // The gallery samples committed checkpoints with the run's tokenizer (dashboard.gallery).
        generation: { config, runDir: o.runDir },
        // Several local coordinators may share a machine; a cluster's Service needs the configured port.
        onPortInUse: ['127.0.0.1', 'localhost', '::1'].includes(config.dashboard.host) ? 'any-free-port' : 'fail',
      });
      o.onDashboard?.(dashboard.url);
    }
    o.onListening?.(server.address);
    log.child({ role: 'coordinator' }).info(
      { job: opts.jobId, configHash: opts.configHash, steps: opts.totalSteps, workers: opts.targetWorkers, minWorkers: opts.minWorkers, zeroStage: opts.zeroStage },
      'job ready',
    );
    const served = serveFinished ? new Promise<void>((resolve) => (endServing = resolve)) : null;
    if (serveFinished && finishedBefore) {
      // Nothing to train: end the job now, so that workers that join are told it has finished.
      log.child({ role: 'coordinator' }).info({ step: coordinator.step, steps: opts.totalSteps }, 'the job finished before this coordinator started (its latest checkpoint is at the last step)');
      coordinator.requestStop('all steps done');
    }
    const done = await coordinator.done;
    // let the stop commands reach the workers before the server goes
    await new Promise((r) => setTimeout(r, 200));
    if (coordinator.failed) throw new PartiError('collective-aborted', `job ${opts.jobId} failed: ${coordinator.failed}`);
    const result: CoordinatorResult = { ...done, skippedSteps: coordinator.skippedSteps, finished: done.step >= opts.totalSteps };
    o.onDone?.(result);
    // (a signal that came while the job ended means the pod is going away: do not linger)
    if (served && result.finished && !signalled) {
      log.child({ role: 'coordinator' }).info({ step: done.step }, 'job finished; serving it (dashboard, workers told it has finished) until SIGTERM');
      serving = true;
      await served;
    }
    return result;
  } finally {
    for (const s of signals) process.off(s, onSignal);
    if (parentWatch) clearInterval(parentWatch);
    coordinator.close();
    await server.close();
    await dashboard?.close();
  }
}
