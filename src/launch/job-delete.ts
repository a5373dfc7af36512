import { apiStatus, clusterError, connectCluster, type ClusterOptions } from './cluster-client.ts';
import { jobObjectNames, jobSelector, tokenizerJobName } from './job-objects.ts';
import { checkJobName, notFound } from './job-status.ts';

/** An object `parti launch delete` removed. */
export interface DeletedObject {
  kind: string;
  name: string;
}

/**
 * Deletes a job's objects: the worker Job first (its pods go with it), then the coordinator, the
 * Services, the tokenizer stage's Job and the job's ConfigMaps. The checkpoints in the bucket stay: launching the same config
 * again resumes from them. Objects already gone are skipped; a job with none left is an error.
 */
export async function deleteJob(job: string, options: ClusterOptions = {}): Promise<{ namespace: string; deleted: DeletedObject[] }> {
  checkJobName(job);
  const cluster = connectCluster(options);
  const namespace = cluster.namespace;
  const names = jobObjectNames(job);
  // Background: the call returns at once and the garbage collector removes the pods.
  const propagationPolicy = 'Background';
  const deleted: DeletedObject[] = [];
  const remove = async (kind: string, name: string, call: () => Promise<unknown>) => {
    try {
      await call();
      deleted.push({ kind, name });
    } catch (err) {
      if (apiStatus(err) === 404) return;
      throw clusterError(cluster, `delete ${kind.toLowerCase()} ${name} in namespace ${namespace}`, err);
    }
  };
  await remove('Job', names.workers, () => cluster.batch.deleteNamespacedJob({ name: names.workers, namespace, propagationPolicy }));
  await remove('Deployment', names.coordinator, () => cluster.apps.deleteNamespacedDeployment({ name: names.coordinator, namespace, propagationPolicy }));
  await remove('Service', names.coordinator, () => cluster.core.deleteNamespacedService({ name: names.coordinator, namespace }));
  await remove('Service', names.workers, () => cluster.core.deleteNamespacedService({ name: names.workers, namespace }));
  const tokenizer = tokenizerJobName(job);
  await remove('Job', tokenizer, () => cluster.batch.deleteNamespacedJob({ name: tokenizer, namespace, propagationPolicy }));
  let configMaps: string[];
  try {
    const list = await cluster.core.listNamespacedConfigMap({ namespace, labelSelector: jobSelector(job) });
    configMaps = list.items.map((c) => c.metadata?.name ?? '').filter((n) => n.startsWith(`${names.configPrefix}-`));
  } catch (err) {
    throw clusterError(cluster, `list the config maps of job ${job} in namespace ${namespace}`, err);
  }
  for (const name of configMaps) await remove('ConfigMap', name, () => cluster.core.deleteNamespacedConfigMap({ name, namespace }));
  if (deleted.length === 0) throw notFound(job, namespace);
  return { namespace, deleted };
}
