import { collectiveNodeFlags } from '../collective/worker-node-flags.ts';
import { readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { PatchStrategy, setHeaderOptions, type V1Job, type V1Secret } from '@kubernetes/client-node';
import { loadConfig } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { PartiError, usageError } from '../errors.ts';
import { log } from '../observability/log.ts';
import { apiStatus, clusterError, connectCluster, type Cluster, type ClusterOptions } from './cluster-client.ts';
import {
  buildJobObjects,
  buildTokenizerJob,
  COORDINATOR_HTTP_PORT,
  JOB_NAME_PATTERN,
  DEFAULT_DASHBOARD_SECRET,
  DEFAULT_S3_SECRET,
  DEFAULT_TLS_SECRET,
  TLS_MOUNT_DIR,
  type JobObjects,
  type JobObjectsInput,
} from './job-objects.ts';

/** What `parti launch k8s` is asked to do. */
export interface LaunchOptions {
  /** The job config (YAML); validated, then stored verbatim in the ConfigMap. Its `name` names the job. */
  configFile: string;
  /** Image of the coordinator and the workers. */
  image: string;
  /** Worker pods; default: the config's runtime.workers. */
  workers?: number;
  /** NVIDIA GPUs per worker pod (default 0: CPU workers). */
  gpusPerWorker?: number;
  /** Namespace; default: the kubeconfig context's, then `default`. With dryRun, left out of the objects unless given. */
  namespace?: string;
  /** Secret with the S3 credentials (default parti-s3). */
  s3Secret?: string;
  /** Secret with the dashboard token under `token` (default parti-dashboard). */
  dashboardSecret?: string;
  /** Optional Secret with the TLS files and job token (default parti-tls); required when the config sets security.tls. */
  tlsSecret?: string;
}

/** What happened to one object. */
export interface AppliedObject {
  kind: string;
  name: string;
  /** created; configured (patched); unchanged (already as asked); scaled (the worker Job's size changed). */
  action: 'created' | 'configured' | 'unchanged' | 'scaled';
}

const NAMESPACE_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Validates the options and the config and builds the job's objects; touches no cluster. */
export function prepareJob(options: LaunchOptions): { input: JobObjectsInput; objects: JobObjects; mtls: boolean; tlsKeys: string[]; config: Config } {
  if (!options.image || /\s/.test(options.image)) throw usageError('--image', `an image reference (registry/name:tag), got "${options.image ?? ''}"`);
  if (options.workers !== undefined && (!Number.isInteger(options.workers) || options.workers < 1 || options.workers > 10000)) {
    throw usageError('--workers', `an integer from 1 to 10000, got ${options.workers}`);
  }
  const gpus = options.gpusPerWorker ?? 0;
  if (!Number.isInteger(gpus) || gpus < 0 || gpus > 64) throw usageError('--gpus', `an integer from 0 to 64, got ${gpus}`);
  if (options.namespace !== undefined && !NAMESPACE_RE.test(options.namespace)) {
    throw usageError('--namespace', `a DNS label (lowercase letters, digits, dashes, at most 63), got "${options.namespace}"`);
  }
  const config = oneLine(() => loadConfig(options.configFile));
  const configText = readFileSync(options.configFile, 'utf8');
  if (!JOB_NAME_PATTERN.test(config.name)) {
    throw new PartiError('config', `${options.configFile}: name: a Kubernetes job name must start with a letter and have at most 40 characters, got "${config.name}"`);
  }
  checkClusterReady(options.configFile, config);
  const workers = options.workers ?? config.runtime.workers;
  const minWorkers = config.runtime.minWorkers;
  if (minWorkers !== undefined && minWorkers > workers) {
    throw usageError('--workers', `${workers} is fewer than the config's runtime.minWorkers (${minWorkers}): the job would never start`);
  }
  const input: JobObjectsInput = {
    name: config.name,
    configText,
    image: options.image,
    workers,
    gpusPerWorker: gpus,
    namespace: options.namespace,
    s3Secret: options.s3Secret ?? DEFAULT_S3_SECRET,
    dashboardSecret: options.dashboardSecret ?? DEFAULT_DASHBOARD_SECRET,
    tlsSecret: options.tlsSecret ?? DEFAULT_TLS_SECRET,
    workerNodeFlags: collectiveNodeFlags(config.collective),
  };
  return { input, objects: buildJobObjects(input), mtls: config.security.tls !== undefined, tlsKeys: tlsSecretKeys(config), config };
}

/**
 * Creates the job's objects in the cluster, in order, after checking that the namespace and the
 * Secrets exist. An object that exists already is patched (Services, the Deployment), left as it
 * is (the ConfigMap: its name is the hash of its content), or, for the worker Job, whose pod
 * template cannot change, left as it is when it matches, resized when only the worker count
 * differs, and refused otherwise.
 */
export async function applyJob(options: LaunchOptions & ClusterOptions): Promise<{ namespace: string; applied: AppliedObject[] }> {
  const prepared = prepareJob(options);
  const cluster = connectCluster(options);
  const namespace = cluster.namespace;
  const objects = buildJobObjects({ ...prepared.input, namespace });
  await checkNamespace(cluster, namespace);
  await checkSecret(cluster, namespace, prepared.input.s3Secret!, 'AWS_ACCESS_KEY_ID=… --from-literal=AWS_SECRET_ACCESS_KEY=…');
  await checkSecret(cluster, namespace, prepared.input.dashboardSecret!, 'token=$(openssl rand -hex 24)');
  if (prepared.tlsKeys.length > 0) {
    // Every pod mounts the Secret optionally: a missing key would only show as pods failing on it.
    await checkSecret(
      cluster,
      namespace,
      prepared.input.tlsSecret!,
      'token=$(openssl rand -hex 24) --from-file=DIR/ca.crt --from-file=DIR/coordinator.crt --from-file=DIR/coordinator.key --from-file=DIR/worker.crt --from-file=DIR/worker.key` (DIR from `parti certs init --out DIR`)',
      prepared.tlsKeys,
    );
  }
  // Decide about the worker Job before changing anything, so a refused launch changes nothing.
  const jobPlan = await planWorkerJob(cluster, namespace, prepared.input.name, objects.workers);

  const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
  // Each object but the Job: how to create it, and how to bring an existing one in line (null:
  // the ConfigMap, whose name is the hash of its content, is already as asked).
  const steps: ApplyStep[] = [
    {
      kind: 'ConfigMap',
      name: objects.configMap.metadata!.name!,
      create: () => cluster.core.createNamespacedConfigMap({ namespace, body: objects.configMap }),
      patch: null,
    },
    ...[objects.coordinatorService, objects.workersService].map((service) => ({
      kind: 'Service',
      name: service.metadata!.name!,
      create: () => cluster.core.createNamespacedService({ namespace, body: service }),
      patch: () => cluster.core.patchNamespacedService({ name: service.metadata!.name!, namespace, body: service }, merge),
    })),
    {
      kind: 'Deployment',
      name: objects.coordinator.metadata!.name!,
      create: () => cluster.apps.createNamespacedDeployment({ namespace, body: objects.coordinator }),
      patch: () => cluster.apps.patchNamespacedDeployment({ name: objects.coordinator.metadata!.name!, namespace, body: objects.coordinator }, merge),
    },
  ];
  const applied: AppliedObject[] = [];
  for (const step of steps) applied.push(await applyObject(cluster, namespace, step));
  applied.push(await applyWorkerJob(cluster, namespace, objects.workers, jobPlan));
  log.debug({ namespace, applied }, 'launch: applied');
  return { namespace, applied };
}

/**
 * The tokenizer stage's objects (`parti launch k8s --stage tokenizer`): the job's ConfigMap and
 * one Job that trains the image tokenizer and publishes it to the config's training.tokenizerFrom.
 * The config is checked as for the job itself: it is the one the Parti stage runs with next.
 */
export function prepareTokenizerJob(options: LaunchOptions): { input: JobObjectsInput; publishTo: string; objects: ReturnType<typeof buildTokenizerJob> } {
  const { input, config } = prepareJob(options);
  if (config.runtime.testModel) {
    throw new PartiError('config', `${options.configFile}: runtime.testModel: the test model has no image tokenizer to train (--stage tokenizer is for Parti jobs)`);
  }
  // (prepareJob checked that it is an s3:// URL)
  const publishTo = config.training.tokenizerFrom!;
  return { input, publishTo, objects: buildTokenizerJob(input, publishTo) };
}

/**
 * Creates the tokenizer stage in the cluster: the ConfigMap (unchanged when there), then its Job.
 * A Job of that name that runs or waits with the same spec is left as it is; one that has ended,
 * or has another spec, is refused (a Job's pods cannot change): delete it first.
 */
export async function applyTokenizerJob(options: LaunchOptions & ClusterOptions): Promise<{ namespace: string; applied: AppliedObject[]; publishTo: string }> {
  const prepared = prepareTokenizerJob(options);
  const cluster = connectCluster(options);
  const namespace = cluster.namespace;
  const { configMap, tokenizer } = buildTokenizerJob({ ...prepared.input, namespace }, prepared.publishTo);
  await checkNamespace(cluster, namespace);
  await checkSecret(cluster, namespace, prepared.input.s3Secret!, 'AWS_ACCESS_KEY_ID=… --from-literal=AWS_SECRET_ACCESS_KEY=…');
  const plan = await planWorkerJob(cluster, namespace, prepared.input.name, tokenizer);
  const applied: AppliedObject[] = [
    await applyObject(cluster, namespace, {
      kind: 'ConfigMap',
      name: configMap.metadata!.name!,
      create: () => cluster.core.createNamespacedConfigMap({ namespace, body: configMap }),
      patch: null,
    }),
  ];
  // (one pod: completions and parallelism never differ, so the plan is create or unchanged)
  applied.push(await applyWorkerJob(cluster, namespace, tokenizer, plan));
  log.debug({ namespace, applied }, 'launch: tokenizer stage applied');
  return { namespace, applied, publishTo: prepared.publishTo };
}

/** How to create one object, and how to bring an existing one in line (null: it already is). */
interface ApplyStep {
  kind: string;
  name: string;
  create: () => Promise<unknown>;
  patch: (() => Promise<unknown>) | null;
}

/** Creates the object; when it exists (409), patches it, or leaves it when there is no patch. */
async function applyObject(cluster: Cluster, namespace: string, step: ApplyStep): Promise<AppliedObject> {
  const what = `${step.kind.toLowerCase()} ${step.name} in namespace ${namespace}`;
  try {
    await step.create();
    return { kind: step.kind, name: step.name, action: 'created' };
  } catch (err) {
    if (apiStatus(err) !== 409) throw notFoundIsNamespace(clusterError(cluster, `create ${what}`, err), err, namespace);
  }
  if (!step.patch) return { kind: step.kind, name: step.name, action: 'unchanged' };
  try {
    await step.patch();
  } catch (err) {
    throw clusterError(cluster, `patch ${what}`, err);
  }
  return { kind: step.kind, name: step.name, action: 'configured' };
}

type JobPlan = { kind: 'create' } | { kind: 'unchanged' } | { kind: 'scale' };

async function planWorkerJob(cluster: Cluster, namespace: string, jobName: string, desired: V1Job): Promise<JobPlan> {
  const name = desired.metadata!.name!;
  let existing: V1Job;
  try {
    existing = await cluster.batch.readNamespacedJob({ name, namespace });
  } catch (err) {
    if (apiStatus(err) === 404) return { kind: 'create' };
    throw clusterError(cluster, `read job ${name} in namespace ${namespace}`, err);
  }
  const ended = (existing.status?.conditions ?? []).find((c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True');
  if (ended) {
    throw new PartiError(
      'refused',
      `job ${name} in namespace ${namespace} has ended (${ended.type}${ended.reason ? `: ${ended.reason}` : ''}); to run it again, delete it first with \`parti launch delete --job ${jobName}\` (the checkpoints stay)`,
    );
  }
  // The server fills in defaults and the Job controller adds labels, so "the same" means every
  // field we ask for is there with our value.
  const { parallelism, completions, ...restSpec } = desired.spec!;
  const { parallelism: oldParallelism, completions: oldCompletions, ...oldRest } = existing.spec ?? ({} as V1Job['spec'] & object);
  if (!isSubset(restSpec, oldRest) || !isSubset(desired.metadata!.labels ?? {}, existing.metadata?.labels ?? {})) {
    throw new PartiError(
      'refused',
      `job ${name} already exists in namespace ${namespace} with another image, config or pod spec (a Job's pods cannot change): delete it first with \`parti launch delete --job ${jobName}\``,
    );
  }
  return parallelism === oldParallelism && completions === oldCompletions ? { kind: 'unchanged' } : { kind: 'scale' };
}

async function applyWorkerJob(cluster: Cluster, namespace: string, job: V1Job, plan: JobPlan): Promise<AppliedObject> {
  const name = job.metadata!.name!;
  if (plan.kind === 'unchanged') return { kind: 'Job', name, action: 'unchanged' };
  if (plan.kind === 'scale') {
    // An Indexed Job may change completions together with parallelism (elastic Indexed Jobs).
    try {
      await cluster.batch.patchNamespacedJob(
        { name, namespace, body: { spec: { parallelism: job.spec!.parallelism, completions: job.spec!.completions } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
    } catch (err) {
      throw clusterError(cluster, `resize job ${name} in namespace ${namespace}`, err);
    }
    return { kind: 'Job', name, action: 'scaled' };
  }
  try {
    await cluster.batch.createNamespacedJob({ namespace, body: job });
  } catch (err) {
    throw notFoundIsNamespace(clusterError(cluster, `create job ${name} in namespace ${namespace}`, err), err, namespace);
  }
  return { kind: 'Job', name, action: 'created' };
}

async function checkNamespace(cluster: Cluster, namespace: string): Promise<void> {
  try {
    await cluster.core.readNamespace({ name: namespace });
  } catch (err) {
    const status = apiStatus(err);
    if (status === 404) throw new PartiError('usage', `namespace ${namespace} not found in ${cluster.server} (create it with \`kubectl create namespace ${namespace}\` or pass --namespace)`);
    // Many users may not read namespaces (a cluster-scoped resource): creating the objects will tell.
    if (status === 403) return;
    throw clusterError(cluster, `read namespace ${namespace}`, err);
  }
}

async function checkSecret(cluster: Cluster, namespace: string, name: string, literals: string, keys: readonly string[] = []): Promise<void> {
  let secret: V1Secret;
  try {
    secret = await cluster.core.readNamespacedSecret({ name, namespace });
  } catch (err) {
    const status = apiStatus(err);
    if (status === 404) {
      throw new PartiError('usage', `secret ${name} not found in namespace ${namespace}: create it first, e.g. \`kubectl -n ${namespace} create secret generic ${name} --from-literal=${literals}\``);
    }
    if (status === 403) {
      log.warn({ secret: name, namespace }, 'launch: not allowed to read secrets; the pods will not start if it is missing');
      return;
    }
    throw clusterError(cluster, `read secret ${name} in namespace ${namespace}`, err);
  }
  const present = new Set([...Object.keys(secret.data ?? {}), ...Object.keys(secret.stringData ?? {})]);
  const missing = keys.filter((k) => !present.has(k));
  if (missing.length > 0) {
    throw new PartiError('usage', `secret ${name} in namespace ${namespace} has no key ${missing.join(', ')} (the config's security section reads them in the pods): recreate it, e.g. \`kubectl -n ${namespace} create secret generic ${name} --from-literal=${literals}`);
  }
}

/**
 * What a config needs to run in pods: the dashboard on every address at the port the probes use
 * (the kubelet probes the pod IP), and checkpoints in object storage (a path inside a pod dies
 * with it, and the restarted coordinator would find nothing to resume from).
 */
function checkClusterReady(file: string, config: Config): void {
  const d = config.dashboard;
  if (!d.enabled) throw new PartiError('config', `${file}: dashboard.enabled: must be true in a cluster (the coordinator's probes are its /healthz and /readyz)`);
  if (d.host !== '0.0.0.0' && d.host !== '::') {
    throw new PartiError('config', `${file}: dashboard.host: must be 0.0.0.0 in a cluster (the kubelet probes the pod IP; the token protects it), got ${d.host}`);
  }
  if (d.port !== COORDINATOR_HTTP_PORT) throw new PartiError('config', `${file}: dashboard.port: must be ${COORDINATOR_HTTP_PORT} in a cluster (the port the Service and probes use), got ${d.port}`);
  const url = config.checkpoint.url;
  if (!url?.startsWith('s3://')) {
    throw new PartiError('config', `${file}: checkpoint.url: must be s3://bucket/prefix in a cluster (a pod's own disk is lost with it), got ${url ?? 'none (the run directory)'}`);
  }
  const sec = config.security;
  if (sec.tls) {
    for (const [field, path] of Object.entries({ ca: sec.tls.ca, cert: sec.tls.cert, key: sec.tls.key })) {
      if (!inTlsMount(path)) {
        throw new PartiError('config', `${file}: security.tls.${field}: must be a file in ${TLS_MOUNT_DIR}/ in a cluster (where the TLS Secret is mounted: ca.crt, tls.crt, tls.key), got ${path}`);
      }
    }
  }
  // The pods mount nothing else a token could be read from (the config's own folder is a ConfigMap).
  if (sec.tokenFile !== undefined && !inTlsMount(sec.tokenFile)) {
    throw new PartiError('config', `${file}: security.tokenFile: must be a file in ${TLS_MOUNT_DIR}/ in a cluster (the TLS Secret's key \`token\` is mounted as ${TLS_MOUNT_DIR}/token), got ${sec.tokenFile}`);
  }
  if (!sec.tls && sec.plaintextBind !== 'as-configured') {
    throw new PartiError('config', `${file}: security: set tls (files in ${TLS_MOUNT_DIR}/) or plaintextBind: as-configured in a cluster (without TLS parti binds 127.0.0.1 only, and pods could not reach each other)`);
  }
  if (!config.checkpoint.atEnd) {
    throw new PartiError('config', `${file}: checkpoint.atEnd: must be true in a cluster (a restarted coordinator knows the job finished by its checkpoint at the last step)`);
  }
  const tokenizer = config.training.tokenizerFrom;
  if (!config.runtime.testModel && !tokenizer?.startsWith('s3://')) {
    throw new PartiError(
      'config',
      `${file}: training.tokenizerFrom: must be s3://bucket/prefix in a cluster (the workers read the trained image tokenizer from there: train it with \`parti train --stage tokenizer --publish-tokenizer URL\`), got ${tokenizer ?? 'none'}`,
    );
  }
}

/** Runs `load`, folding a config error that lists several problems into its first one. */
function oneLine<T>(load: () => T): T {
  try {
    return load();
  } catch (err) {
    if (!(err instanceof PartiError) || !err.message.includes('\n')) throw err;
    const lines = err.message.split('\n');
    throw new PartiError(err.code, `${lines[0]} (and ${lines.length - 1} more)`, { cause: err });
  }
}

/** A 404 on create means the namespace is missing (when we could not check it before). */
function notFoundIsNamespace(error: PartiError, cause: unknown, namespace: string): PartiError {
  return apiStatus(cause) === 404 ? new PartiError('usage', `namespace ${namespace} not found (${error.message})`, { cause }) : error;
}

/** True when every field of `want` is in `have` with the same value (arrays: same length, elementwise). */
export function isSubset(want: unknown, have: unknown): boolean {
  if (want === undefined) return true;
  if (Array.isArray(want)) {
    return Array.isArray(have) && have.length === want.length && want.every((w, i) => isSubset(w, have[i]));
  }
  if (want !== null && typeof want === 'object') {
    if (have === null || typeof have !== 'object' || Array.isArray(have)) return false;
    return Object.entries(want).every(([k, v]) => isSubset(v, (have as Record<string, unknown>)[k]));
  }
  return want === have;
}

/** A path inside the TLS Secret's mount, also once `..` is resolved (`/etc/parti/tls/../x` is not). */
function inTlsMount(path: string): boolean {
  return posix.isAbsolute(path) && posix.normalize(path).startsWith(`${TLS_MOUNT_DIR}/`);
}

/**
 * The keys of the TLS Secret that the config reads through its mount: with security.tls, the CA
 * and both roles' certificates and keys; `token` when security.tokenFile is the mounted token.
 */
function tlsSecretKeys(config: Config): string[] {
  const keys: string[] = config.security.tls ? ['ca.crt', 'coordinator.crt', 'coordinator.key', 'worker.crt', 'worker.key'] : [];
  const tokenFile = config.security.tokenFile;
  if (tokenFile !== undefined && posix.normalize(tokenFile) === `${TLS_MOUNT_DIR}/token`) keys.push('token');
  return keys;
}
