/**
 * One coordinator process: resolves the job from the config, recovers from the latest committed
 * checkpoint, serves the coordinator service until the job is done, and stops cleanly on SIGINT or
 * SIGTERM (a checkpoint first, then every worker is told to stop).
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
}

/** Runs a job's coordinator to the end; resolves with the final step and why it ended. */
export async function runCoordinator(config: Config, o: CoordinatorProcessOptions): Promise<{ step: number; reason: string; skippedSteps: number }> {
  const security = resolveJobSecurity(config.security);
  const opts = await resolveCoordinatorOptions(config, o);
  const coordinator = new Coordinator(opts);
  await coordinator.recover(o.resume ?? 'latest');
  const server = await startCoordinatorServer(
    coordinator,
    o.host ?? config.runtime.coordinatorHost,
    o.port ?? config.runtime.coordinatorPort,
    config.runtime.maxMessageBytes,
    security,
  );
  const signals = o.signals ?? ['SIGINT', 'SIGTERM'];
  const onSignal = (sig: NodeJS.Signals) => coordinator.requestStop(`${sig}`);
  for (const s of signals) process.on(s, onSignal);
  const parent = process.ppid;
  const parentWatch = o.stopWithParent ? setInterval(() => process.ppid !== parent && coordinator.requestStop('the launcher is gone'), 1000) : null;
  parentWatch?.unref();
  if (o.onStep) coordinator.subscribe((e) => e.type === 'step' && o.onStep!(e.step));
  let dashboard: CoordinatorDashboard | null = null;
  if (config.dashboard.enabled) {
    const stage = jobStage(config);
    dashboard = await startCoordinatorDashboard(coordinator, config.dashboard, {
      name: config.name,
      stage: stage.stage,
      batchSize: stage.batch,
      checkpointStore: checkpointUrl(config, o.runDir),
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
  try {
    const done = await coordinator.done;
    // let the stop commands reach the workers before the server goes
    await new Promise((r) => setTimeout(r, 200));
    if (coordinator.failed) throw new PartiError('collective-aborted', `job ${opts.jobId} failed: ${coordinator.failed}`);
    return { ...done, skippedSteps: coordinator.skippedSteps };
  } finally {
    for (const s of signals) process.off(s, onSignal);
    if (parentWatch) clearInterval(parentWatch);
    coordinator.close();
    await server.close();
    await dashboard?.close();
  }
}
