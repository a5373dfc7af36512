import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { K8S_DIR, renderKustomize } from './helpers/k8s-kustomize.ts';

/**
 * The images cannot be built here (no Docker engine), so these checks read the Dockerfiles: their
 * pins agree with the lockfile and the manifests, and everything they copy exists.
 */
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const read = (p: string) => readFileSync(path.join(ROOT, p), 'utf8');

function args(dockerfile: string): Record<string, string> {
  return Object.fromEntries([...dockerfile.matchAll(/^ARG (\w+)=(\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
}

test('Dockerfiles: pinned bases, versions that match the lockfile, sources that exist, the user the manifests run as', () => {
  const lock = JSON.parse(read('package-lock.json')) as { packages: Record<string, { version: string }> };
  const tfjsVersion = lock.packages['node_modules/@tensorflow/tfjs']!.version;
  const engines = (JSON.parse(read('package.json')) as { engines: { node: string } }).engines.node;
  const podUsers = renderKustomize(path.join(K8S_DIR, 'overlays/cpu'))
    .filter((o) => o.kind === 'Deployment' || o.kind === 'Job')
    .map((o: any) => o.spec.template.spec.securityContext.runAsUser);

  for (const variant of ['cpu', 'gpu']) {
    const file = `deploy/docker/Dockerfile.${variant}`;
    const text = read(file);
    const a = args(text);
    // Node: an exact version, of the major the package asks for.
    const nodeTag = /^node:(\d+)\.(\d+)\.(\d+)-[a-z]+-slim$/.exec(a.NODE_IMAGE ?? '');
    assert.ok(nodeTag, `${file}: NODE_IMAGE ${a.NODE_IMAGE} is not an exact node version`);
    assert.equal(`>=${nodeTag[1]}`, engines, `${file}: node ${nodeTag[1]} vs engines ${engines}`);
    // Every COPY from the build context exists, and the per-Dockerfile ignore file lets it through.
    const ignore = read(`${file}.dockerignore`);
    for (const m of text.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
      for (const source of m[1]!.split(/\s+/)) {
        assert.ok(existsSync(path.join(ROOT, source)), `${file}: COPY ${source} does not exist`);
        assert.ok(ignore.includes(`!${source}`), `${file}.dockerignore leaves out ${source}`);
      }
    }
    assert.match(text, /^ENTRYPOINT \["node", "\/app\/bin\/parti\.mjs"\]$/m);
    assert.ok(existsSync(path.join(ROOT, 'bin/parti.mjs')));
    assert.match(text, /npm ci --omit=dev/);
    const user = /^USER (\d+):(\d+)$/m.exec(text);
    assert.ok(user, `${file}: no numeric USER`);
    for (const podUser of podUsers) assert.equal(podUser, Number(user[1]));
  }

  const gpu = args(read('deploy/docker/Dockerfile.gpu'));
  // tfjs-node-gpu must be the same version as the tfjs the code is written against.
  assert.equal(gpu.TFJS_NODE_GPU_VERSION, tfjsVersion);
  // tfjs-node-gpu 4.x loads libtensorflow 2.9.1: CUDA 11.2 with cuDNN 8.
  assert.match(gpu.CUDA_IMAGE ?? '', /^nvidia\/cuda:11\.2\.\d+-cudnn8-runtime-ubuntu\d+\.\d+$/);
});

test('the image installs production dependencies only: nothing `parti` imports at run time is a devDependency', () => {
  const pkg = JSON.parse(read('package.json')) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
  const devOnly = new Set(Object.keys(pkg.devDependencies).filter((d) => !(d in pkg.dependencies)));
  // Walk the static and dynamic imports from the command's entry point, as tsx would load them.
  const seen = new Set<string>();
  const offenders: string[] = [];
  const queue = [path.join(ROOT, 'bin/parti.mjs')];
  while (queue.length) {
    const file = queue.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:^|[^\w.])(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)|^import\s+['"]([^'"]+)['"]/gm)) {
      const spec = (m[1] ?? m[2] ?? m[3])!;
      if (spec.startsWith('.')) {
        const target = path.resolve(path.dirname(file), spec);
        if (existsSync(target)) queue.push(target);
        continue;
      }
      if (spec.startsWith('node:')) continue;
      const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
      if (devOnly.has(name)) offenders.push(`${path.relative(ROOT, file)} imports ${name}`);
    }
  }
  assert.ok(seen.size > 20, `walked only ${seen.size} files`);
  assert.ok(seen.has(path.join(ROOT, 'src/cli/launch.ts')));
  assert.deepEqual(offenders, []);
});
