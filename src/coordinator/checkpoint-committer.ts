/**
 * The coordinator's side of checkpoints: find the latest committed step (to recover a job) and
 * commit a manifest once every worker's objects have landed (the storage engineer's commitManifest
 * checks each one before it writes the manifest).
 */
import { commitManifest } from '../storage/checkpoint-commit.ts';
import { listCheckpointSteps, loadCheckpoint } from '../storage/checkpoint-load.ts';
import { PartiError } from '../errors.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { log } from '../observability/log.ts';
import type { CheckpointCommitter, CheckpointObject } from './coordinator.ts';
import type { StepPlan } from './step-samples.ts';

export class StoreCheckpointCommitter implements CheckpointCommitter {
  constructor(
    private readonly store: ObjectStore,
    private readonly opts: { configHash: string; config: unknown; keep: number; plan: StepPlan; seed: number },
  ) {}

  async latestStep(): Promise<number | null> {
    // presence and size of every object are checked; contents are verified by the workers that read them
    const latest = await loadCheckpoint(this.store, 'latest', { configHash: this.opts.configHash, select: () => false });
    for (const w of latest?.warnings ?? []) log.warn({ store: this.store.url }, w);
    return latest ? latest.manifest.step : null;
  }

  async verifyStep(step: number): Promise<void> {
    const committed = await listCheckpointSteps(this.store);
    const have = committed.length ? committed.join(', ') : 'none';
    if (!committed.includes(step)) throw new PartiError('checkpoint', `--resume ${step}: no committed checkpoint at step ${step} in ${this.store.url} (committed steps: ${have})`);
    try {
      await loadCheckpoint(this.store, step, { configHash: this.opts.configHash, select: () => false });
    } catch (e) {
      throw new PartiError('checkpoint', `--resume ${step}: checkpoint ${step} does not load (${(e as Error).message}); committed steps: ${have}`);
    }
  }

  async commit(step: number, worldSize: number, objects: CheckpointObject[]): Promise<void> {
    await commitManifest(
      this.store,
      {
        step,
        worldSize,
        configHash: this.opts.configHash,
        config: this.opts.config,
        cursor: this.opts.plan.cursorAt(step),
        rng: { seed: this.opts.seed, step },
        objects: objects.map((o) => ({ name: o.name, key: o.key, size: o.size, sha256: o.sha256 })),
      },
      { keep: this.opts.keep },
    );
  }
}
