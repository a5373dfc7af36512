// Runs every fuzz target of test/fuzz-targets.ts with >= 10,000 cases and prints, per target,
// cases, wall time, the slowest case, how many inputs were refused, and the process's RSS and
// heap after it (memory must not grow without bound across targets).
//
//   npx tsx bench/fuzz.ts [--runs N] [--seed S] [--only tar,images,...] [--json]
import { FUZZ_TARGETS } from '../test/fuzz-targets.ts';

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const runs = Number(flag('runs') ?? 10_000);
const seed = Number(flag('seed') ?? Date.now() % 2 ** 31);
const only = flag('only')?.split(',');
const json = process.argv.includes('--json');
const mib = (n: number): number => Math.round(n / 2 ** 20);

console.log(json ? JSON.stringify({ runs, seed }) : `fuzz: ${runs} cases per target, seed ${seed}`);
const rssStart = process.memoryUsage().rss;
let failed = false;
for (const [name, fuzz] of Object.entries(FUZZ_TARGETS)) {
  if (only && !only.includes(name)) continue;
  try {
    const r = await fuzz({ numRuns: runs, seed });
    globalThis.gc?.();
    const mem = process.memoryUsage();
    const row = { ...r, name, rssMiB: mib(mem.rss), heapMiB: mib(mem.heapUsed), casesPerSec: Math.round((r.cases / r.ms) * 1000) };
    console.log(json ? JSON.stringify(row) : `${name.padEnd(12)} ${String(r.cases).padStart(6)} cases  ${String(r.ms).padStart(7)} ms  ${String(row.casesPerSec).padStart(6)}/s  slowest ${r.maxCaseMs} ms  refused ${r.refused}  rss ${row.rssMiB} MiB  heap ${row.heapMiB} MiB  (${r.target})`);
  } catch (err) {
    failed = true;
    console.log(json ? JSON.stringify({ name, error: String(err) }) : `${name.padEnd(12)} FAILED: ${(err as Error).message.split('\n').slice(0, 6).join('\n')}`);
  }
}
console.log(json ? JSON.stringify({ rssStartMiB: mib(rssStart), rssEndMiB: mib(process.memoryUsage().rss) }) : `rss ${mib(rssStart)} MiB at start, ${mib(process.memoryUsage().rss)} MiB at the end`);
process.exit(failed ? 1 : 0);
