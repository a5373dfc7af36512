/**
 * How a worker process ends, as its exit code. An orchestrator reads it: Kubernetes' Indexed Job
 * completes a worker's index on exit 0 and never runs it again, so 0 must mean "the job is done",
 * never "this worker was asked to go". deploy/k8s (and src/launch/job-objects.ts) list the codes
 * in the worker Job's podFailurePolicy; `parti train` restarts workers by the same rules.
 */

/** The job finished: the coordinator ran its last step (or says the job has finished). */
export const EXIT_FINISHED = 0;

/**
 * The worker left after SIGTERM or SIGINT (preemption, eviction, `kubectl delete pod`, Ctrl-C)
 * at a step boundary, losing no work, before the job finished: 128 + 15, what a process killed by
 * SIGTERM reports. Not the worker's fault: run it again without counting a failure.
 */
export const EXIT_PREEMPTED = 143;

/**
 * The job cannot go on with this worker now, through no fault of the worker: the coordinator
 * stopped the job before its last step (it was itself stopped: a rollout, a drain, `parti train`
 * asked to stop) or could not be reached for runtime.reconnectMs (its pod is being replaced).
 * EX_TEMPFAIL: a restarted coordinator resumes the job from its checkpoint, so run the worker
 * again without counting a failure (the coordinator's own crash loop shows on its Deployment).
 */
export const EXIT_JOB_STOPPED = 75;

/** Exit codes that ask for the worker to be run again without counting a failure. */
export const RETRY_EXIT_CODES: readonly number[] = [EXIT_JOB_STOPPED, EXIT_PREEMPTED];

/**
 * Text fallback, for a coordinator that predates the typed field (Stop.finished, JoinRefusal in the
 * refusal's metadata): its stop reason when the job ran all its steps, and its answer to a join
 * after the end. Used only when the coordinator did not say `finished`; a newer coordinator may
 * word its messages as it likes.
 */
const LEGACY_FINISHED_REASON = 'all steps done';
const LEGACY_FINISHED_REFUSAL = /\bhas finished\b/;
/** What a worker's runtime says when the coordinator stayed unreachable for runtime.reconnectMs. */
const COORDINATOR_LOST = /cannot reach the coordinator/;

/** True when a worker's run failed only because its coordinator could not be reached. */
export function coordinatorLost(message: string): boolean {
  return COORDINATOR_LOST.test(message);
}

/** What the coordinator said about the end of the job, as the worker got it. */
export interface JobVerdict {
  /** The coordinator's stop reason or refusal message, or the worker's own reason (`left`, …). */
  reason: string;
  /**
   * The coordinator's typed answer: Stop.finished, or JoinRefusal.finished of a refused join.
   * Undefined when it did not say: a coordinator that predates the field (then `reason` decides).
   */
  finished?: boolean;
}

/** How a worker's run ended, as seen by its process. */
export interface WorkerEnding extends JobVerdict {
  /** The process got SIGTERM/SIGINT (or lost its launcher) and asked to leave. */
  signalled: boolean;
}

/** True when the coordinator said the job ran all its steps. */
export function jobFinished(v: JobVerdict): boolean {
  if (v.finished !== undefined) return v.finished;
  // An older coordinator: only its words say it (see LEGACY_FINISHED_REASON).
  return v.reason === LEGACY_FINISHED_REASON || LEGACY_FINISHED_REFUSAL.test(v.reason);
}

/** The exit code of a worker whose run ended this way. */
export function workerExitCode(e: WorkerEnding): number {
  if (jobFinished(e)) return EXIT_FINISHED;
  return e.signalled ? EXIT_PREEMPTED : EXIT_JOB_STOPPED;
}
