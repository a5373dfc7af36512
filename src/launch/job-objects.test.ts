import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildJobObjects, jobObjectList, jobSelector } from './job-objects.ts';
import { configMapHashSuffix } from './config-map-hash.ts';
import { isSubset } from './job-apply.ts';

const input = { name: 'demo', configText: 'name: demo\n', image: 'img:1', workers: 3, gpusPerWorker: 0 };

test('names, labels and the worker count follow the input; the namespace is left out unless given', () => {
  const objects = buildJobObjects(input);
  assert.deepEqual(
    jobObjectList(objects).map((o) => `${o.kind}/${o.metadata!.name}`),
    [`ConfigMap/demo-config-${configMapHashSuffix({ 'config.yaml': 'name: demo\n' })}`, 'Service/demo-coordinator', 'Service/demo-workers', 'Deployment/demo-coordinator', 'Job/demo-workers'],
  );
  for (const o of jobObjectList(objects)) {
    assert.equal(o.metadata!.namespace, undefined);
    assert.equal(o.metadata!.labels!['app.kubernetes.io/instance'], 'demo');
  }
  assert.equal(jobSelector('demo'), 'app.kubernetes.io/name=parti,app.kubernetes.io/instance=demo');
  assert.equal(objects.workers.spec!.completions, 3);
  assert.equal(objects.workers.spec!.parallelism, 3);
  assert.equal(objects.coordinator.spec!.template.spec!.containers[0]!.env!.find((e) => e.name === 'PARTI_WORKERS')!.value, '3');
  for (const o of jobObjectList(buildJobObjects({ ...input, namespace: 'ns1' }))) assert.equal(o.metadata!.namespace, 'ns1');
});

test('GPUs change only the worker resources and tolerations', () => {
  const cpu = buildJobObjects(input);
  const gpu = buildJobObjects({ ...input, gpusPerWorker: 2 });
  const gpuPod = gpu.workers.spec!.template.spec!;
  assert.equal(gpuPod.containers[0]!.resources!.limits!['nvidia.com/gpu'], '2');
  assert.equal(gpuPod.containers[0]!.resources!.requests!['nvidia.com/gpu'], '2');
  assert.deepEqual(gpuPod.tolerations, [{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }]);
  const strip = (o: ReturnType<typeof buildJobObjects>) => {
    const c = structuredClone(o);
    delete c.workers.spec!.template.spec!.containers[0]!.resources;
    delete c.workers.spec!.template.spec!.tolerations;
    return c;
  };
  assert.deepEqual(strip(cpu), strip(gpu));
});

test('a changed config gets a new ConfigMap name, and every pod mounts it', () => {
  const a = buildJobObjects(input);
  const b = buildJobObjects({ ...input, configText: 'name: demo\n# changed\n' });
  assert.notEqual(a.configMap.metadata!.name, b.configMap.metadata!.name);
  for (const pod of [b.coordinator.spec!.template.spec!, b.workers.spec!.template.spec!]) {
    assert.equal(pod.volumes!.find((v) => v.name === 'config')!.configMap!.name, b.configMap.metadata!.name);
  }
  assert.match(configMapHashSuffix({ 'config.yaml': 'x' }), /^[a-z0-9]{10}$/);
  assert.doesNotMatch(configMapHashSuffix({ 'config.yaml': 'x' }), /[013ae]/);
});

test('isSubset: every wanted field present with the same value; extra fields in what the server has are fine', () => {
  assert.ok(isSubset({ a: 1, b: { c: [1, { d: 2 }] } }, { a: 1, x: 9, b: { c: [1, { d: 2, e: 3 }], y: 0 } }));
  assert.ok(!isSubset({ a: 1 }, { a: 2 }));
  assert.ok(!isSubset({ c: [1, 2] }, { c: [1, 2, 3] }));
  assert.ok(!isSubset({ c: [1] }, { c: 1 }));
  assert.ok(!isSubset({ b: { c: 1 } }, {}));
  assert.ok(isSubset({ b: undefined }, {}));
});
