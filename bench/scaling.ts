// Data-parallel scaling of the tiny config on this machine, with real `parti coordinator` and
// `parti worker` processes on 127.0.0.1 (wasm backend, one single-threaded worker per core):
// - throughput (samples/s, image tokens/s) of 1 and of 2 workers with the same per-worker batch,
//   and of two independent 1-worker jobs at once: the ceiling of any 2-process data-parallel job on
//   this machine (no all-reduce, no waiting for a peer; only the cores, caches and memory are shared);
// - the share of a step spent in the all-reduce (the slowest rank's all-reduce call, which includes
//   waiting for the slowest peer to finish its backward pass);
// - the time from a worker's SIGKILL to the next committed step (2 workers, minimum 1: the
//   survivor detects the death, aborts, re-forms alone and redoes the step).
// - with --checkpoint-stall: the step-time stall of checkpointing every step on the real worker
//   (checkpoint.everySteps 1 against none, to file:// in the run directory): wall time per step,
//   the median step time and the workers' snapshot time, alternating the two runs.
// The frozen image tokenizer is at its initialization (throughput does not depend on its training).
// Run: flock /tmp/parti-bench.lock npx tsx bench/scaling.ts [--steps 16] [--rounds 2] [--per-worker-batch 8,16,32] [--zero-stage 1]
//      (default per-worker batch: the tiny config's own training.parti.batchSize, 16; a list prints
//      the speedup at each size: the all-reduce and the wait for the slower rank are per step, so
//      the share they take falls as the per-worker batch grows; --zero-stage 1 runs the 2-worker
//      jobs with runtime.zeroStage 1: each rank applies the optimizer to half the parameters)
//      flock /tmp/parti-bench.lock npx tsx bench/scaling.ts --checkpoint-stall [--workers 2] [--steps 16] [--rounds 2]
// - with --contention: why compute per step grows with 2 workers: the median compute time of one
//   1-worker job alone, of two independent 1-worker jobs at once (no all-reduce, no shared
//   coordinator: only the machine is shared), and of one 2-worker job.
//      flock /tmp/parti-bench.lock npx tsx bench/scaling.ts --contention [--steps 12]
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { loadConfig } from '../src/config/load.ts';
import { Cluster, writeInitialTokenizer } from '../test/orchestration-harness.ts';

const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
};
const STEPS = arg('--steps', 16);
const TINY_BATCH = loadConfig('configs/tiny.yaml').training.parti.batchSize;
const PER_WORKER_LIST = (() => {
  const i = process.argv.indexOf('--per-worker-batch');
  const raw = i >= 0 ? process.argv[i + 1]! : String(TINY_BATCH);
  const xs = raw.split(',').map(Number);
  if (xs.some((x) => !Number.isInteger(x) || x < 1)) throw new Error(`--per-worker-batch: integers >= 1, comma-separated, got ${raw}`);
  return xs;
})();
/** The per-worker batch of the modes that take one (the first of the list). */
const PER_WORKER = PER_WORKER_LIST[0]!;
const WARMUP = 2;
/** runtime.zeroStage of the jobs with more than one worker (a 1-worker job has nothing to shard). */
const ZERO_STAGE = arg('--zero-stage', 0);
if (ZERO_STAGE !== 0 && ZERO_STAGE !== 1) throw new Error(`--zero-stage: 0 or 1, got ${ZERO_STAGE}`);

interface StepLine {
  step: number;
  loss: number;
  worldSize: number;
  stepMs: number;
  allReduceMs: number;
  computeMs: number;
  /** the previous step's optimizer update, slowest rank */
  optimizerMs: number;
  at: number;
}

async function setup(cluster: Cluster, workers: number, steps: number, minWorkers = workers, checkpointEvery = 0, perWorker = PER_WORKER): Promise<string> {
  const tiny = loadConfig('configs/tiny.yaml');
  tiny.training.parti.steps = steps;
  tiny.training.parti.batchSize = perWorker * workers;
  tiny.training.parti.microBatchSize = perWorker;
  tiny.data.synthetic.samples = 1024;
  tiny.runtime.backend = 'wasm';
  tiny.runtime.workers = workers;
  tiny.runtime.minWorkers = minWorkers;
  tiny.runtime.zeroStage = workers > 1 ? (ZERO_STAGE as 0 | 1) : 0;
  tiny.runtime.failureTimeoutMs = 3000;
  tiny.checkpoint.everySteps = checkpointEvery;
  tiny.checkpoint.keep = 2;
  tiny.checkpoint.atEnd = false;
  tiny.dashboard.enabled = false;
  await writeInitialTokenizer(join(cluster.dir, 'tokenizer'), tiny);
  return cluster.config('tiny', tiny);
}

function steps(lines: string[]): StepLine[] {
  return lines.filter((l) => l.startsWith('{"step"')).map((l) => JSON.parse(l) as StepLine);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  if (!s.length) return Number.NaN;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

interface Throughput {
  samplesPerSec: number;
  tokensPerSec: number;
  allReduceShare: number;
  stepMs: number;
  computeMs: number;
  optimizerMs: number;
}

/** Throughput of one job of `workers` workers (the timed steps' wall time, from the coordinator's step records). */
function jobThroughput(lines: string[], workers: number, perWorker: number): Throughput {
  const s = steps(lines).filter((x) => x.step >= WARMUP);
  const seconds = (s.at(-1)!.at - s[0]!.at) / 1000;
  const samples = (s.length - 1) * perWorker * workers;
  return {
    samplesPerSec: samples / seconds,
    tokensPerSec: (samples * 64) / seconds,
    allReduceShare: median(s.map((x) => x.allReduceMs / x.stepMs)),
    stepMs: median(s.map((x) => x.stepMs)),
    computeMs: median(s.map((x) => x.computeMs)),
    optimizerMs: median(s.map((x) => x.optimizerMs)),
  };
}

/** `jobs` independent jobs of `workers` workers each, started together; one Throughput per job. */
async function throughput(workers: number, perWorker: number, jobs = 1): Promise<Throughput[]> {
  const clusters = Array.from({ length: jobs }, (_, j) => new Cluster(`scaling${jobs}x${workers}-${j}`));
  try {
    const started = await Promise.all(
      clusters.map(async (cluster) => {
        const cfg = await setup(cluster, workers, STEPS, workers, 0, perWorker);
        return { cluster, cfg, c: await cluster.coordinator(cfg) };
      }),
    );
    for (const { cluster, cfg, c } of started) for (let i = 0; i < workers; i++) cluster.worker(cfg, c.address, `w${i}`);
    await Promise.all(started.map(({ c }) => c.waitFor(/"done":true/, 900_000)));
    return started.map(({ c }) => jobThroughput(c.lines, workers, perWorker));
  } finally {
    await Promise.all(clusters.map((c) => c.killAll()));
  }
}

async function recovery(): Promise<{ detectToNextStepMs: number; stepMsBefore: number }> {
  const cluster = new Cluster('scaling-kill');
  try {
    const cfg = await setup(cluster, 2, STEPS + 4, 1);
    const c = await cluster.coordinator(cfg);
    cluster.worker(cfg, c.address, 'w0');
    const victim = cluster.worker(cfg, c.address, 'w1');
    await c.waitFor(/"step":2,/, 600_000);
    const before = steps(c.lines);
    // kill in the middle of a step: half a step after the last commit
    const stepMsBefore = median(before.slice(1).map((x) => x.stepMs));
    await new Promise((r) => setTimeout(r, stepMsBefore / 2));
    const killedAt = Date.now();
    victim.proc.kill('SIGKILL');
    const committedBefore = steps(c.lines).length;
    await c.waitFor(new RegExp(`"step":${committedBefore},`), 600_000);
    const next = steps(c.lines).find((x) => x.step === committedBefore)!;
    await c.waitFor(/"done":true/, 900_000);
    return { detectToNextStepMs: next.at - killedAt, stepMsBefore };
  } finally {
    await cluster.killAll();
  }
}

/** A run of `workers` workers checkpointing every `every` steps (0: never); timed after the warm-up. */
async function checkpointRun(workers: number, every: number): Promise<{ wallMs: number; stepMs: number; computeMs: number; commits: number; snapshotMs: number[]; bytes: number }> {
  const cluster = new Cluster(`ckpt-stall${workers}-${every}`);
  try {
    const cfg = await setup(cluster, workers, STEPS, workers, every);
    // the coordinator logs each commit at info (with the ranks' snapshot time)
    const c = await cluster.coordinator(cfg);
    for (let i = 0; i < workers; i++) cluster.worker(cfg, c.address, `w${i}`);
    await c.waitFor(/"done":true/, 900_000);
    const s = steps(c.lines).filter((x) => x.step >= WARMUP);
    const log = readFileSync(join(cluster.dir, 'coordinator.log'), 'utf8');
    // (a synchronous coordinator, before the asynchronous saves, logs the commit without sizes)
    const commits = [...log.matchAll(/checkpoint of step \d+ committed \(\d+ objects(?:, (\d+) bytes, \d+ ms after it started; snapshot ([\d.]+) ms)?\)/g)];
    const timed = commits.filter((m) => m[2] !== undefined);
    return {
      wallMs: (s.at(-1)!.at - s[0]!.at) / (s.length - 1),
      stepMs: median(s.map((x) => x.stepMs)),
      computeMs: median(s.map((x) => x.computeMs)),
      commits: commits.length,
      snapshotMs: timed.map((m) => Number(m[2])),
      bytes: timed.length ? Number(timed[0]![1]) : 0,
    };
  } finally {
    await cluster.killAll();
  }
}

const load = () => loadavg()[0]!.toFixed(1);
if (process.argv.includes('--contention')) {
  process.env.PARTI_LOG_LEVEL ??= 'warn';
  console.log(`compute per step (median, slowest rank), tiny config, ${PER_WORKER} samples per worker per step, ${STEPS} steps (first ${WARMUP} not timed)`);
  for (let round = 0; round < arg('--rounds', 1); round++) {
    for (const [jobs, workers, what] of [
      [1, 1, 'one 1-worker job alone          '],
      [2, 1, 'two 1-worker jobs at once       '],
      [1, 2, 'one 2-worker job                '],
    ] as const) {
      const before = load();
      const ms = (await throughput(workers, PER_WORKER, jobs)).map((r) => r.computeMs);
      console.log(`${what}: compute ${ms.map((x) => x.toFixed(0)).join(' / ')} ms; load average ${before} -> ${load()}`);
    }
  }
  process.exit(0);
}
if (process.argv.includes('--checkpoint-stall')) {
  process.env.PARTI_LOG_LEVEL ??= 'info';
  const workers = arg('--workers', 2);
  console.log(`checkpoint stall on the real worker: tiny config, wasm, ${workers} workers, ${PER_WORKER} samples per worker per step, ${STEPS} steps (first ${WARMUP} not timed), file:// store; checkpoint.everySteps 1 vs none, alternating`);
  const none: number[] = [];
  const every: number[] = [];
  for (let round = 0; round < arg('--rounds', 2); round++) {
    for (const e of [0, 1]) {
      const before = load();
      const r = await checkpointRun(workers, e);
      (e ? every : none).push(r.wallMs);
      const snap = r.snapshotMs.length
        ? `; ${r.commits} checkpoints of ${(r.bytes / 1e6).toFixed(1)} MB committed, snapshot median ${median(r.snapshotMs).toFixed(1)} ms (max ${Math.max(...r.snapshotMs).toFixed(1)})`
        : e ? `; ${r.commits} checkpoints committed` : '';
      console.log(`${e ? 'every step' : 'none      '}: ${r.wallMs.toFixed(0)} ms per step (wall), median step ${r.stepMs.toFixed(0)} ms (compute ${r.computeMs.toFixed(0)} ms)${snap}; load average ${before} -> ${load()}`);
    }
  }
  const a = median(none);
  const b = median(every);
  console.log(`stall of checkpointing every step: ${(b - a).toFixed(0)} ms per step = ${(((b - a) / a) * 100).toFixed(1)}% (median of rounds; goal < 5%)`);
  process.exit(0);
}
process.env.PARTI_LOG_LEVEL ??= 'warn';
const ROUNDS = arg('--rounds', 2);
const curve: string[] = [];
for (const perWorker of PER_WORKER_LIST) {
  console.log(
    `tiny config, wasm, ${perWorker} samples per worker per step${perWorker === TINY_BATCH ? " (the config's batch)" : ''}, ${STEPS} steps (first ${WARMUP} not timed)${ZERO_STAGE ? ', 2 workers with ZeRO stage 1 (reduce-scatter, half the optimizer update each, all-gather)' : ''}; ` +
      `1 worker, 2 workers and two independent 1-worker jobs at once (the machine's own ceiling: they share nothing but the cores) alternate ${ROUNDS} times`,
  );
  const ones: number[] = [];
  const twos: number[] = [];
  const pairs: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    for (const [n, jobs] of [[1, 1], [2, 1], [1, 2]] as const) {
      const before = load();
      const rs = await throughput(n, perWorker, jobs);
      const sum = rs.reduce((a, r) => a + r.samplesPerSec, 0);
      (jobs === 2 ? pairs : n === 1 ? ones : twos).push(sum);
      const what = jobs === 2 ? 'two 1-worker jobs' : `${n} worker${n > 1 ? 's' : ' '}`;
      const r = rs[0]!;
      console.log(
        jobs === 2
          ? `${what}: ${sum.toFixed(2)} samples/s together (${rs.map((x) => x.samplesPerSec.toFixed(2)).join(' + ')}), compute ${rs.map((x) => x.computeMs.toFixed(0)).join(' / ')} ms (median); load average ${before} -> ${load()}`
          : `${what}: ${r.samplesPerSec.toFixed(2)} samples/s, ${r.tokensPerSec.toFixed(0)} image tokens/s, step ${r.stepMs.toFixed(0)} ms (compute ${r.computeMs.toFixed(0)} ms, optimizer ${r.optimizerMs.toFixed(1)} ms), all-reduce ${(r.allReduceShare * 100).toFixed(1)}% of a step (median); load average ${before} -> ${load()}`,
      );
    }
  }
  const best = (xs: number[]) => Math.max(...xs);
  const line =
    `${perWorker} per worker: speedup 2 vs 1 workers ${(best(twos) / best(ones)).toFixed(2)}x best vs best, ${(median(twos) / median(ones)).toFixed(2)}x median vs median (goal >= 1.9x); ` +
    `ceiling of this machine (two independent 1-worker jobs vs one) ${(best(pairs) / best(ones)).toFixed(2)}x best, ${(median(pairs) / median(ones)).toFixed(2)}x median`;
  curve.push(line);
  console.log(line);
}
if (curve.length > 1) console.log(`speedup by per-worker batch:\n  ${curve.join('\n  ')}`);
const r = await recovery();
console.log(`worker SIGKILL to the next committed step (${PER_WORKER} per worker): ${r.detectToNextStepMs} ms (a step took ${r.stepMsBefore.toFixed(0)} ms before; the step is redone on the survivor alone)`);
