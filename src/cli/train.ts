import { collectiveNodeFlags } from '../collective/worker-node-flags.ts';
import type { Command } from 'commander';
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { PartiError, usageError } from '../errors.ts';
import { parseResume } from './coordinator.ts';
import { port } from './worker.ts';
import type { StageName } from '../worker/single-process-trainer.ts';
import { EXIT_FINISHED, RETRY_EXIT_CODES } from '../worker/worker-exit-code.ts';

/**
 * tfjs, the models and the trainers load when `parti train` runs, not whenever any `parti`
 * command starts (every command imports this module).
 */
async function heavy() {
  const [backend, parti, state, vit, partiModel, job, trainer, shards, store, ckpt, optimizer, protocol, load, published] = await Promise.all([
    import('../model/backend.ts'),
    import('../model/parti-training.ts'),
    import('../model/training-state.ts'),
    import('../model/vit-vqgan.ts'),
    import('../worker/parti-model.ts'),
    import('../coordinator/job.ts'),
    import('../worker/single-process-trainer.ts'),
    import('../worker/checkpoint-shards.ts'),
    import('../storage/open-store.ts'),
    import('../storage/checkpoint-load.ts'),
    import('../model/optimizer.ts'),
    import('../coordinator/protocol.ts'),
    import('../config/load.ts'),
    import('../storage/published-state.ts'),
  ]);
  return {
    saveTrainingState: state.saveTrainingState,
    CheckpointShards: shards.CheckpointShards,
    openStore: store.openStore,
    loadCheckpoint: ckpt.loadCheckpoint,
    createOptimizer: optimizer.createOptimizer,
    checkpointUrl: protocol.checkpointUrl,
    configHash: load.configHash,
    initBackend: backend.initBackend,
    PartiTrainable: parti.PartiTrainable,
    loadTrainingState: state.loadTrainingState,
    VitVqgan: vit.VitVqgan,
    tokenizerDir: partiModel.tokenizerDir,
    prepareTokenizer: partiModel.prepareTokenizer,
    publishStateDir: published.publishStateDir,
    jobStage: job.jobStage,
    trainPipeline: trainer.trainPipeline,
    writeSamplePng: trainer.writeSamplePng,
  };
}

const BIN = fileURLToPath(new URL('../../bin/parti.mjs', import.meta.url));

/** A worker that dies is started again after this long, as Kubernetes would (a crash loop backs off). */
const RESTART_DELAY_MS = 1000;
/** Restarts of the workers of one run before the launcher gives up. */
const MAX_RESTARTS = 20;

interface TrainFlags {
  config: string;
  runDir: string;
  workers?: string;
  steps?: string;
  stage?: string;
  singleProcess?: boolean;
  resume?: 'latest' | number;
  publishTokenizer?: string;
  workerMetricsPort?: number;
}

function intFlag(flag: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min) throw usageError(flag, `must be an integer >= ${min}, got ${v}`);
  return n;
}

function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s` : `${Math.round(s)}s`;
}

/** Calls `onLine` with each line a child writes to stdout. */
function lines(child: ChildProcess, onLine: (line: string) => void): void {
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
}

/**
 * The local launcher: the Parti stage on a coordinator and `workers` worker processes on
 * 127.0.0.1, started as child processes. A worker that dies is restarted; Ctrl-C checkpoints and
 * stops the job cleanly (a second Ctrl-C kills it). Returns the final parameters' file, if any.
 */
async function runLocalJob(
  config: Config,
  runDir: string,
  workers: number,
  say: (line: string) => void,
  o: { resume?: 'latest' | number; workerMetricsPort?: number } = {},
): Promise<string | null> {
  const { resume, workerMetricsPort } = o;
  // (not heavy(): a test-model job's launcher needs no tfjs, and it starts faster without it)
  const { jobStage } = await import('../coordinator/job.ts');
  // Children read the effective config (with --steps applied) so that all of them hash alike.
  mkdirSync(runDir, { recursive: true });
  const configFile = join(runDir, 'parti-job.json');
  writeFileSync(configFile, JSON.stringify(config, null, 1));
  const logDir = join(runDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const children = new Set<ChildProcess>();
  const start = (args: string[], logName: string, nodeFlags: readonly string[] = []): ChildProcess => {
    // Own process group: a Ctrl-C in the terminal reaches only the launcher, which asks the
    // coordinator to checkpoint and stop; the coordinator then stops the workers.
    const child = spawn(process.execPath, [...nodeFlags, BIN, ...args], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PARTI_LOG_FORMAT: 'json' },
    });
    child.stderr!.pipe(createWriteStream(join(logDir, `${logName}.log`), { flags: 'a' }));
    children.add(child);
    child.on('exit', () => children.delete(child));
    return child;
  };
  const coordinator = start(['coordinator', '--config', configFile, '--run-dir', runDir, '--port', '0', '--workers', String(workers), '--stop-with-parent', ...(resume !== undefined ? ['--resume', String(resume)] : [])], 'coordinator');
  let stopping = 0;
  const onSigint = () => {
    stopping++;
    if (stopping === 1) {
      say('stopping: checkpoint at the next step boundary, then stop (Ctrl-C again to kill)');
      coordinator.kill('SIGINT');
    } else {
      for (const c of children) c.kill('SIGKILL');
    }
  };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  const { steps, batch } = jobStage(config);
  const started = Date.now();
  let firstStepAt = 0;
  let firstStep = 0;
  let address: string | null = null;
  let done = false;
  let restarts = 0;
  // Why the launcher stopped the job itself (a worker that cannot run): `parti train` then fails
  // with it instead of reporting the stopped job as trained.
  let failure: PartiError | null = null;
  const paramsFiles = Array.from({ length: workers }, (_, i) => join(runDir, `parti-final-w${i}.bin`));
  const metrics = join(runDir, 'metrics.jsonl');
  const startWorker = (slot: number, generation: number): void => {
    const logName = `worker-${slot}${generation ? `-${generation}` : ''}`;
    // Worker slot i serves /metrics on the base port + i (a restarted worker takes its slot's port again).
    const metricsFlags = workerMetricsPort === undefined ? [] : ['--metrics-port', String(workerMetricsPort === 0 ? 0 : workerMetricsPort + slot)];
    const w = start(['worker', '--coordinator', address!, '--config', configFile, '--run-dir', runDir, '--params-out', paramsFiles[slot]!, '--stop-with-parent', ...metricsFlags], logName, collectiveNodeFlags(config.collective));
    lines(w, (line) => {
      const m = /^worker metrics on (\S+)/.exec(line);
      if (m) say(`worker ${slot} metrics: ${m[1]}`);
    });
    // The worker's own one-line error (`parti: ...`), to repeat when it makes the job stop.
    let workerError = '';
    w.stderr!.on('data', (d: Buffer) => {
      const m = /^parti: (.*)$/m.exec(d.toString());
      if (m) workerError = m[1]!;
    });
    // The rules of the worker Job's podFailurePolicy (deploy/k8s): 0 = the job is done; 143 and
    // 75 = it left or was stopped before the end, restarted without counting as a crash; 2 = a
    // bad config or flag, which a restart cannot fix; anything else is a crash, restarted with a limit.
    w.on('exit', (code, signal) => {
      if (done || stopping > 0 || coordinator.exitCode !== null) return;
      if (code === EXIT_FINISHED) return;
      const how = signal ?? `exit ${code}`;
      const logFile = join(logDir, `${logName}.log`);
      if (code === 2) {
        say(`worker ${slot} failed with a config or usage error (exit 2; see ${logFile}); stopping the job`);
        failure ??= new PartiError('config', `worker ${slot} failed${workerError ? `: ${workerError}` : ' with a config or usage error'} (see ${logFile}); the job was stopped`);
        coordinator.kill('SIGINT');
        return;
      }
      const disruption = code !== null && RETRY_EXIT_CODES.includes(code);
      if (!disruption && ++restarts > MAX_RESTARTS) {
        say(`worker ${slot} died (${how}); ${MAX_RESTARTS} restarts already, giving up`);
        failure ??= new PartiError('internal', `worker ${slot} died (${how}${workerError ? `: ${workerError}` : ''}) after ${MAX_RESTARTS} restarts (see ${logFile}); the job was stopped`);
        coordinator.kill('SIGINT');
        return;
      }
      say(disruption ? `worker ${slot} left before the end (${how}); starting it again (as Kubernetes would)` : `worker ${slot} died (${how}); restarting it (as Kubernetes would)`);
      setTimeout(() => !done && stopping === 0 && coordinator.exitCode === null && startWorker(slot, generation + 1), RESTART_DELAY_MS);
    });
  };
  // The coordinator's own one-line error (a bad --resume step, say), to repeat when it fails.
  let coordinatorError = '';
  coordinator.stderr!.on('data', (d: Buffer) => {
    const m = /^parti: (.*)$/m.exec(d.toString());
    if (m) coordinatorError = m[1]!;
  });
  const exited = new Promise<number>((resolveExit) => coordinator.on('exit', (code, signal) => resolveExit(code ?? (signal ? 1 : 0))));
  lines(coordinator, (line) => {
    const listening = /^coordinator listening on (\S+)/.exec(line);
    if (listening && !address) {
      address = listening[1]!;
      say(`coordinator on ${address}; starting ${workers} worker${workers > 1 ? 's' : ''}`);
      for (let i = 0; i < workers; i++) startWorker(i, 0);
      return;
    }
    const dash = /^dashboard: (\S+)/.exec(line);
    if (dash) {
      say(`dashboard: ${dash[1]}`);
      return;
    }
    if (!line.startsWith('{')) return;
    const r = JSON.parse(line) as { step?: number; loss?: number; worldSize?: number; skipped?: boolean; stepMs?: number; done?: boolean; reason?: string };
    if (r.done) {
      done = true;
      say(`parti: ${r.reason} at step ${(r as { step: number }).step}`);
      return;
    }
    if (r.step === undefined) return;
    writeFileSync(metrics, `${JSON.stringify({ stage: 'parti', ...r })}\n`, { flag: 'a' });
    const n = r.step + 1;
    if (!firstStepAt) {
      firstStepAt = Date.now();
      firstStep = n;
    }
    if (n % config.training.logEvery === 0 || n === steps || n === firstStep) {
      const rate = (Date.now() - firstStepAt) / 1000 / Math.max(1, n - firstStep);
      const eta = n > firstStep ? rate * (steps - n) : Number.NaN;
      const samplesPerSec = (batch / (r.stepMs ?? 1)) * 1000;
      say(
        `parti step ${String(n).padStart(String(steps).length)}/${steps}  loss ${r.loss!.toFixed(4)}  ${r.worldSize} worker${r.worldSize === 1 ? '' : 's'}  ${samplesPerSec.toFixed(1)} samples/s  ETA ${formatDuration(eta)}${r.skipped ? '  (non-finite gradient: skipped)' : ''}`,
      );
    }
  });
  try {
    const code = await exited;
    // Workers told to stop by the coordinator end by themselves (writing their final parameters).
    // One it could not tell (still joining when it ended, it would retry for runtime.reconnectMs)
    // is asked to leave after a grace period; with no coordinator to reach it exits at once.
    const waitForChildren = async (ms: number) => {
      const until = Date.now() + ms;
      while (children.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    };
    await waitForChildren(3000);
    for (const c of children) c.kill('SIGTERM');
    await waitForChildren(27_000);
    for (const c of children) c.kill('SIGKILL');
    if (failure) throw failure;
    if (code !== 0) throw new PartiError('internal', `the coordinator exited with code ${code}${coordinatorError ? `: ${coordinatorError}` : ''} (see ${join(logDir, 'coordinator.log')})`);
    say(`parti: ${formatDuration((Date.now() - started) / 1000)} with ${workers} workers; logs in ${logDir}`);
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
    for (const c of children) c.kill('SIGKILL');
  }
  if (stopping > 0) return null;
  return paramsFiles.find((f) => existsSync(f)) ?? null;
}

/**
 * Writes the trained Parti stage where `parti generate`, `parti eval` and the single-process
 * trainer read it (`<run dir>/parti/`, and config.json): from the latest committed checkpoint
 * (parameters and the whole optimizer state), else from the final parameters a worker wrote.
 * Returns the parameters.
 */
async function savePartiStage(config: Config, runDir: string, paramsFile: string | null): Promise<Float32Array | null> {
  const h = await heavy();
  const hash = h.configHash(config);
  const layout = new h.PartiTrainable(config.model).layout;
  const fresh = h.createOptimizer(config.training.parti.optimizer, layout).exportState();
  const store = h.openStore(h.checkpointUrl(config, runDir));
  const latest = await h.loadCheckpoint(store, 'latest', { configHash: hash, select: () => false });
  let params: Float32Array;
  let optimizer = fresh;
  let step = config.training.parti.steps;
  if (latest) {
    step = latest.manifest.step;
    const state = await new h.CheckpointShards(store, hash).load(step, 0, layout.size);
    params = state.params;
    const names = Object.keys(fresh.slots);
    const slots: Record<string, Float32Array> = {};
    names.forEach((name, k) => (slots[name] = state.optimizer.state.slice(k * layout.size, (k + 1) * layout.size)));
    optimizer = { ...fresh, updates: state.optimizer.updates, slots };
  } else if (paramsFile) {
    const b = readFileSync(paramsFile);
    params = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  } else {
    return null;
  }
  if (params.length !== layout.size) throw new PartiError('checkpoint', `the trained parameters have ${params.length} values, the model ${layout.size}`);
  await h.saveTrainingState(join(runDir, 'parti'), { stage: 'parti', step, configHash: hash, layout: layout.toJSON(), params, optimizer, extra: {} });
  writeFileSync(join(runDir, 'config.json'), JSON.stringify({ configHash: hash, config }, null, 2));
  return params;
}

async function writeSample(config: Config, runDir: string, params: Float32Array): Promise<string> {
  const { initBackend, VitVqgan, loadTrainingState, tokenizerDir, PartiTrainable, writeSamplePng } = await heavy();
  await initBackend(config.runtime.backend);
  const vq = new VitVqgan(config.model.tokenizer);
  const state = await loadTrainingState(tokenizerDir(config, runDir), vq.layout);
  if (!state) throw new PartiError('checkpoint', `${tokenizerDir(config, runDir)}: no trained tokenizer`);
  const trainable = new PartiTrainable(config.model);
  return writeSamplePng(config, trainable, params, vq, state.params, join(runDir, 'sample.png'));
}

/**
 * `parti train --config FILE --run-dir DIR [--workers N] [--steps K] [--stage tokenizer|parti|upsampler]`:
 * the local launcher and the embedded default. The image tokenizer trains in this process
 * (unless already trained); Parti trains data-parallel on a coordinator and N worker processes on
 * 127.0.0.1; the run ends with a sample image, then the upsampler stage when training.upsampler is
 * set (in this process). `--single-process` trains every stage here.
 */
export function register(program: Command): void {
  program
    .command('train')
    .description('Train locally: the image tokenizer, then Parti on a coordinator and N worker processes on 127.0.0.1; ends with a sample image.')
    .requiredOption('--config <file>', 'YAML config file')
    .requiredOption('--run-dir <dir>', 'directory for checkpoints, logs, metrics.jsonl and sample.png')
    .option('--workers <n>', 'worker processes of the Parti stage (default runtime.workers)')
    .option('--steps <k>', "override each stage's configured steps")
    .option('--stage <stage>', 'only this stage: tokenizer, parti or upsampler')
    .option('--resume <latest|step>', 'Parti stage: resume from the newest committed checkpoint (default) or exactly this committed step', parseResume)
    .option('--single-process', 'train every stage in this process (no coordinator, no workers)')
    .option('--worker-metrics-port <port>', 'Parti stage: worker i serves Prometheus /metrics and /healthz on 127.0.0.1:PORT+i, 0 = any free port each (printed)', port('--worker-metrics-port'))
    .option('--publish-tokenizer <url>', 'with --stage tokenizer: upload the trained tokenizer to s3://bucket/prefix or file:///dir (with SHA256SUMS) for training.tokenizerFrom')
    .action(async (opts: TrainFlags) => {
      const steps = intFlag('--steps', opts.steps, 0);
      const workersFlag = intFlag('--workers', opts.workers, 1);
      if (opts.stage !== undefined && opts.stage !== 'tokenizer' && opts.stage !== 'parti' && opts.stage !== 'upsampler') {
        throw usageError('--stage', `must be tokenizer, parti or upsampler, got ${opts.stage}`);
      }
      if (opts.publishTokenizer !== undefined) {
        if (opts.stage !== 'tokenizer') throw usageError('--publish-tokenizer', 'needs --stage tokenizer (it publishes the trained image tokenizer)');
        if (!/^(s3|file):\/\/./.test(opts.publishTokenizer)) throw usageError('--publish-tokenizer', `must be s3://bucket/prefix or file:///dir, got ${JSON.stringify(opts.publishTokenizer)}`);
      }
      if (opts.workerMetricsPort !== undefined && (opts.singleProcess || (opts.stage !== undefined && opts.stage !== 'parti'))) {
        throw usageError('--worker-metrics-port', `the workers serve it, and ${opts.singleProcess ? '--single-process' : `--stage ${opts.stage}`} starts none`);
      }
      const config = loadConfig(opts.config);
      const workers = workersFlag ?? config.runtime.workers;
      const metricsPort = opts.workerMetricsPort;
      if (metricsPort !== undefined && metricsPort > 0 && metricsPort + workers - 1 > 65535) {
        throw usageError('--worker-metrics-port', `${metricsPort} + ${workers} workers goes past port 65535`);
      }
      const runDir = resolve(opts.runDir);
      const stage = opts.stage as StageName | undefined;
      // The upsampler trains in this process too (it needs neither the tokenizer nor Parti).
      const say = (line: string) => process.stderr.write(`${line}\n`);
      const publishTokenizer = async () => {
        if (!opts.publishTokenizer) return;
        const bytes = await (await heavy()).publishStateDir(join(runDir, 'tokenizer'), opts.publishTokenizer);
        say(`tokenizer: published to ${opts.publishTokenizer} (${(bytes / 2 ** 20).toFixed(1)} MiB, with SHA256SUMS); set training.tokenizerFrom: ${opts.publishTokenizer}`);
      };
      if (opts.singleProcess || stage === 'upsampler') {
        await (await heavy()).trainPipeline({ config, runDir, steps, stage });
        await publishTokenizer();
        return;
      }
      const testModel = config.runtime.testModel;
      if (stage === 'tokenizer' || (stage === undefined && !testModel && !config.training.tokenizerFrom)) {
        // The tokenizer stage trains in this process (it resumes, or says it is already trained).
        await (await heavy()).trainPipeline({ config, runDir, steps, stage: 'tokenizer' });
        if (stage === 'tokenizer') {
          await publishTokenizer();
          return;
        }
      }
      if (!testModel) {
        // the workers need the trained tokenizer: say so here rather than in a crash loop
        // (a published one is fetched and verified here, and again by each worker)
        const { prepareTokenizer, loadTrainingState, VitVqgan } = await heavy();
        const dir = await prepareTokenizer(config, runDir);
        if (!(await loadTrainingState(dir, new VitVqgan(config.model.tokenizer).layout))) {
          throw new PartiError('checkpoint', `${dir}: no trained tokenizer (run without --stage, or set training.tokenizerFrom)`);
        }
      }
      if (steps !== undefined) {
        if (testModel) testModel.steps = steps;
        else config.training.parti.steps = steps;
      }
      config.runtime.workers = workers;
      const paramsFile = await runLocalJob(config, runDir, workers, say, { resume: opts.resume, workerMetricsPort: metricsPort });
      if (testModel) return;
      const params = await savePartiStage(config, runDir, paramsFile);
      if (params) {
        say(`parti: saved in ${join(runDir, 'parti')}`);
        say(`sample image: ${await writeSample(config, runDir, params)}`);
      }
      // The third stage, when the config has one: the super-resolution network for --upsample.
      if (stage === undefined && config.training.upsampler) await (await heavy()).trainPipeline({ config, runDir, steps, stage: 'upsampler' });
    });
}
