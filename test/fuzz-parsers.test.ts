// The fuzz suites of test/fuzz-targets.ts at a size for `npm test`; bench/fuzz.ts runs >= 10,000
// cases of each. A failure prints fast-check's counterexample and seed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FUZZ_TARGETS } from './fuzz-targets.ts';

const RUNS: Record<keyof typeof FUZZ_TARGETS, number> = { tar: 400, images: 150, manifest: 400, bundle: 400, frames: 400, coordinator: 400, serve: 150, dashboard: 150, collectiveServer: 150, coordinatorServer: 150 };

for (const [name, fuzz] of Object.entries(FUZZ_TARGETS) as [keyof typeof FUZZ_TARGETS, (typeof FUZZ_TARGETS)[keyof typeof FUZZ_TARGETS]][]) {
  test(`fuzz ${name}: no crash, no hang, bounded output`, { timeout: 120_000 }, async () => {
    const r = await fuzz({ numRuns: RUNS[name], seed: 20261127 });
    assert.equal(r.cases, RUNS[name]);
  });
}
