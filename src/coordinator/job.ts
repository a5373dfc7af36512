/**
 * Resolves a config into what one coordinator job runs: which stage, how many steps, the step
 * plan over the data set, timeouts, checkpoints. One job trains one stage data-parallel (the Parti
 * stage by default; `runtime.testModel` swaps in the linear test model on the shapes set's indices).
 */
import { resolve } from 'node:path';
import type { Config } from '../config/schema.ts';
import { configHash } from '../config/load.ts';
import { openDataset, syntheticShards } from '../data/dataset.ts';
import { EpochPlan } from '../data/epoch-plan.ts';
import { openStore } from '../storage/open-store.ts';
import { PartiError } from '../errors.ts';
import { StoreCheckpointCommitter } from './checkpoint-committer.ts';
import type { CoordinatorOptions } from './coordinator.ts';
import { StepPlan } from './step-samples.ts';
import { checkpointUrl } from './protocol.ts';

/** What the stage of a job trains. */
export type JobStage = 'parti' | 'linear-test';

/** Flags that override the config for one coordinator. */
export interface JobOverrides {
  runDir: string;
  jobId?: string;
  workers?: number;
  minWorkers?: number;
  /** Override the stage's steps. */
  steps?: number;
  ledger?: string | null;
  /** Which committed checkpoint to resume from: the newest (default) or exactly this step. */
  resume?: 'latest' | number;
}

/** Steps, batch and micro-batch of the job's stage. */
export function jobStage(config: Config): { stage: JobStage; steps: number; batch: number; microBatch: number } {
  const t = config.runtime.testModel;
  if (t) return { stage: 'linear-test', steps: t.steps, batch: t.batchSize, microBatch: t.microBatchSize ?? t.batchSize };
  const p = config.training.parti;
  return { stage: 'parti', steps: p.steps, batch: p.batchSize, microBatch: p.microBatchSize ?? p.batchSize };
}


/** Resolves everything a Coordinator needs from the config and the command line. */
export async function resolveCoordinatorOptions(config: Config, o: JobOverrides): Promise<CoordinatorOptions> {
  const { steps, batch, microBatch, stage } = jobStage(config);
  const shards =
    stage === 'linear-test'
      ? syntheticShards(config.data.synthetic.samples)
      : (await openDataset(config.data, { imageSize: config.model.tokenizer.imageSize })).shards;
  const plan = new StepPlan(new EpochPlan(shards, { seed: config.training.seed, globalBatch: batch }));
  const rt = config.runtime;
  const workers = o.workers ?? rt.workers;
  const minWorkers = o.minWorkers ?? rt.minWorkers ?? workers;
  if (minWorkers > workers) throw new PartiError('usage', `--min-workers: must be at most the number of workers (${workers}), got ${minWorkers}`);
  const hash = configHash(config);
  const ledger = o.ledger !== undefined ? o.ledger : rt.ledger;
  return {
    jobId: o.jobId ?? config.name,
    configHash: hash,
    totalSteps: o.steps ?? steps,
    microBatch,
    plan,
    targetWorkers: workers,
    minWorkers,
    heartbeatMs: rt.heartbeatMs,
    failureTimeoutMs: rt.failureTimeoutMs,
    stepDeadlineMs: rt.stepDeadlineMs,
    zeroStage: rt.zeroStage,
    checkpointEvery: config.checkpoint.everySteps,
    checkpointAtEnd: config.checkpoint.atEnd,
    checkpoints: new StoreCheckpointCommitter(openStore(checkpointUrl(config, o.runDir)), {
      configHash: hash,
      config,
      keep: config.checkpoint.keep,
      plan,
      seed: config.training.seed,
    }),
    ledgerFile: ledger ? resolve(o.runDir, ledger) : null,
  };
}
