import { collectiveSchema } from '../config/collective-schema.ts';
import { collectiveNodeFlags } from '../collective/worker-node-flags.ts';
import type {
  V1ConfigMap,
  V1Container,
  V1Deployment,
  V1EnvVar,
  V1Job,
  V1PodSecurityContext,
  V1ResourceRequirements,
  V1SecurityContext,
  V1Service,
  V1Volume,
  V1VolumeMount,
} from '@kubernetes/client-node';
import { configMapHashSuffix } from './config-map-hash.ts';
// (a module of constants only: the worker's exit codes that the failure policy reads)
import { RETRY_EXIT_CODES } from '../worker/worker-exit-code.ts';

/**
 * The Kubernetes objects of one parti job, built from the same values as deploy/k8s (kustomize):
 * for the same config, image, worker count, GPU count and namespace, `parti launch k8s --dry-run`
 * prints exactly what `kubectl kustomize` renders (test/k8s-manifests.test.ts checks it). Change
 * both together.
 */

/** Ports the processes listen on inside their pods. */
export const COORDINATOR_GRPC_PORT = 7070;
export const COORDINATOR_HTTP_PORT = 8470;
export const WORKER_COLLECTIVE_PORT = 7071;
/** A worker's own Prometheus /metrics (`parti worker --metrics-port`). */
export const WORKER_METRICS_PORT = 8471;

/** Where the job config is mounted in every pod. */
export const CONFIG_MOUNT_DIR = '/etc/parti';
export const CONFIG_KEY = 'config.yaml';
/** Scratch space for a process (an emptyDir; the durable state is in the checkpoint bucket). */
export const RUN_DIR = '/var/lib/parti';

/** Secrets the pods read; `parti launch` checks that they exist before creating anything. */
export const DEFAULT_S3_SECRET = 'parti-s3';
export const DEFAULT_DASHBOARD_SECRET = 'parti-dashboard';
/**
 * The optional Secret with the job's TLS files and token (`parti certs init` makes them): keys
 * ca.crt, coordinator.crt, coordinator.key, worker.crt, worker.key, token. Each pod mounts the CA,
 * its role's certificate and key as tls.crt and tls.key, and the token, at TLS_MOUNT_DIR.
 */
export const DEFAULT_TLS_SECRET = 'parti-tls';
/** Where the TLS Secret is mounted; the config's security section names files in it. */
export const TLS_MOUNT_DIR = '/etc/parti/tls';
/** The key of the dashboard Secret that holds the bearer token. */
export const DASHBOARD_TOKEN_KEY = 'token';

/** Labels: every object of a job carries NAME_LABEL=parti and INSTANCE_LABEL=<job name>. */
export const NAME_LABEL = 'app.kubernetes.io/name';
export const INSTANCE_LABEL = 'app.kubernetes.io/instance';
export const COMPONENT_LABEL = 'app.kubernetes.io/component';

/**
 * A job name: it becomes NAME-workers-INDEX (a pod hostname, at most 63 characters) and
 * NAME-coordinator (a Service name, which must start with a letter).
 */
export const JOB_NAME_PATTERN = /^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$/;

/** What a job is made of. */
export interface JobObjectsInput {
  /** The job's name (the config's `name`): objects are NAME-coordinator, NAME-workers, NAME-config-HASH. */
  name: string;
  /** The config file's text, stored verbatim in the ConfigMap under config.yaml. */
  configText: string;
  /** The container image of the coordinator and the workers. */
  image: string;
  /** Worker pods (the Job's completions and parallelism, and the coordinator's --workers). */
  workers: number;
  /** NVIDIA GPUs per worker pod; 0 for CPU workers (the wasm backend). */
  gpusPerWorker: number;
  /** Namespace written into every object; left out when undefined (kubectl's current namespace). */
  namespace?: string;
  /** Secret with the S3 credentials, given to every pod as environment (AWS_ACCESS_KEY_ID, …). */
  s3Secret?: string;
  /** Secret whose `token` key protects the dashboard. */
  dashboardSecret?: string;
  /** Optional Secret with the TLS files and job token (DEFAULT_TLS_SECRET's keys). */
  tlsSecret?: string;
  /**
   * Node/V8 flags the worker process starts with, before the script (collectiveNodeFlags of the
   * config's collective section; default: those of the default config). They cannot go through
   * NODE_OPTIONS, so the worker container gets a `command` instead of the image's entrypoint.
   */
  workerNodeFlags?: readonly string[];
}

/** The image's entrypoint script (deploy/docker: ENTRYPOINT ["node", "/app/bin/parti.mjs"]). */
export const IMAGE_SCRIPT = '/app/bin/parti.mjs';

/** The five objects of a job, in the order they are applied. */
export interface JobObjects {
  configMap: V1ConfigMap;
  coordinatorService: V1Service;
  workersService: V1Service;
  coordinator: V1Deployment;
  workers: V1Job;
}

/** The names of a job's objects (the ConfigMap's also depends on the config). */
export function jobObjectNames(name: string): { coordinator: string; workers: string; configPrefix: string } {
  return { coordinator: `${name}-coordinator`, workers: `${name}-workers`, configPrefix: `${name}-config` };
}

/** The label selector that finds every object and pod of a job. */
export function jobSelector(name: string): string {
  return `${NAME_LABEL}=parti,${INSTANCE_LABEL}=${name}`;
}

/** Builds the objects of a job. Pure: the same input gives the same objects. */
export function buildJobObjects(input: JobObjectsInput): JobObjects {
  const { name, image, workers, gpusPerWorker, namespace } = input;
  const s3Secret = input.s3Secret ?? DEFAULT_S3_SECRET;
  const dashboardSecret = input.dashboardSecret ?? DEFAULT_DASHBOARD_SECRET;
  const tlsSecret = input.tlsSecret ?? DEFAULT_TLS_SECRET;
  const names = jobObjectNames(name);
  const ns = namespace === undefined ? {} : { namespace };
  const labels = (component: 'coordinator' | 'worker') => ({
    [COMPONENT_LABEL]: component,
    [INSTANCE_LABEL]: name,
    [NAME_LABEL]: 'parti',
  });

  const data = { [CONFIG_KEY]: input.configText };
  const configMapName = `${names.configPrefix}-${configMapHashSuffix(data)}`;
  const configMap: V1ConfigMap = {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: configMapName, ...ns, labels: { [INSTANCE_LABEL]: name, [NAME_LABEL]: 'parti' } },
    data,
  };

  const coordinatorService: V1Service = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: names.coordinator, ...ns, labels: labels('coordinator') },
    spec: {
      type: 'ClusterIP',
      publishNotReadyAddresses: true,
      selector: labels('coordinator'),
      ports: [
        { name: 'grpc', port: COORDINATOR_GRPC_PORT, targetPort: 'grpc', appProtocol: 'kubernetes.io/h2c' },
        { name: 'http', port: COORDINATOR_HTTP_PORT, targetPort: 'http', appProtocol: 'http' },
      ],
    },
  };

  const workersService: V1Service = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: names.workers, ...ns, labels: labels('worker') },
    spec: {
      clusterIP: 'None',
      publishNotReadyAddresses: true,
      selector: labels('worker'),
      ports: [{ name: 'collective', port: WORKER_COLLECTIVE_PORT, targetPort: 'collective' }],
    },
  };

  // Optional: without the Secret the folder is empty; each role gets its own certificate under
  // the same names, so one config (security.tls → TLS_MOUNT_DIR/tls.crt …) serves every pod.
  const tlsVolume = (role: 'coordinator' | 'worker'): V1Volume => ({
    name: 'tls',
    secret: {
      secretName: tlsSecret,
      optional: true,
      defaultMode: 0o440,
      items: [
        { key: 'ca.crt', path: 'ca.crt' },
        { key: `${role}.crt`, path: 'tls.crt' },
        { key: `${role}.key`, path: 'tls.key' },
        { key: 'token', path: 'token' },
      ],
    },
  });
  const volumes = (role: 'coordinator' | 'worker'): V1Volume[] => [
    { name: 'config', configMap: { name: configMapName } },
    { name: 'run', emptyDir: {} },
    { name: 'tmp', emptyDir: {} },
    tlsVolume(role),
  ];
  const volumeMounts: V1VolumeMount[] = [
    { name: 'config', mountPath: CONFIG_MOUNT_DIR, readOnly: true },
    { name: 'run', mountPath: RUN_DIR },
    { name: 'tmp', mountPath: '/tmp' },
    { name: 'tls', mountPath: TLS_MOUNT_DIR, readOnly: true },
  ];
  const podSecurityContext: V1PodSecurityContext = {
    runAsNonRoot: true,
    runAsUser: 1000,
    runAsGroup: 1000,
    fsGroup: 1000,
    seccompProfile: { type: 'RuntimeDefault' },
  };
  const containerSecurityContext: V1SecurityContext = {
    allowPrivilegeEscalation: false,
    readOnlyRootFilesystem: true,
    capabilities: { drop: ['ALL'] },
  };
  const configFile = `${CONFIG_MOUNT_DIR}/${CONFIG_KEY}`;
  const s3Env = [{ secretRef: { name: s3Secret } }];

  const coordinatorContainer: V1Container = {
    name: 'coordinator',
    image,
    args: [
      'coordinator',
      '--config',
      configFile,
      '--run-dir',
      RUN_DIR,
      '--workers',
      '$(PARTI_WORKERS)',
      '--host',
      '0.0.0.0',
      '--port',
      String(COORDINATOR_GRPC_PORT),
      // a finished job stays finished: the Deployment must not restart it (coordinator-process.ts)
      '--when-finished',
      'serve',
    ],
    env: [
      { name: 'PARTI_WORKERS', value: String(workers) },
      { name: 'PARTI_LOG_FORMAT', value: 'json' },
      { name: 'PARTI_DASHBOARD_TOKEN', valueFrom: { secretKeyRef: { name: dashboardSecret, key: DASHBOARD_TOKEN_KEY } } },
    ],
    envFrom: s3Env,
    ports: [
      { name: 'grpc', containerPort: COORDINATOR_GRPC_PORT },
      { name: 'http', containerPort: COORDINATOR_HTTP_PORT },
    ],
    startupProbe: { httpGet: { path: '/healthz', port: 'http' }, periodSeconds: 5, failureThreshold: 120 },
    livenessProbe: {
      httpGet: { path: '/healthz', port: 'http' },
      periodSeconds: 10,
      timeoutSeconds: 5,
      failureThreshold: 3,
    },
    readinessProbe: { httpGet: { path: '/readyz', port: 'http' }, periodSeconds: 5, timeoutSeconds: 3 },
    resources: { requests: { cpu: '1', memory: '2Gi' }, limits: { memory: '4Gi' } },
    securityContext: containerSecurityContext,
    volumeMounts,
  };

  const coordinator: V1Deployment = {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: names.coordinator, ...ns, labels: labels('coordinator') },
    spec: {
      replicas: 1,
      strategy: { type: 'Recreate' },
      selector: { matchLabels: labels('coordinator') },
      template: {
        metadata: { labels: labels('coordinator') },
        spec: {
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          terminationGracePeriodSeconds: 120,
          securityContext: podSecurityContext,
          containers: [coordinatorContainer],
          volumes: volumes('coordinator'),
        },
      },
    },
  };

  const workerEnv: V1EnvVar[] = [
    { name: 'PARTI_JOB', valueFrom: { fieldRef: { fieldPath: `metadata.labels['${INSTANCE_LABEL}']` } } },
    { name: 'PARTI_COORDINATOR', value: `$(PARTI_JOB)-coordinator:${COORDINATOR_GRPC_PORT}` },
    { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
    { name: 'PARTI_LOG_FORMAT', value: 'json' },
  ];
  const gpuResources: V1ResourceRequirements = {
    requests: { cpu: '4', memory: '16Gi', 'nvidia.com/gpu': String(gpusPerWorker) },
    limits: { memory: '32Gi', 'nvidia.com/gpu': String(gpusPerWorker) },
  };
  const cpuResources: V1ResourceRequirements = { requests: { cpu: '2', memory: '6Gi' }, limits: { memory: '8Gi' } };
  const nodeFlags = input.workerNodeFlags ?? collectiveNodeFlags(collectiveSchema.parse({}));
  const workerContainer: V1Container = {
    name: 'worker',
    image,
    ...(nodeFlags.length > 0 ? { command: ['node', ...nodeFlags, IMAGE_SCRIPT] } : {}),
    args: [
      'worker',
      '--coordinator',
      '$(PARTI_COORDINATOR)',
      '--config',
      configFile,
      '--run-dir',
      RUN_DIR,
      '--listen',
      `0.0.0.0:${WORKER_COLLECTIVE_PORT}`,
      '--advertise',
      `$(POD_IP):${WORKER_COLLECTIVE_PORT}`,
      '--metrics-host',
      '0.0.0.0',
      '--metrics-port',
      String(WORKER_METRICS_PORT),
    ],
    env: workerEnv,
    envFrom: s3Env,
    ports: [
      { name: 'collective', containerPort: WORKER_COLLECTIVE_PORT },
      { name: 'metrics', containerPort: WORKER_METRICS_PORT },
    ],
    resources: gpusPerWorker > 0 ? gpuResources : cpuResources,
    securityContext: containerSecurityContext,
    volumeMounts,
  };

  const workersJob: V1Job = {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: { name: names.workers, ...ns, labels: labels('worker') },
    spec: {
      completionMode: 'Indexed',
      completions: workers,
      parallelism: workers,
      backoffLimitPerIndex: 3,
      maxFailedIndexes: 0,
      podFailurePolicy: {
        rules: [
          { action: 'FailJob', onExitCodes: { containerName: 'worker', operator: 'In', values: [2] } },
          { action: 'Ignore', onPodConditions: [{ type: 'DisruptionTarget', status: 'True' }] },
          // (the API server refuses values out of order or repeated, and 0 with In)
          { action: 'Ignore', onExitCodes: { containerName: 'worker', operator: 'In', values: [...new Set(RETRY_EXIT_CODES)].sort((a, b) => a - b) } },
        ],
      },
      template: {
        metadata: { labels: labels('worker') },
        spec: {
          restartPolicy: 'Never',
          subdomain: names.workers,
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          terminationGracePeriodSeconds: 120,
          securityContext: podSecurityContext,
          ...(gpusPerWorker > 0 ? { tolerations: [{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }] } : {}),
          containers: [workerContainer],
          volumes: volumes('worker'),
        },
      },
    },
  };

  return { configMap, coordinatorService, workersService, coordinator, workers: workersJob };
}

/** The objects in the order they are created: what the pods mount and dial comes first. */
export function jobObjectList(objects: JobObjects): (V1ConfigMap | V1Service | V1Deployment | V1Job)[] {
  return [objects.configMap, objects.coordinatorService, objects.workersService, objects.coordinator, objects.workers];
}

/** The name of a job's tokenizer-stage Job (`parti launch k8s --stage tokenizer`). */
export function tokenizerJobName(name: string): string {
  return `${name}-tokenizer`;
}

/** Exit code of a usage or config error (src/cli/main.ts): retrying cannot help. */
const EXIT_USAGE = 2;

/**
 * The image tokenizer stage of a job as one Kubernetes Job of one pod: `parti train --stage
 * tokenizer` with the job's config, then `--publish-tokenizer` to `publishTo` (the config's
 * training.tokenizerFrom), where the Parti workers read it. The pod is the worker pod's (image, S3
 * environment, resources and GPUs, security, config and scratch volumes), so the two stay alike.
 * Its disk is scratch: a pod that fails trains the stage again from the start, at most
 * `backoffLimit` more times; a usage or config error (exit 2) fails the Job at once.
 */
export function buildTokenizerJob(input: JobObjectsInput, publishTo: string): { configMap: V1ConfigMap; tokenizer: V1Job } {
  const { configMap, workers } = buildJobObjects(input);
  const pod = workers.spec!.template.spec!;
  const worker = pod.containers[0]!;
  const labels = { [COMPONENT_LABEL]: 'tokenizer', [INSTANCE_LABEL]: input.name, [NAME_LABEL]: 'parti' };
  const container: V1Container = {
    name: 'tokenizer',
    image: input.image,
    args: ['train', '--config', `${CONFIG_MOUNT_DIR}/${CONFIG_KEY}`, '--run-dir', RUN_DIR, '--stage', 'tokenizer', '--publish-tokenizer', publishTo],
    env: [{ name: 'PARTI_LOG_FORMAT', value: 'json' }],
    envFrom: worker.envFrom,
    resources: worker.resources,
    securityContext: worker.securityContext,
    // (no TLS: the stage runs in one process and dials only the bucket)
    volumeMounts: worker.volumeMounts!.filter((m) => m.name !== 'tls'),
  };
  const tokenizer: V1Job = {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: { name: tokenizerJobName(input.name), ...(input.namespace === undefined ? {} : { namespace: input.namespace }), labels },
    spec: {
      completions: 1,
      parallelism: 1,
      backoffLimit: 2,
      podFailurePolicy: {
        rules: [
          { action: 'FailJob', onExitCodes: { containerName: 'tokenizer', operator: 'In', values: [EXIT_USAGE] } },
          { action: 'Ignore', onPodConditions: [{ type: 'DisruptionTarget', status: 'True' }] },
        ],
      },
      template: {
        // (a copy: one object twice would print as a YAML alias)
        metadata: { labels: { ...labels } },
        spec: {
          restartPolicy: 'Never',
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          terminationGracePeriodSeconds: 30,
          securityContext: pod.securityContext,
          ...(pod.tolerations ? { tolerations: pod.tolerations } : {}),
          containers: [container],
          volumes: pod.volumes!.filter((v) => v.name !== 'tls'),
        },
      },
    },
  };
  return { configMap, tokenizer };
}
