import { PassThrough } from 'node:stream';
import { Log, type V1Deployment, type V1Job, type V1Pod } from '@kubernetes/client-node';
import { PartiError, usageError } from '../errors.ts';
import { apiStatus, clusterError, connectCluster, type Cluster, type ClusterOptions } from './cluster-client.ts';
import { COMPONENT_LABEL, JOB_NAME_PATTERN, jobObjectNames, jobSelector, tokenizerJobName } from './job-objects.ts';

/** One pod of a job as `parti launch status` shows it. */
export interface JobPodStatus {
  name: string;
  component: 'coordinator' | 'worker' | 'tokenizer' | 'unknown';
  /** The worker's completion index (its stable identity), when it is a worker. */
  index?: number;
  phase: string;
  ready: boolean;
  restarts: number;
  node?: string;
  /** Why a container is waiting or ended (CrashLoopBackOff, ImagePullBackOff, OOMKilled, …). */
  reason?: string;
}

/** A job in the cluster. */
export interface JobStatus {
  name: string;
  namespace: string;
  /**
   * pending: pods not up yet; running; succeeded: the worker Job completed; failed: it failed.
   * A job of only its tokenizer stage (`--stage tokenizer`) takes the tokenizer Job's.
   */
  phase: 'pending' | 'running' | 'succeeded' | 'failed';
  coordinator: { ready: number; replicas: number; image?: string } | null;
  workers: { workers: number; active: number; ready: number; succeeded: number; failed: number; conditions: string[] } | null;
  /** The tokenizer stage's Job (`parti launch k8s --stage tokenizer`), when there is one. */
  tokenizer: { active: number; succeeded: number; failed: number; conditions: string[] } | null;
  pods: JobPodStatus[];
}

/** Validates a `--job NAME` value. */
export function checkJobName(name: string): void {
  if (!JOB_NAME_PATTERN.test(name)) throw usageError('--job', `a job name (the config's name: lowercase letters, digits, dashes), got "${name}"`);
}

/** Reads the coordinator Deployment, the worker Job and the pods of a job. */
export async function jobStatus(job: string, options: ClusterOptions = {}): Promise<JobStatus> {
  checkJobName(job);
  const cluster = connectCluster(options);
  const namespace = cluster.namespace;
  const names = jobObjectNames(job);
  const deployment = await readOrNull(cluster, `read deployment ${names.coordinator} in namespace ${namespace}`, () =>
    cluster.apps.readNamespacedDeployment({ name: names.coordinator, namespace }),
  );
  const workers = await readOrNull(cluster, `read job ${names.workers} in namespace ${namespace}`, () =>
    cluster.batch.readNamespacedJob({ name: names.workers, namespace }),
  );
  const tokenizer = await readOrNull(cluster, `read job ${tokenizerJobName(job)} in namespace ${namespace}`, () =>
    cluster.batch.readNamespacedJob({ name: tokenizerJobName(job), namespace }),
  );
  const pods = await listPods(cluster, job);
  if (!deployment && !workers && !tokenizer && pods.length === 0) throw notFound(job, namespace);
  return summarize(job, namespace, deployment, workers, tokenizer, pods);
}

/** The conditions of a Job that hold, as `Type (Reason)`. */
function trueConditions(job: V1Job | null): string[] {
  return (job?.status?.conditions ?? []).filter((c) => c.status === 'True').map((c) => (c.reason ? `${c.type} (${c.reason})` : c.type));
}

function summarize(name: string, namespace: string, deployment: V1Deployment | null, job: V1Job | null, tokenizer: V1Job | null, pods: V1Pod[]): JobStatus {
  const conditions = trueConditions(job);
  // Without the Parti stage's objects, the job is its tokenizer stage.
  const tokenizerOnly = !job && !deployment && tokenizer !== null;
  const decides = tokenizerOnly ? tokenizer : job;
  const trueTypes = new Set((decides?.status?.conditions ?? []).filter((c) => c.status === 'True').map((c) => c.type));
  const podStatuses = pods.map(podStatus).sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
  let phase: JobStatus['phase'] = 'pending';
  if (trueTypes.has('Failed') || trueTypes.has('FailureTarget')) phase = 'failed';
  else if (trueTypes.has('Complete') || trueTypes.has('SuccessCriteriaMet')) phase = 'succeeded';
  else if (tokenizerOnly && (tokenizer.status?.active ?? 0) > 0) phase = 'running';
  else if ((job?.status?.active ?? 0) > 0 && (deployment?.status?.readyReplicas ?? 0) > 0) phase = 'running';
  return {
    name,
    namespace,
    phase,
    coordinator: deployment
      ? {
          ready: deployment.status?.readyReplicas ?? 0,
          replicas: deployment.spec?.replicas ?? 1,
          image: deployment.spec?.template?.spec?.containers?.[0]?.image,
        }
      : null,
    workers: job
      ? {
          workers: job.spec?.parallelism ?? 0,
          active: job.status?.active ?? 0,
          ready: job.status?.ready ?? 0,
          succeeded: job.status?.succeeded ?? 0,
          failed: job.status?.failed ?? 0,
          conditions,
        }
      : null,
    tokenizer: tokenizer
      ? {
          active: tokenizer.status?.active ?? 0,
          succeeded: tokenizer.status?.succeeded ?? 0,
          failed: tokenizer.status?.failed ?? 0,
          conditions: trueConditions(tokenizer),
        }
      : null,
    pods: podStatuses,
  };
}

function rank(pod: JobPodStatus): number {
  return pod.component === 'coordinator' ? -1 : (pod.index ?? 1e9);
}

function podStatus(pod: V1Pod): JobPodStatus {
  const labels = pod.metadata?.labels ?? {};
  const label = labels[COMPONENT_LABEL];
  const component = label === 'coordinator' || label === 'worker' || label === 'tokenizer' ? label : 'unknown';
  const indexText = labels['batch.kubernetes.io/job-completion-index'] ?? pod.metadata?.annotations?.['batch.kubernetes.io/job-completion-index'];
  const containers = pod.status?.containerStatuses ?? [];
  const reasons = containers
    .map((c) => c.state?.waiting?.reason ?? c.state?.terminated?.reason ?? c.lastState?.terminated?.reason)
    .filter((r): r is string => Boolean(r));
  return {
    name: pod.metadata?.name ?? '?',
    component,
    ...(indexText !== undefined && /^\d+$/.test(indexText) ? { index: Number(indexText) } : {}),
    phase: pod.status?.phase ?? 'Unknown',
    ready: containers.length > 0 && containers.every((c) => c.ready),
    restarts: containers.reduce((sum, c) => sum + (c.restartCount ?? 0), 0),
    ...(pod.spec?.nodeName ? { node: pod.spec.nodeName } : {}),
    ...(reasons.length ? { reason: reasons.join(',') } : {}),
  };
}

/** The status as lines of text for a terminal. */
export function formatJobStatus(status: JobStatus): string {
  const lines = [`job ${status.name} in namespace ${status.namespace}: ${status.phase}`];
  lines.push(
    status.coordinator
      ? `coordinator: ${status.coordinator.ready}/${status.coordinator.replicas} ready${status.coordinator.image ? `, image ${status.coordinator.image}` : ''}`
      : 'coordinator: no deployment',
  );
  const w = status.workers;
  lines.push(
    w
      ? `workers: ${w.workers} asked, ${w.active} active, ${w.ready} ready, ${w.succeeded} succeeded, ${w.failed} failed${w.conditions.length ? `; ${w.conditions.join(', ')}` : ''}`
      : 'workers: no job',
  );
  const t = status.tokenizer;
  if (t) lines.push(`tokenizer stage: ${t.active} active, ${t.succeeded} succeeded, ${t.failed} failed${t.conditions.length ? `; ${t.conditions.join(', ')}` : ''}`);
  if (status.pods.length) {
    const rows = [['POD', 'COMPONENT', 'INDEX', 'PHASE', 'READY', 'RESTARTS', 'NODE', 'REASON']];
    for (const p of status.pods) {
      rows.push([p.name, p.component, p.index === undefined ? '-' : String(p.index), p.phase, p.ready ? 'yes' : 'no', String(p.restarts), p.node ?? '-', p.reason ?? '']);
    }
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    for (const r of rows) lines.push(r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
  }
  return lines.join('\n');
}

/** Which logs `parti launch logs` prints. */
export interface JobLogsOptions extends ClusterOptions {
  /** Only the coordinator's, the workers' or the tokenizer stage's pods. */
  component?: 'coordinator' | 'worker' | 'tokenizer';
  /** Only the worker with this completion index. */
  index?: number;
  /** The last this many lines of each pod. */
  tail?: number;
  /** The previous (crashed) container's logs. */
  previous?: boolean;
  /** Keep streaming until the pods end (or the command is interrupted). */
  follow?: boolean;
}

/**
 * Writes the logs of a job's pods to `write`, each line prefixed with `[POD] ` when there is more
 * than one pod. Without `follow`, each pod's log is read once (with the request deadline).
 */
export async function jobLogs(job: string, options: JobLogsOptions, write: (text: string) => void): Promise<void> {
  checkJobName(job);
  if (options.tail !== undefined && (!Number.isInteger(options.tail) || options.tail < 0)) throw usageError('--tail', `an integer >= 0, got ${options.tail}`);
  if (options.index !== undefined && (!Number.isInteger(options.index) || options.index < 0)) throw usageError('--index', `an integer >= 0, got ${options.index}`);
  const cluster = connectCluster(options);
  const namespace = cluster.namespace;
  let pods = (await listPods(cluster, job)).map((pod) => ({ pod, status: podStatus(pod) }));
  if (options.component) pods = pods.filter((p) => p.status.component === options.component);
  if (options.index !== undefined) pods = pods.filter((p) => p.status.index === options.index);
  pods.sort((a, b) => rank(a.status) - rank(b.status) || a.status.name.localeCompare(b.status.name));
  if (pods.length === 0) throw new PartiError('usage', `no pods of job ${job} in namespace ${namespace} match (is the job running? see \`parti launch status --job ${job}\`)`);
  const prefixed = pods.length > 1;
  const emit = (podName: string, text: string) => {
    if (!text) return;
    const body = text.endsWith('\n') ? text.slice(0, -1) : text;
    write(body.split('\n').map((line) => (prefixed ? `[${podName}] ${line}` : line)).join('\n') + '\n');
  };

  if (!options.follow) {
    for (const { pod, status } of pods) {
      const container = pod.spec?.containers?.[0]?.name;
      try {
        const text = await cluster.core.readNamespacedPodLog({
          name: status.name,
          namespace,
          container,
          tailLines: options.tail,
          previous: options.previous,
        });
        emit(status.name, text);
      } catch (err) {
        throw clusterError(cluster, `read the log of pod ${status.name} in namespace ${namespace}`, err);
      }
    }
    return;
  }

  // Follow every pod at once; lines are written as they arrive (whole lines only, so two pods'
  // lines never interleave mid-line).
  const logApi = new Log(cluster.kubeConfig);
  const controllers: AbortController[] = [];
  const onSignal = () => controllers.forEach((c) => c.abort());
  process.once('SIGINT', onSignal);
  try {
    await Promise.all(
      pods.map(async ({ pod, status }) => {
        const stream = new PassThrough();
        let pending = '';
        stream.on('data', (chunk: Buffer) => {
          pending += chunk.toString('utf8');
          const cut = pending.lastIndexOf('\n');
          if (cut >= 0) {
            emit(status.name, pending.slice(0, cut + 1));
            pending = pending.slice(cut + 1);
          }
        });
        const ended = new Promise<void>((resolve) => {
          stream.on('end', resolve);
          stream.on('close', resolve);
          stream.on('error', resolve);
        });
        try {
          controllers.push(
            await logApi.log(namespace, status.name, pod.spec?.containers?.[0]?.name ?? '', stream, {
              follow: true,
              tailLines: options.tail,
              previous: options.previous,
            }),
          );
        } catch (err) {
          throw clusterError(cluster, `follow the log of pod ${status.name} in namespace ${namespace}`, err);
        }
        await ended;
        emit(status.name, pending);
      }),
    );
  } finally {
    process.off('SIGINT', onSignal);
  }
}

async function listPods(cluster: Cluster, job: string): Promise<V1Pod[]> {
  try {
    const list = await cluster.core.listNamespacedPod({ namespace: cluster.namespace, labelSelector: jobSelector(job) });
    return list.items;
  } catch (err) {
    throw clusterError(cluster, `list the pods of job ${job} in namespace ${cluster.namespace}`, err);
  }
}

async function readOrNull<T>(cluster: Cluster, doing: string, read: () => Promise<T>): Promise<T | null> {
  try {
    return await read();
  } catch (err) {
    if (apiStatus(err) === 404) return null;
    throw clusterError(cluster, doing, err);
  }
}

/** The error for a job with no objects in the namespace. */
export function notFound(job: string, namespace: string): PartiError {
  return new PartiError('usage', `job ${job} not found in namespace ${namespace} (pass --namespace if it runs elsewhere)`);
}
