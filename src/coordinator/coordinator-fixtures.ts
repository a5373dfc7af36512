// Fixtures of the coordinator's unit tests (coordinator.test.ts, coordinator-stop.test.ts): a
// scripted worker the test answers for, the options of a small job, a rank's object list.
import assert from 'node:assert/strict';
import type { Coordinator, CoordinatorOptions } from './coordinator.ts';
import { StepPlan } from './step-samples.ts';
import { EpochPlan } from '../data/epoch-plan.ts';
import type { Command, StepReport, StopCommand } from './protocol.ts';
import { objectKey } from '../storage/checkpoint-manifest.ts';

/** A scripted worker: records the commands it gets; the test answers for it. */
export class FakeWorker {
  readonly commands: Command[] = [];
  id = '';
  ended = false;
  constructor(
    readonly c: Coordinator,
    readonly name: string,
  ) {
    this.id = c.join({ jobId: 'job', configHash: 'h', workerName: name, collectiveAddress: `${name}:1`, paramCount: 10 }).workerId;
    c.attach(this.id, (cmd) => this.commands.push(cmd), () => (this.ended = true));
  }
  last(): Command {
    return this.commands.at(-1)!;
  }
  report(kind: StepReport['kind'], epoch: number, step: number, extra: Partial<StepReport> = {}): boolean {
    return this.c.report({
      jobId: 'job', workerId: this.id, kind, epoch, step, loss: 1, nonFinite: false, computeMs: 1, allReduceMs: 1, optimizerMs: 0,
      samples: 1, optimizerStateBytes: 80, gradNorm: 0, error: '', checkpointObjectsJson: '', learningRate: 0.1, tokens: 0,
      allReduceBytes: 0, skippedSamples: {}, snapshotMs: 0, ...extra,
    });
  }
  /** Answers a reconfigure with READY. */
  ready(): void {
    const r = this.last().reconfigure!;
    this.report('READY', r.epoch, r.step);
  }
  /** Answers a step with REDUCED. */
  reduced(extra: Partial<StepReport> = {}): void {
    const s = this.last().step!;
    this.report('REDUCED', s.epoch, s.step, extra);
  }
  /** The stop command this worker got (exactly one). */
  stop(): StopCommand {
    const stops = this.commands.filter((cmd) => cmd.stop);
    assert.equal(stops.length, 1, `one stop: ${JSON.stringify(this.commands.map((cmd) => Object.keys(cmd)[0]))}`);
    return stops[0]!.stop!;
  }
}

/** A rank's object list as a worker reports it. */
export function objectsJson(step: number, ...names: string[]): string {
  return JSON.stringify(names.map((name) => ({ name, key: objectKey(step, name), size: 8, sha256: 'a'.repeat(64) })));
}

export function options(o: Partial<CoordinatorOptions> = {}): CoordinatorOptions {
  return {
    jobId: 'job', configHash: 'h', totalSteps: 5, microBatch: 2,
    plan: new StepPlan(new EpochPlan([{ samples: 20 }], { seed: 0, globalBatch: 4 })),
    targetWorkers: 2, minWorkers: 2, heartbeatMs: 50, failureTimeoutMs: 60_000, stepDeadlineMs: 60_000,
    zeroStage: 0, checkpointEvery: 0, checkpointAtEnd: false, checkpoints: null, ledgerFile: null, ...o,
  };
}

/** Workers a and b joined and answered their reconfigure: the ring is formed and step 0 is sent. */
export function readyPair(c: Coordinator): [FakeWorker, FakeWorker] {
  const a = new FakeWorker(c, 'a');
  const b = new FakeWorker(c, 'b');
  a.ready();
  b.ready();
  return [a, b];
}
