import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments, stringify } from 'yaml';

/** The repository's deploy/k8s folder. */
export const K8S_DIR = fileURLToPath(new URL('../../deploy/k8s/', import.meta.url));

/** A rendered Kubernetes object. */
export type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; [k: string]: unknown };

/** Runs `kubectl kustomize DIR` (no API server needed) and returns the objects. */
export function renderKustomize(dir: string): K8sObject[] {
  const out = execFileSync('kubectl', ['kustomize', dir], { encoding: 'utf8', timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] });
  return parseYamlObjects(out);
}

/** Parses a multi-document YAML stream into objects (empty documents dropped). */
export function parseYamlObjects(text: string): K8sObject[] {
  return parseAllDocuments(text)
    .map((doc) => {
      if (doc.errors.length) throw new Error(`invalid YAML: ${doc.errors[0]!.message}`);
      return doc.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null);
}

/** The inputs of one job, as a user would give them to a leaf overlay or to `parti launch k8s`. */
export interface OverlayInputs {
  variant: 'cpu' | 'gpu';
  name: string;
  configFile: string;
  image: string;
  workers: number;
  namespace?: string;
}

/**
 * Writes a leaf overlay for a job the way a user would: a copy of deploy/k8s/overlays/VARIANT
 * with the job's name (namePrefix and instance label), image, worker count, config file and
 * namespace changed. Returns its folder.
 */
export function writeJobOverlay(inputs: OverlayInputs): string {
  const source = path.join(K8S_DIR, 'overlays', inputs.variant);
  const dir = mkdtempSync(path.join(tmpdir(), `parti-overlay-${inputs.variant}-`));
  const k = parse(readFileSync(path.join(source, 'kustomization.yaml'), 'utf8')) as Record<string, any>;
  const rebase = (p: string) => path.relative(dir, path.resolve(source, p));
  k.resources = (k.resources as string[]).map(rebase);
  if (k.components) k.components = (k.components as string[]).map(rebase);
  k.namePrefix = `${inputs.name}-`;
  k.labels[0].pairs['app.kubernetes.io/instance'] = inputs.name;
  const image = splitImage(inputs.image);
  k.images = [{ name: 'parti', newName: image.name, ...(image.tag ? { newTag: image.tag } : {}), ...(image.digest ? { digest: image.digest } : {}) }];
  copyFileSync(inputs.configFile, path.join(dir, 'config.yaml'));
  k.configMapGenerator[0].files = ['config.yaml'];
  const workersPatch = parse(k.patches[0].patch) as { op: string; path: string; value: number }[];
  if (workersPatch[0]?.path !== '/spec/parallelism') throw new Error('overlay: the first patch no longer sets /spec/parallelism');
  workersPatch[0].value = inputs.workers;
  k.patches[0].patch = stringify(workersPatch);
  if (inputs.namespace) k.namespace = inputs.namespace;
  writeFileSync(path.join(dir, 'kustomization.yaml'), stringify(k));
  return dir;
}

/** Splits `registry/name:tag@digest` the way kustomize's image transformer sees it. */
function splitImage(image: string): { name: string; tag?: string; digest?: string } {
  let rest = image;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
  }
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) return { name: rest.slice(0, colon), tag: rest.slice(colon + 1), digest };
  return { name: rest, digest };
}

/** Objects keyed by `Kind/name`, for comparing two renderings whatever their order. */
export function byKindAndName(objects: readonly object[]): Map<string, object> {
  const map = new Map<string, object>();
  for (const o of objects as K8sObject[]) map.set(`${o.kind}/${o.metadata.name}`, JSON.parse(JSON.stringify(o)));
  return map;
}

/**
 * Writes a cluster-ready config for a job called `name` (the cpu overlay's, renamed; `replace`
 * edits the text further) and returns its path.
 */
export function writeClusterConfig(name: string, replace: [string | RegExp, string][] = []): string {
  let text = readFileSync(path.join(K8S_DIR, 'overlays/cpu/config.yaml'), 'utf8').replace(/^name: parti$/m, `name: ${name}`);
  for (const [from, to] of replace) text = text.replace(from, to);
  const file = path.join(mkdtempSync(path.join(tmpdir(), 'parti-config-')), `${name}.yaml`);
  writeFileSync(file, text);
  return file;
}
