import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import {
  ApiException,
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  KubeConfig,
  ServerConfiguration,
  createConfiguration,
  type Middleware,
  type RequestContext,
  type ResponseContext,
} from '@kubernetes/client-node';
import { PartiError } from '../errors.ts';

/** How to reach a cluster. */
export interface ClusterOptions {
  /** A kubeconfig file; default: $KUBECONFIG, then ~/.kube/config, then the in-cluster service account. */
  kubeconfig?: string;
  /** A context of the kubeconfig; default: its current context. */
  context?: string;
  /** Namespace; default: the context's namespace, then `default`. */
  namespace?: string;
  /** Deadline of each API request, in milliseconds (default 30 s). */
  requestTimeoutMs?: number;
}

/** The typed API clients of one cluster, and where they point. */
export interface Cluster {
  core: CoreV1Api;
  apps: AppsV1Api;
  batch: BatchV1Api;
  namespace: string;
  /** The API server's URL, for messages. */
  server: string;
  /** The loaded kubeconfig (for streaming calls such as following logs). */
  kubeConfig: KubeConfig;
}

/** Opens the clients. Fails with a one-line PartiError when there is no usable kubeconfig. */
export function connectCluster(options: ClusterOptions = {}): Cluster {
  const kc = new KubeConfig();
  const file = options.kubeconfig;
  try {
    if (file) {
      if (!existsSync(file)) throw new PartiError('usage', `--kubeconfig: ${file} does not exist`);
      kc.loadFromFile(file);
    } else if (process.env.KUBECONFIG || existsSync(path.join(homedir(), '.kube', 'config')) || process.env.KUBERNETES_SERVICE_HOST) {
      kc.loadFromDefault();
    } else {
      throw new PartiError('usage', 'no kubeconfig: set KUBECONFIG, create ~/.kube/config or pass --kubeconfig FILE');
    }
  } catch (err) {
    if (err instanceof PartiError) throw err;
    const where = file ?? process.env.KUBECONFIG ?? '~/.kube/config';
    throw new PartiError('usage', `${where}: cannot load kubeconfig (${firstLine(err)})`);
  }
  if (options.context) {
    if (!kc.getContextObject(options.context)) throw new PartiError('usage', `--context: no context ${options.context} in the kubeconfig`);
    kc.setCurrentContext(options.context);
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new PartiError('usage', 'kubeconfig: no current context with a cluster (kubectl config use-context NAME)');
  const namespace = options.namespace ?? kc.getContextObject(kc.getCurrentContext())?.namespace ?? 'default';

  const timeoutMs = options.requestTimeoutMs ?? 30_000;
  // Every request gets a deadline: an API server that accepts the connection and never answers
  // must not hang the command.
  const deadline: Middleware = {
    pre: async (request: RequestContext) => {
      request.setSignal(AbortSignal.timeout(timeoutMs));
      return request;
    },
    post: async (response: ResponseContext) => response,
  };
  const configuration = createConfiguration({
    baseServer: new ServerConfiguration(cluster.server, {}),
    authMethods: { default: kc },
    promiseMiddleware: [deadline],
  });
  return {
    core: new CoreV1Api(configuration),
    apps: new AppsV1Api(configuration),
    batch: new BatchV1Api(configuration),
    namespace,
    server: cluster.server,
    kubeConfig: kc,
  };
}

/** The HTTP status of a failed API call, or undefined when the call never got an answer. */
export function apiStatus(err: unknown): number | undefined {
  return err instanceof ApiException ? err.code : undefined;
}

/** The one-line `message` of a Kubernetes Status answer, or of any error. */
export function apiMessage(err: unknown): string {
  if (err instanceof ApiException) {
    let body: unknown = err.body;
    if (typeof body === 'string') {
      try {
        body = JSON.parse(body);
      } catch {
        // not JSON: keep the text
      }
    }
    if (body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string') {
      return firstLine((body as { message: string }).message);
    }
    if (typeof body === 'string' && body.trim()) return firstLine(body);
    return `HTTP ${err.code}`;
  }
  return firstLine(err);
}

/**
 * Turns a failed API call into a one-line PartiError saying what was being done (`doing`, e.g.
 * "create job parti-workers in namespace ml"). 401/403 are refusals; no answer at all is an
 * unreachable cluster.
 */
export function clusterError(cluster: Pick<Cluster, 'server'>, doing: string, err: unknown): PartiError {
  if (err instanceof PartiError) return err;
  const status = apiStatus(err);
  if (status === 401) return new PartiError('refused', `${doing}: unauthorized by ${cluster.server} (check the kubeconfig's credentials)`, { cause: err });
  if (status === 403) return new PartiError('refused', `${doing}: forbidden: ${apiMessage(err)}`, { cause: err });
  if (status !== undefined) return new PartiError('refused', `${doing}: ${apiMessage(err)} (HTTP ${status})`, { cause: err });
  const e = err as { name?: string; code?: string; type?: string };
  if (e?.name === 'AbortError' || e?.name === 'TimeoutError' || e?.type === 'aborted') {
    return new PartiError('deadline', `${doing}: no answer from the Kubernetes API at ${cluster.server} in time`, { cause: err });
  }
  // A socket or TLS failure carries a code (ECONNREFUSED, ENOTFOUND, CERT_HAS_EXPIRED, …);
  // anything else (an auth plugin that failed, a kubeconfig the client refuses) says itself.
  if (e?.code) return new PartiError('refused', `${doing}: cannot reach the Kubernetes API at ${cluster.server} (${e.code})`, { cause: err });
  return new PartiError('refused', `${doing}: ${firstLine(err)}`, { cause: err });
}

function firstLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.split('\n')[0]!.trim();
}
