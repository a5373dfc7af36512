import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

/**
 * A fake Kubernetes API server on 127.0.0.1 that speaks the real REST protocol for the resources
 * `parti launch` uses: namespaced configmaps, secrets, services, pods (and their logs),
 * deployments and jobs, plus namespaces. It stores objects in memory, answers create / get / list
 * (with equality label selectors) / merge-patch / delete with the status codes and Status bodies
 * a real API server sends (201, 200, 404 NotFound, 409 AlreadyExists, 403 Forbidden), and records
 * every request so tests can check what was sent.
 */

/** One request as the server saw it. */
export interface RecordedRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  contentType: string | undefined;
  authorization: string | undefined;
  body: unknown;
}

type Obj = { apiVersion?: string; kind?: string; metadata?: { name?: string; namespace?: string; labels?: Record<string, string>; [k: string]: unknown }; [k: string]: unknown };

interface ResourceType {
  /** URL prefix before /namespaces: /api/v1 or /apis/GROUP/VERSION. */
  prefix: string;
  plural: string;
  kind: string;
  apiVersion: string;
  group: string;
}

const TYPES: ResourceType[] = [
  { prefix: '/api/v1', plural: 'configmaps', kind: 'ConfigMap', apiVersion: 'v1', group: '' },
  { prefix: '/api/v1', plural: 'secrets', kind: 'Secret', apiVersion: 'v1', group: '' },
  { prefix: '/api/v1', plural: 'services', kind: 'Service', apiVersion: 'v1', group: '' },
  { prefix: '/api/v1', plural: 'pods', kind: 'Pod', apiVersion: 'v1', group: '' },
  { prefix: '/apis/apps/v1', plural: 'deployments', kind: 'Deployment', apiVersion: 'apps/v1', group: 'apps' },
  { prefix: '/apis/batch/v1', plural: 'jobs', kind: 'Job', apiVersion: 'batch/v1', group: 'batch' },
];

export class FakeKubernetesApi {
  readonly requests: RecordedRequest[] = [];
  /** Stored objects by `plural/namespace/name`. */
  readonly objects = new Map<string, Obj>();
  readonly namespaces = new Set<string>(['default']);
  /** Pod logs by `namespace/pod`. */
  readonly podLogs = new Map<string, string>();
  /** Verb+resource pairs answered with 403, e.g. `create jobs`, `get secrets`, `get namespaces`. */
  readonly forbidden = new Set<string>();
  /** Accept requests but never answer them (an API server that hangs). */
  stall = false;
  /** The user name in 403 messages. */
  user = 'system:serviceaccount:ci:tester';
  private server: Server | null = null;
  private nextUid = 1;

  /** Starts listening on 127.0.0.1 (a free port). */
  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(err));
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    return this.url;
  }

  get url(): string {
    const address = this.server!.address() as AddressInfo;
    return `http://127.0.0.1:${address.port}`;
  }

  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server!.close(() => resolve()));
    this.server = null;
  }

  /** Writes a kubeconfig pointing at this server (bearer token `fake-token`) and returns its path. */
  writeKubeconfig(namespace = 'default'): string {
    const dir = mkdtempSync(path.join(tmpdir(), 'parti-kubeconfig-'));
    const file = path.join(dir, 'config');
    writeFileSync(
      file,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters:',
        `- name: fake\n  cluster:\n    server: ${this.url}\n    insecure-skip-tls-verify: true`,
        'users:',
        '- name: tester\n  user:\n    token: fake-token',
        'contexts:',
        `- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: ${namespace}`,
        'current-context: fake',
        '',
      ].join('\n'),
    );
    return file;
  }

  /** Stores an object as if created earlier (a Secret, a Pod, …); `plural` as in the URL. */
  put(plural: string, namespace: string, object: Obj): void {
    const type = TYPES.find((t) => t.plural === plural)!;
    this.objects.set(`${plural}/${namespace}/${object.metadata!.name}`, this.withServerFields(type, namespace, structuredClone(object)));
  }

  get(plural: string, namespace: string, name: string): Obj | undefined {
    return this.objects.get(`${plural}/${namespace}/${name}`);
  }

  /** Requests other than the given methods, as `METHOD path` lines (for readable asserts). */
  summary(): string[] {
    return this.requests.map((r) => `${r.method} ${r.path}`);
  }

  private withServerFields(type: ResourceType, namespace: string, object: Obj): Obj {
    object.apiVersion ??= type.apiVersion;
    object.kind ??= type.kind;
    object.metadata = {
      ...object.metadata,
      namespace,
      uid: `uid-${this.nextUid++}`,
      resourceVersion: String(this.nextUid),
      creationTimestamp: '2026-01-01T00:00:00Z',
    };
    return object;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    let body: unknown = undefined;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = text;
      }
    }
    const method = req.method ?? 'GET';
    if (this.stall) {
      this.requests.push({ method, path: url.pathname, query: Object.fromEntries(url.searchParams), contentType: req.headers['content-type'], authorization: req.headers.authorization, body });
      return;
    }
    this.requests.push({
      method,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      contentType: req.headers['content-type'],
      authorization: req.headers.authorization,
      body,
    });
    const send = (code: number, payload: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(payload));
    };
    const status = (code: number, reason: string, message: string, details: Record<string, string> = {}) =>
      send(code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, details, code });

    // /api/v1/namespaces/NS
    const nsMatch = /^\/api\/v1\/namespaces\/([^/]+)$/.exec(url.pathname);
    if (nsMatch && method === 'GET') {
      const ns = nsMatch[1]!;
      if (this.forbidden.has('get namespaces')) {
        return status(403, 'Forbidden', `namespaces "${ns}" is forbidden: User "${this.user}" cannot get resource "namespaces" in API group "" in the namespace "${ns}"`, { name: ns, kind: 'namespaces' });
      }
      if (!this.namespaces.has(ns)) return status(404, 'NotFound', `namespaces "${ns}" not found`, { name: ns, kind: 'namespaces' });
      return send(200, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns }, status: { phase: 'Active' } });
    }

    for (const type of TYPES) {
      const re = new RegExp(`^${type.prefix.replace(/\//g, '\\/')}\\/namespaces\\/([^/]+)\\/${type.plural}(?:\\/([^/]+))?(\\/log)?$`);
      const m = re.exec(url.pathname);
      if (!m) continue;
      const [, ns, name, logSuffix] = m as unknown as [string, string, string | undefined, string | undefined];
      const verb = logSuffix ? 'get' : method === 'GET' ? (name ? 'get' : 'list') : method === 'POST' ? 'create' : method === 'PATCH' ? 'patch' : method === 'PUT' ? 'update' : method === 'DELETE' ? 'delete' : method.toLowerCase();
      const resource = logSuffix ? `${type.plural}/log` : type.plural;
      const groupText = type.group;
      if (this.forbidden.has(`${verb} ${resource}`)) {
        return status(
          403,
          'Forbidden',
          `${type.plural}${groupText ? '.' + groupText : ''}${name ? ` "${name}"` : ''} is forbidden: User "${this.user}" cannot ${verb} resource "${type.plural}" in API group "${groupText}" in the namespace "${ns}"`,
          { name: name ?? '', group: groupText, kind: type.plural },
        );
      }
      const key = (n: string) => `${type.plural}/${ns}/${n}`;
      const notFound = (n: string) => status(404, 'NotFound', `${type.plural}${groupText ? '.' + groupText : ''} "${n}" not found`, { name: n, group: groupText, kind: type.plural });
      if (logSuffix) {
        if (!this.objects.has(key(name!))) return notFound(name!);
        let logText = this.podLogs.get(`${ns}/${name}`) ?? '';
        const tail = url.searchParams.get('tailLines');
        if (tail) logText = logText.split('\n').filter(Boolean).slice(-Number(tail)).map((l) => l + '\n').join('');
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(logText);
        return;
      }
      if (method === 'POST' && !name) {
        if (!this.namespaces.has(ns)) return status(404, 'NotFound', `namespaces "${ns}" not found`, { name: ns, kind: 'namespaces' });
        const object = body as Obj;
        const n = object?.metadata?.name;
        if (!n) return status(422, 'Invalid', `${type.kind} "" is invalid: metadata.name: Required value`);
        if (this.objects.has(key(n))) {
          return status(409, 'AlreadyExists', `${type.plural}${groupText ? '.' + groupText : ''} "${n}" already exists`, { name: n, group: groupText, kind: type.plural });
        }
        const stored = this.withServerFields(type, ns, structuredClone(object));
        this.objects.set(key(n), stored);
        return send(201, stored);
      }
      if (method === 'GET' && name) {
        const object = this.objects.get(key(name));
        return object ? send(200, object) : notFound(name);
      }
      if (method === 'GET' && !name) {
        const selector = parseSelector(url.searchParams.get('labelSelector'));
        const items = [...this.objects.entries()]
          .filter(([k]) => k.startsWith(`${type.plural}/${ns}/`))
          .map(([, v]) => v)
          .filter((o) => Object.entries(selector).every(([lk, lv]) => o.metadata?.labels?.[lk] === lv));
        return send(200, { apiVersion: type.apiVersion, kind: `${type.kind}List`, metadata: { resourceVersion: '1' }, items });
      }
      if (method === 'PATCH' && name) {
        const object = this.objects.get(key(name));
        if (!object) return notFound(name);
        if (req.headers['content-type'] !== 'application/merge-patch+json') {
          return status(415, 'UnsupportedMediaType', `the fake only answers merge patches, got ${req.headers['content-type']}`);
        }
        const patched = mergePatch(object, body) as Obj;
        this.objects.set(key(name), patched);
        return send(200, patched);
      }
      if (method === 'DELETE' && name) {
        const object = this.objects.get(key(name));
        if (!object) return notFound(name);
        this.objects.delete(key(name));
        if (type.plural === 'jobs' && url.searchParams.get('propagationPolicy') !== 'Orphan') {
          // The garbage collector deletes the Job's pods.
          for (const [k, pod] of this.objects) {
            if (k.startsWith(`pods/${ns}/`) && pod.metadata?.labels?.['job-name'] === name) this.objects.delete(k);
          }
        }
        return send(200, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { name, group: groupText, kind: type.plural, uid: object.metadata?.uid } });
      }
      return status(405, 'MethodNotAllowed', `the fake does not answer ${method} ${url.pathname}`);
    }
    return status(404, 'NotFound', `the server could not find the requested resource (${method} ${url.pathname})`);
  }
}

function parseSelector(selector: string | null): Record<string, string> {
  const out: Record<string, string> = {};
  if (!selector) return out;
  for (const part of selector.split(',')) {
    const [k, v] = part.split('=');
    if (k) out[k.trim()] = (v ?? '').trim();
  }
  return out;
}

/** RFC 7386 JSON merge patch. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> = target && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}
