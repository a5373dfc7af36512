/**
 * SIGKILL at random moments while checkpoints upload, 20 times on file:// and 10 on s3rver: `latest` must always load
 * (verified sizes and sha256) and hold the bytes that were saved for its step.
 *
 * The same file is the child: with PARTI_CKPT_KILL_CHILD set it resumes from `latest` and saves
 * and commits checkpoints in a loop (through the CheckpointWriter's upload thread) until killed.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { openStore, type OpenStoreOptions } from '../src/storage/open-store.ts';
import { commitManifest } from '../src/storage/checkpoint-commit.ts';
import { loadCheckpoint, listCheckpointSteps } from '../src/storage/checkpoint-load.ts';
import { CheckpointWriter } from '../src/storage/checkpoint-writer.ts';
import { stepOfObjectKey } from '../src/storage/checkpoint-manifest.ts';

const HASH = 'kill0test0hash00';
const NAMES = ['params.bin', 'optimizer-rank-0.bin', 'optimizer-rank-1.bin'];
const SIZE = 1 << 20;

/** The bytes saved for (step, name): a function of both, so the parent can check what loaded. */
function content(step: number, name: string): Buffer {
  const words = new Uint32Array(SIZE / 4);
  let x = (step * 2654435761 + name.charCodeAt(name.length - 5) * 40503 + name.length) >>> 0;
  for (let i = 0; i < words.length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    words[i] = x;
  }
  return Buffer.from(words.buffer);
}

async function child(): Promise<void> {
  const url = process.env.PARTI_CKPT_URL!;
  const storeOptions = JSON.parse(process.env.PARTI_CKPT_STORE_OPTIONS ?? '{}') as OpenStoreOptions;
  const maxCommits = Number(process.env.PARTI_CKPT_MAX_COMMITS ?? Infinity);
  const store = openStore(url, storeOptions);
  const writer = new CheckpointWriter({ url, storeOptions, concurrency: 3 });
  await writer.start();
  // Warm (modules and upload thread loaded): wait for the previous child to be dead before
  // touching the store, like a restarted pod.
  process.stdout.write('warm\n');
  await new Promise<void>((resolve) => process.stdin.once('data', () => resolve()));
  const latest = await loadCheckpoint(store, 'latest', { configHash: HASH });
  let step = latest ? latest.manifest.step + 1 : 1;
  process.stdout.write(`ready ${step}\n`);
  for (let commits = 0; commits < maxCommits; step++) {
    process.stdout.write(`saving ${step}\n`);
    const ticket = writer.save(step, NAMES.map((name) => ({ name, bytes: content(step, name) })))!;
    const refs = await ticket.done;
    await commitManifest(
      store,
      { step, worldSize: 2, configHash: HASH, config: {}, cursor: { position: step }, rng: { counter: step }, objects: refs },
      { keep: 2 },
    );
    process.stdout.write(`committed ${step}\n`);
    commits++;
  }
  await writer.close();
  await store.close();
}

/** A small seeded PRNG, so a failing run can be repeated with its seed. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const self = fileURLToPath(import.meta.url);

interface Child {
  proc: ChildProcess;
  lines: string[];
  /** Resolves once a line satisfies pred (checked on every new line); rejects if the child exits first or after 60 s. */
  until(what: string, pred: (lines: string[]) => boolean): Promise<void>;
  go(): void;
}

function startChild(url: string, storeOptions: OpenStoreOptions, maxCommits?: number): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', self], {
    env: {
      ...process.env,
      PARTI_CKPT_KILL_CHILD: '1',
      PARTI_CKPT_URL: url,
      PARTI_CKPT_STORE_OPTIONS: JSON.stringify(storeOptions),
      PARTI_LOG_LEVEL: 'warn',
      ...(maxCommits ? { PARTI_CKPT_MAX_COMMITS: String(maxCommits) } : {}),
    },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const waiters = new Set<() => void>();
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-3000)));
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop()!;
    lines.push(...parts);
    for (const w of waiters) w();
  });
  proc.once('exit', () => {
    for (const w of waiters) w();
  });
  const until = (what: string, pred: (lines: string[]) => boolean) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`child did not reach "${what}" within 60 s: ${stderr}`)), 60_000);
      const done = (err?: Error) => {
        clearTimeout(timer);
        waiters.delete(check);
        if (err) reject(err);
        else resolve();
      };
      const check = () => {
        if (pred(lines)) done();
        else if (proc.exitCode !== null || proc.signalCode !== null)
          done(new Error(`child exited (${proc.exitCode ?? proc.signalCode}) before "${what}": ${stderr}`));
      };
      waiters.add(check);
      check();
    });
  return { proc, lines, until, go: () => proc.stdin!.end('go\n') };
}

const count = (lines: string[], prefix: string) => lines.filter((l) => l.startsWith(prefix)).length;

function exited(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => proc.once('exit', () => resolve()));
}

function describeKills(label: string, rounds: number, target: () => Promise<{ url: string; storeOptions: OpenStoreOptions; dir?: string }>) {
  describe(`SIGKILL during checkpoint uploads: ${label}`, () => {
    const children: ChildProcess[] = [];
    after(() => {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    });

    it(`leaves a latest that always loads, ${rounds} kills in a row, then cleans up`, { timeout: 300_000 }, async (t) => {
      const diag = (msg: string) => t.diagnostic(msg);
      const { url, storeOptions, dir } = await target();
      const seed = Number(process.env.PARTI_KILL_SEED ?? Date.now() % 1e6);
      const random = rng(seed);
      const store = openStore(url, storeOptions);
      let highestSeen = 0;
      const loadedSteps: number[] = [];
      let fellBack = 0;
      try {
        // The next child warms up while the current one runs, so that a round costs a kill, not a
        // process start.
        let next = startChild(url, storeOptions);
        children.push(next.proc);
        let typicalSaveMs = 100;
        for (let round = 0; round < rounds; round++) {
          const c = next;
          await c.until('warm', (l) => count(l, 'warm') > 0);
          c.go();
          await c.until('ready', (l) => count(l, 'ready') > 0);
          if (round < rounds - 1) {
            next = startChild(url, storeOptions);
            children.push(next.proc);
          }
          // A random moment tied to progress, not to the clock (the machine may be loaded): after
          // 0-2 commits, once the next save has started, wait up to ~1.2 saves. Most kills land
          // in object uploads, some in the manifest write or the pruning after it.
          const commits = Math.floor(random() * 3);
          const started = performance.now();
          await c.until(`saving #${commits + 1}`, (l) => count(l, 'saving ') > commits);
          const delay = random() * typicalSaveMs * 1.2;
          await sleep(delay);
          c.proc.kill('SIGKILL');
          await exited(c.proc);
          const seen = c.lines.filter((l) => l.startsWith('committed ')).map((l) => Number(l.slice(10)));
          if (commits > 0) typicalSaveMs = (performance.now() - started - delay) / commits;
          highestSeen = Math.max(highestSeen, ...seen);
          const loaded = await loadCheckpoint(store, 'latest', { configHash: HASH });
          if (highestSeen > 0) assert.ok(loaded, `round ${round} (seed ${seed}): no checkpoint loads, though step ${highestSeen} was committed`);
          if (!loaded) {
            // Only before anything was ever committed.
            assert.equal(loadedSteps.length, 0, `round ${round} (seed ${seed}): latest vanished after step ${loadedSteps.at(-1)} had loaded`);
            continue;
          }
          const step = loaded.manifest.step;
          assert.ok(step >= highestSeen, `round ${round} (seed ${seed}): latest is ${step}, older than committed ${highestSeen}`);
          assert.deepEqual(loaded.manifest.cursor, { position: step });
          for (const name of NAMES) assert.ok(loaded.objects.get(name)!.equals(content(step, name)), `round ${round}: ${name} of step ${step}`);
          loadedSteps.push(step);
          if (loaded.warnings.length) fellBack++;
        }
        // Every round after the first commit loads; the runs make progress despite the kills.
        assert.ok(loadedSteps.length >= rounds / 2, `seed ${seed}: only ${loadedSteps.length} of ${rounds} rounds loaded a checkpoint`);
        assert.ok(new Set(loadedSteps).size >= rounds / 4, `seed ${seed}: the runs made little progress: ${loadedSteps.join(',')}`);
        diag(`seed ${seed}: latest after each kill: ${loadedSteps.join(',')}; ${fellBack} loads fell back past a damaged newest`);
        // A clean run after all that: two commits, then the store holds exactly the newest two
        // committed steps, and nothing of older failed saves.
        const last = startChild(url, storeOptions, 2);
        children.push(last.proc);
        await last.until('warm', (l) => count(l, 'warm') > 0);
        last.go();
        await exited(last.proc);
        assert.equal(last.proc.exitCode, 0);
        const steps = await listCheckpointSteps(store);
        assert.equal(steps.length, 2);
        const objectSteps = new Set((await store.list('steps/')).map((o) => stepOfObjectKey(o.key)));
        assert.deepEqual([...objectSteps].sort((a, b) => a! - b!), steps);
        if (dir) {
          const temps = readdirSync(path.join(dir, 'steps'), { recursive: true }).map(String).filter((f) => f.includes('.parti-tmp-'));
          assert.deepEqual(temps, []);
        }
      } finally {
        await store.close();
      }
    });
  });
}

if (process.env.PARTI_CKPT_KILL_CHILD) {
  await child();
} else {
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  // 20 kills on file:// (the embedded default); 10 more on s3rver, whose PUTs are not atomic.
  describeKills('file://', 20, async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'parti-ckpt-kill-'));
    dirs.push(dir);
    return { url: dir, storeOptions: {}, dir };
  });

  const { startS3rver } = await import('./helpers/s3rver.ts');
  let server: Awaited<ReturnType<typeof startS3rver>>;
  before(async () => {
    server = await startS3rver();
  });
  after(async () => {
    await server?.stop();
  });
  describeKills('s3:// (s3rver)', 10, async () => ({
    url: `s3://${server.bucket}/kill`,
    storeOptions: { s3: { endpoint: server.endpoint, credentials: server.credentials } },
  }));
}
