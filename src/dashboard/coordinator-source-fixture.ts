// Fixture of the dashboard's tests (coordinator-bridge.test.ts, gallery-archive.test.ts,
// test/dashboard-gallery-s3.test.ts): a coordinator as the dashboard sees it, scripted by the test.
import type { CoordinatorSource } from './coordinator-bridge.ts';

type Listener = Parameters<CoordinatorSource['subscribe']>[0];

/** What a scripted coordinator reports; absent fields take a small job's values. */
export interface ScriptedCoordinator {
  configHash?: string;
  step?: number;
  epoch?: number;
  workers?: number;
  ring?: string[];
  phase?: CoordinatorSource['phase'];
}

/** A coordinator source whose events the test sends with `emit`. */
export function scriptedCoordinator(o: ScriptedCoordinator = {}): { source: CoordinatorSource; emit: Listener } {
  const listeners = new Set<Listener>();
  const workers = o.workers ?? 2;
  const source = {
    opts: { jobId: 'j', configHash: o.configHash ?? 'h', totalSteps: 100, targetWorkers: workers, minWorkers: workers },
    phase: o.phase ?? { kind: 'between-steps' },
    step: o.step ?? 0,
    epoch: o.epoch ?? 1,
    ring: o.ring ?? [],
    members: new Map(),
    subscribe(fn: Listener) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
  } as unknown as CoordinatorSource;
  return { source, emit: (e) => listeners.forEach((l) => l(e)) };
}
