import type { Command } from 'commander';
import { stringify } from 'yaml';
import { usageError } from '../errors.ts';
import type { ClusterOptions } from '../launch/cluster-client.ts';
import { applyJob, applyTokenizerJob, prepareJob, prepareTokenizerJob } from '../launch/job-apply.ts';
import { deleteJob } from '../launch/job-delete.ts';
import { COORDINATOR_HTTP_PORT, jobObjectList, jobObjectNames, tokenizerJobName } from '../launch/job-objects.ts';
import { formatJobStatus, jobLogs, jobStatus } from '../launch/job-status.ts';

/**
 * `parti launch k8s|status|logs|delete`: runs a job on Kubernetes with the same objects as
 * deploy/k8s, and watches and removes it.
 */
export function register(program: Command): void {
  const launch = program.command('launch').description('Run a job on Kubernetes, watch it, delete it.');

  const clusterFlags = (cmd: Command) =>
    cmd
      .option('--namespace <ns>', "namespace (default: the kubeconfig context's, then default)")
      .option('--kubeconfig <file>', 'kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster)')
      .option('--context <name>', 'kubeconfig context (default: the current one)');
  const clusterOptions = (opts: { namespace?: string; kubeconfig?: string; context?: string }): ClusterOptions => ({
    namespace: opts.namespace,
    kubeconfig: opts.kubeconfig,
    context: opts.context,
  });

  clusterFlags(
    launch
      .command('k8s')
      .description('Create the job (config, coordinator, workers) in a cluster; --dry-run prints the objects as YAML.')
      .requiredOption('--config <file>', 'job config (YAML); its name names the job')
      .requiredOption('--image <image>', 'container image (deploy/docker)')
      .option('--workers <n>', "worker pods (default: the config's runtime.workers)")
      .option('--gpus <n>', 'NVIDIA GPUs per worker pod; 0 = CPU workers', '0')
      .option('--s3-secret <name>', 'Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, … for the checkpoint bucket', 'parti-s3')
      .option('--dashboard-secret <name>', 'Secret whose key `token` protects the dashboard', 'parti-dashboard')
      .option('--tls-secret <name>', 'optional Secret with ca.crt, coordinator.crt/key, worker.crt/key, token (mutual TLS; mounted at /etc/parti/tls)', 'parti-tls')
      .option('--stage <stage>', "parti: the job (coordinator and workers); tokenizer: one pod that trains the image tokenizer and publishes it to the config's training.tokenizerFrom, to run first", 'parti')
      .option('--dry-run', 'print the objects as YAML and touch no cluster'),
  ).action(
    async (opts: {
      config: string;
      image: string;
      workers?: string;
      gpus: string;
      s3Secret: string;
      dashboardSecret: string;
      tlsSecret: string;
      stage: string;
      dryRun?: boolean;
      namespace?: string;
      kubeconfig?: string;
      context?: string;
    }) => {
      const options = {
        configFile: opts.config,
        image: opts.image,
        workers: opts.workers === undefined ? undefined : intFlag('--workers', opts.workers),
        gpusPerWorker: intFlag('--gpus', opts.gpus),
        s3Secret: opts.s3Secret,
        dashboardSecret: opts.dashboardSecret,
        tlsSecret: opts.tlsSecret,
        ...clusterOptions(opts),
      };
      if (opts.stage !== 'parti' && opts.stage !== 'tokenizer') throw usageError('--stage', `parti or tokenizer, got ${opts.stage}`);
      if (opts.stage === 'tokenizer') {
        if (opts.dryRun) {
          const { configMap, tokenizer } = prepareTokenizerJob(options).objects;
          process.stdout.write([configMap, tokenizer].map((o) => stringify(o, { blockQuote: 'literal', lineWidth: 0 })).join('---\n'));
          return;
        }
        const { namespace, applied, publishTo } = await applyTokenizerJob(options);
        for (const a of applied) process.stdout.write(`${kindPath(a.kind)}/${a.name} ${a.action}\n`);
        const name = applied.find((a) => a.kind === 'Job')!.name.replace(/-tokenizer$/, '');
        const ns = namespace === 'default' ? '' : ` --namespace ${namespace}`;
        process.stdout.write(
          `watch it:  parti launch logs --job ${name} --component tokenizer --follow${ns}\n` +
            `then, once job ${tokenizerJobName(name)} has succeeded (it publishes to ${publishTo}): parti launch k8s --config ${opts.config} --image ${opts.image}${ns}\n`,
        );
        return;
      }
      if (opts.dryRun) {
        const { objects } = prepareJob(options);
        process.stdout.write(jobObjectList(objects).map((o) => stringify(o, { blockQuote: 'literal', lineWidth: 0 })).join('---\n'));
        return;
      }
      const { namespace, applied } = await applyJob(options);
      for (const a of applied) process.stdout.write(`${kindPath(a.kind)}/${a.name} ${a.action}\n`);
      const name = applied.find((a) => a.kind === 'Deployment')!.name.replace(/-coordinator$/, '');
      const ns = namespace === 'default' ? '' : ` --namespace ${namespace}`;
      process.stdout.write(
        `watch it:  parti launch status --job ${name}${ns}\n` +
          `dashboard: kubectl -n ${namespace} port-forward service/${jobObjectNames(name).coordinator} ${COORDINATOR_HTTP_PORT}\n`,
      );
    },
  );

  clusterFlags(
    launch
      .command('status')
      .description("Show a job's coordinator, workers and pods.")
      .requiredOption('--job <name>', "the job's name (its config's name)")
      .option('--json', 'print the status as JSON'),
  ).action(async (opts: { job: string; json?: boolean; namespace?: string; kubeconfig?: string; context?: string }) => {
    const status = await jobStatus(opts.job, clusterOptions(opts));
    process.stdout.write(opts.json ? JSON.stringify(status, null, 2) + '\n' : formatJobStatus(status) + '\n');
  });

  clusterFlags(
    launch
      .command('logs')
      .description("Print the logs of a job's pods.")
      .requiredOption('--job <name>', "the job's name (its config's name)")
      .option('--component <component>', 'coordinator, worker or tokenizer')
      .option('--index <i>', 'only the worker with this index')
      .option('--tail <n>', 'the last N lines of each pod')
      .option('--previous', "the previous (crashed) container's logs")
      .option('--follow', 'keep streaming until the pods end'),
  ).action(
    async (opts: {
      job: string;
      component?: string;
      index?: string;
      tail?: string;
      previous?: boolean;
      follow?: boolean;
      namespace?: string;
      kubeconfig?: string;
      context?: string;
    }) => {
      if (opts.component !== undefined && opts.component !== 'coordinator' && opts.component !== 'worker' && opts.component !== 'tokenizer') {
        throw usageError('--component', `coordinator, worker or tokenizer, got ${opts.component}`);
      }
      await jobLogs(
        opts.job,
        {
          ...clusterOptions(opts),
          component: opts.component as 'coordinator' | 'worker' | 'tokenizer' | undefined,
          index: opts.index === undefined ? undefined : intFlag('--index', opts.index),
          tail: opts.tail === undefined ? undefined : intFlag('--tail', opts.tail),
          previous: opts.previous,
          follow: opts.follow,
        },
        (text) => process.stdout.write(text),
      );
    },
  );

  clusterFlags(
    launch
      .command('delete')
      .description("Delete a job's objects (its checkpoints in the bucket stay).")
      .requiredOption('--job <name>', "the job's name (its config's name)"),
  ).action(async (opts: { job: string; namespace?: string; kubeconfig?: string; context?: string }) => {
    const { deleted } = await deleteJob(opts.job, clusterOptions(opts));
    for (const d of deleted) process.stdout.write(`${kindPath(d.kind)}/${d.name} deleted\n`);
  });
}

function intFlag(flag: string, text: string): number {
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) throw usageError(flag, `must be an integer >= 0, got ${text}`);
  return Number(text);
}

/** kubectl's way of naming an object's type: configmap, service, deployment.apps, job.batch. */
function kindPath(kind: string): string {
  return { ConfigMap: 'configmap', Service: 'service', Deployment: 'deployment.apps', Job: 'job.batch' }[kind] ?? kind.toLowerCase();
}
