import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { buildJobObjects, jobObjectList } from '../src/launch/job-objects.ts';
import { byKindAndName, K8S_DIR, parseYamlObjects, renderKustomize, writeClusterConfig, writeJobOverlay, type K8sObject } from './helpers/k8s-kustomize.ts';
import { schemaProblems } from './helpers/k8s-schema.ts';
import { EXIT_FINISHED, EXIT_JOB_STOPPED, EXIT_PREEMPTED, RETRY_EXIT_CODES } from '../src/worker/worker-exit-code.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

const overlays = {
  cpu: { dir: path.join(K8S_DIR, 'overlays/cpu'), image: 'registry.example.com/parti:0.1.0-cpu', gpus: 0 },
  gpu: { dir: path.join(K8S_DIR, 'overlays/gpu'), image: 'registry.example.com/parti:0.1.0-gpu', gpus: 1 },
} as const;

function find(objects: K8sObject[], kind: string): any {
  const found = objects.filter((o) => o.kind === kind);
  return found;
}

test('every overlay renders with kubectl kustomize, and every object validates against the Kubernetes schemas', () => {
  for (const dir of [path.join(K8S_DIR, 'base'), overlays.cpu.dir, overlays.gpu.dir]) {
    const objects = renderKustomize(dir);
    assert.ok(objects.length >= 4, `${dir}: ${objects.length} objects`);
    const problems = objects.flatMap(schemaProblems);
    assert.deepEqual(problems, [], `${dir}:\n${problems.join('\n')}`);
  }
});

test('the schema check can fail: a wrong type, a wrong enum and a misspelt field are each caught', () => {
  const [job] = find(renderKustomize(overlays.cpu.dir), 'Job') as any[];
  const wrongType = structuredClone(job);
  wrongType.spec.parallelism = 'two';
  assert.match(schemaProblems(wrongType).join('\n'), /parallelism/);
  const wrongEnum = structuredClone(job);
  wrongEnum.spec.podFailurePolicy.rules[0].action = 'Retry';
  assert.match(schemaProblems(wrongEnum).join('\n'), /action/);
  const misspelt = structuredClone(job);
  misspelt.spec.template.spec.restartPolcy = 'Never';
  assert.deepEqual(schemaProblems(misspelt), ['Job/parti-workers: unknown field .spec.template.spec.restartPolcy']);
});

test('the overlays wire the job together: names, selectors, config, secrets, probes, failure policy, GPUs', () => {
  for (const [variant, overlay] of Object.entries(overlays)) {
    const objects = renderKustomize(overlay.dir);
    const [configMap] = find(objects, 'ConfigMap');
    const services = find(objects, 'Service');
    const [deployment] = find(objects, 'Deployment');
    const [job] = find(objects, 'Job');
    assert.match(configMap.metadata.name, /^parti-config-[a-z0-9]{10}$/);
    // The config is the overlay's file, byte for byte, under the key the pods read.
    assert.equal(configMap.data['config.yaml'], readFileSync(path.join(overlay.dir, 'config.yaml'), 'utf8'));
    for (const pod of [deployment.spec.template, job.spec.template]) {
      const container = pod.spec.containers[0];
      assert.equal(container.image, overlay.image);
      assert.equal(pod.spec.volumes.find((v: any) => v.name === 'config').configMap.name, configMap.metadata.name);
      assert.deepEqual(container.envFrom, [{ secretRef: { name: 'parti-s3' } }]);
      assert.equal(pod.metadata.labels['app.kubernetes.io/instance'], 'parti');
    }
    // Every Service selects pods that exist in the templates.
    for (const service of services) {
      const template = service.metadata.name === 'parti-coordinator' ? deployment.spec.template : job.spec.template;
      for (const [k, v] of Object.entries(service.spec.selector)) assert.equal(template.metadata.labels[k], v, `${service.metadata.name} selector ${k}`);
    }
    assert.deepEqual(deployment.spec.selector.matchLabels, deployment.spec.template.metadata.labels);
    // One coordinator, never two at once; probes on the dashboard's health endpoints.
    assert.equal(deployment.spec.replicas, 1);
    assert.equal(deployment.spec.strategy.type, 'Recreate');
    const coordinator = deployment.spec.template.spec.containers[0];
    assert.equal(coordinator.livenessProbe.httpGet.path, '/healthz');
    assert.equal(coordinator.readinessProbe.httpGet.path, '/readyz');
    assert.equal(coordinator.env.find((e: any) => e.name === 'PARTI_WORKERS').value, String(job.spec.parallelism));
    // Workers: an Indexed Job with stable DNS names through the headless Service.
    assert.equal(job.spec.completionMode, 'Indexed');
    assert.equal(job.spec.completions, job.spec.parallelism);
    const headless = services.find((s: any) => s.spec.clusterIP === 'None');
    assert.equal(job.spec.template.spec.subdomain, headless.metadata.name);
    assert.equal(job.spec.template.spec.restartPolicy, 'Never');
    // The worker dials the coordinator's Service by the name the label gives it.
    const workerEnv = job.spec.template.spec.containers[0].env;
    assert.equal(workerEnv.find((e: any) => e.name === 'PARTI_COORDINATOR').value, '$(PARTI_JOB)-coordinator:7070');
    assert.equal(`${job.spec.template.metadata.labels['app.kubernetes.io/instance']}-coordinator`, deployment.metadata.name);
    // Preemption is not a crash; a config error fails at once.
    const rules = job.spec.podFailurePolicy.rules;
    assert.ok(rules.some((r: any) => r.action === 'Ignore' && r.onPodConditions?.some((c: any) => c.type === 'DisruptionTarget')));
    assert.ok(rules.some((r: any) => r.action === 'FailJob' && r.onExitCodes?.values.includes(2)));
    // A worker that left after SIGTERM (143) or whose coordinator stopped the job early (75) is
    // run again without counting; 0 (the job is done) is never retried.
    const ignored = rules.filter((r: any) => r.action === 'Ignore' && r.onExitCodes).flatMap((r: any) => r.onExitCodes.values);
    assert.deepEqual([...ignored].sort((a, b) => a - b), [...RETRY_EXIT_CODES].sort((a, b) => a - b));
    assert.ok(!ignored.includes(EXIT_FINISHED) && ignored.includes(EXIT_PREEMPTED) && ignored.includes(EXIT_JOB_STOPPED));
    // The API server wants onExitCodes values in ascending order, without repeats, and no 0 with In.
    for (const r of rules.filter((x: any) => x.onExitCodes)) {
      const v: number[] = r.onExitCodes.values;
      assert.ok(v.every((x, i) => i === 0 || x > v[i - 1]!) && !(r.onExitCodes.operator === 'In' && v.includes(0)), `onExitCodes values ${JSON.stringify(v)}`);
    }
    const resources = job.spec.template.spec.containers[0].resources;
    if (variant === 'gpu') {
      assert.equal(resources.limits['nvidia.com/gpu'], '1');
      assert.ok(job.spec.template.spec.tolerations.some((t: any) => t.key === 'nvidia.com/gpu'));
    } else {
      assert.equal(resources.limits['nvidia.com/gpu'], undefined);
    }
  }
});

test('parti launch builds the same objects as the overlays, for their inputs and for a job of its own', () => {
  for (const overlay of Object.values(overlays)) {
    const expected = byKindAndName(renderKustomize(overlay.dir));
    const built = buildJobObjects({
      name: 'parti',
      configText: readFileSync(path.join(overlay.dir, 'config.yaml'), 'utf8'),
      image: overlay.image,
      workers: 2,
      gpusPerWorker: overlay.gpus,
    });
    assert.deepEqual(byKindAndName(jobObjectList(built)), expected);
  }
  // Another name, namespace, image, worker count and config, through a leaf overlay a user would write.
  for (const variant of ['cpu', 'gpu'] as const) {
    // Characters Go's JSON encoder escapes (<, >, &) or keeps (é, 🚀) in the text kustomize hashes.
    const configFile = writeClusterConfig('tiny', [[/^# The job/m, '# <tiny> & friends: é 🚀\n# The job']]);
    const inputs = { variant, name: 'tiny', configFile, image: 'ghcr.io/acme/parti:2.0', workers: 5, namespace: 'ml-team' };
    const expected = byKindAndName(renderKustomize(writeJobOverlay(inputs)));
    const built = buildJobObjects({
      name: 'tiny',
      configText: readFileSync(inputs.configFile, 'utf8'),
      image: inputs.image,
      workers: 5,
      gpusPerWorker: variant === 'gpu' ? 1 : 0,
      namespace: 'ml-team',
    });
    assert.deepEqual(byKindAndName(jobObjectList(built)), expected);
    const [job] = [...expected.values()].filter((o: any) => o.kind === 'Job') as any[];
    assert.equal(job.spec.completions, 5);
    assert.equal(job.metadata.namespace, 'ml-team');
  }
});

test('`parti launch k8s --dry-run` prints, as YAML, what kubectl kustomize renders for the same inputs', async () => {
  const inputs = { variant: 'gpu' as const, name: 'tiny', configFile: writeClusterConfig('tiny'), image: 'ghcr.io/acme/parti@sha256:' + 'ab'.repeat(32), workers: 3, namespace: 'ml-team' };
  const expected = renderKustomize(writeJobOverlay(inputs));
  const { stdout } = await run(
    process.execPath,
    [
      'bin/parti.mjs',
      'launch',
      'k8s',
      '--config',
      inputs.configFile,
      '--image',
      inputs.image,
      '--workers',
      '3',
      '--gpus',
      '1',
      '--namespace',
      'ml-team',
      '--dry-run',
    ],
    { cwd: ROOT, timeout: 60_000, env: { ...process.env, KUBECONFIG: '/nonexistent/kubeconfig' } },
  );
  const printed = parseYamlObjects(stdout);
  assert.equal(printed.length, 5);
  assert.deepEqual(byKindAndName(printed), byKindAndName(expected));
  for (const o of printed) assert.deepEqual(schemaProblems(o), []);
});

test("the pods' command lines parse with the real `parti coordinator` and `parti worker` commands", async () => {
  const { Command } = await import('commander');
  const { register: registerCoordinator } = await import('../src/cli/coordinator.ts');
  const { register: registerWorker } = await import('../src/cli/worker.ts');
  const objects = renderKustomize(overlays.cpu.dir);
  const [deployment] = find(objects, 'Deployment');
  const [job] = find(objects, 'Job');
  // What the kubelet substitutes for $(VAR) references, from the pod's environment.
  const env: Record<string, string> = { PARTI_WORKERS: '2', PARTI_COORDINATOR: 'parti-coordinator:7070', POD_IP: '10.1.2.3' };
  for (const container of [deployment.spec.template.spec.containers[0], job.spec.template.spec.containers[0]]) {
    const args = (container.args as string[]).map((a) => a.replace(/\$\((\w+)\)/g, (_, v: string) => env[v] ?? assert.fail(`unknown $(${v})`)));
    const program = new Command().exitOverride();
    registerCoordinator(program);
    registerWorker(program);
    let parsed: Record<string, unknown> | undefined;
    for (const cmd of program.commands) cmd.exitOverride().action((opts: Record<string, unknown>) => void (parsed = opts));
    await program.parseAsync(args, { from: 'user' });
    assert.ok(parsed, `${container.name}: no command ran for ${args.join(' ')}`);
    if (container.name === 'coordinator') {
      assert.deepEqual(parsed, { config: '/etc/parti/config.yaml', runDir: '/var/lib/parti', workers: 2, host: '0.0.0.0', port: 7070, whenFinished: 'serve' });
    } else {
      assert.deepEqual(parsed, { coordinator: 'parti-coordinator:7070', config: '/etc/parti/config.yaml', runDir: '/var/lib/parti', listen: '0.0.0.0:7071', advertise: '10.1.2.3:7071', metricsHost: '0.0.0.0', metricsPort: 8471 });
    }
  }
});

test('`parti launch k8s --stage tokenizer --dry-run` prints the ConfigMap and a Job that validate, whose command line parses with the real `parti train`', async () => {
  const configFile = writeClusterConfig('tiny');
  const { stdout } = await run(
    process.execPath,
    ['bin/parti.mjs', 'launch', 'k8s', '--config', configFile, '--image', overlays.gpu.image, '--gpus', '1', '--stage', 'tokenizer', '--dry-run'],
    { cwd: ROOT, timeout: 60_000, env: { ...process.env, KUBECONFIG: '/nonexistent/kubeconfig' } },
  );
  const printed = parseYamlObjects(stdout);
  assert.deepEqual(printed.map((o) => `${o.kind}/${o.metadata.name}`), [`ConfigMap/${buildJobObjects({ name: 'tiny', configText: readFileSync(configFile, 'utf8'), image: overlays.gpu.image, workers: 2, gpusPerWorker: 1 }).configMap.metadata!.name}`, 'Job/tiny-tokenizer']);
  for (const o of printed) assert.deepEqual(schemaProblems(o), []);
  const pod = (printed[1] as any).spec.template.spec;
  assert.equal(pod.containers[0].resources.limits['nvidia.com/gpu'], '1');
  assert.deepEqual(pod.tolerations, [{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }]);

  const { Command } = await import('commander');
  const { register: registerTrain } = await import('../src/cli/train.ts');
  const program = new Command().exitOverride();
  registerTrain(program);
  let parsed: Record<string, unknown> | undefined;
  for (const cmd of program.commands) cmd.exitOverride().action((opts: Record<string, unknown>) => void (parsed = opts));
  await program.parseAsync(pod.containers[0].args, { from: 'user' });
  assert.deepEqual(parsed, { config: '/etc/parti/config.yaml', runDir: '/var/lib/parti', stage: 'tokenizer', publishTokenizer: 's3://YOUR-BUCKET/parti-tokenizer' });
});
