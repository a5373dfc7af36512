// Helpers of the multi-process orchestration tests: real `parti coordinator` and `parti worker`
// processes on 127.0.0.1, every wait with a deadline, every child killed at the end.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import assert from 'node:assert/strict';
import { createWriteStream, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { readLedger, type LedgerEntry } from '../src/coordinator/ledger.ts';
import { collectiveNodeFlags } from '../src/collective/worker-node-flags.ts';
import { collectiveSchema } from '../src/config/collective-schema.ts';
import type { Config } from '../src/config/schema.ts';
import { createOptimizer } from '../src/model/optimizer.ts';
import { saveTrainingState } from '../src/model/training-state.ts';
import { VitVqgan } from '../src/model/vit-vqgan.ts';

const BIN = join(import.meta.dirname, '..', 'bin', 'parti.mjs');

/** A child process with its stdout lines. */
export interface Child {
  name: string;
  proc: ChildProcess;
  lines: string[];
  /** Resolves with the exit code (or the signal name). */
  exited: Promise<number | string>;
  /** Resolves with the first stdout line matching `re`, rejects after `ms`. */
  waitFor(re: RegExp, ms: number): Promise<RegExpMatchArray>;
}

/** The children of one test; kill them all in `finally`. */
export class Cluster {
  readonly children: Child[] = [];
  readonly dir: string;

  constructor(name: string) {
    this.dir = mkdtempSync(join(tmpdir(), `parti-${name}-`));
  }

  spawn(args: string[], logName: string, nodeFlags: readonly string[] = []): Child {
    const proc = spawn(process.execPath, [...nodeFlags, BIN, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PARTI_LOG_LEVEL: process.env.PARTI_LOG_LEVEL ?? 'info', PARTI_LOG_FORMAT: 'json' },
    });
    proc.stderr!.pipe(createWriteStream(join(this.dir, `${logName}.log`), { flags: 'a' }));
    const lines: string[] = [];
    const watchers: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
    let buf = '';
    proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        lines.push(line);
        for (const w of [...watchers]) {
          const m = line.match(w.re);
          if (m) {
            watchers.splice(watchers.indexOf(w), 1);
            w.resolve(m);
          }
        }
      }
    });
    const exited = new Promise<number | string>((resolve) => proc.on('exit', (code, signal) => resolve(code ?? signal ?? -1)));
    const child: Child = {
      name: logName,
      proc,
      lines,
      exited,
      waitFor: (re, ms) => {
        for (const line of lines) {
          const m = line.match(re);
          if (m) return Promise.resolve(m);
        }
        return new Promise((resolve, reject) => {
          const t = setTimeout(() => reject(new Error(`${logName}: no line matching ${re} within ${ms} ms (see ${this.dir}/${logName}.log)`)), ms);
          watchers.push({ re, resolve: (m) => (clearTimeout(t), resolve(m)) });
          void exited.then((code) => {
            clearTimeout(t);
            const m = lines.map((l) => l.match(re)).find(Boolean);
            if (m) resolve(m);
            else reject(new Error(`${logName} exited (${code}) before printing ${re} (see ${this.dir}/${logName}.log)`));
          });
        });
      },
    };
    this.children.push(child);
    return child;
  }

  /** Starts `parti coordinator` and waits until it listens; returns it with its address. */
  async coordinator(config: string, extra: string[] = [], logName = 'coordinator'): Promise<Child & { address: string }> {
    const c = this.spawn(['coordinator', '--config', config, '--run-dir', this.dir, ...extra], logName);
    const m = await c.waitFor(/coordinator listening on (\S+)/, 30_000);
    return Object.assign(c, { address: m[1]! });
  }

  worker(config: string, address: string, name: string, extra: string[] = []): Child {
    // As parti train and the Kubernetes worker start them: with the collective's node flags (defaults).
    return this.spawn(['worker', '--coordinator', address, '--config', config, '--run-dir', this.dir, '--params-out', join(this.dir, `${name}.params`), ...extra], name, collectiveNodeFlags(collectiveSchema.parse({})));
  }

  /** Kills every child still running (SIGKILL) and waits for them. */
  async killAll(): Promise<void> {
    for (const c of this.children) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
    await Promise.all(this.children.map((c) => Promise.race([c.exited, new Promise((r) => setTimeout(r, 5000))])));
  }

  params(name: string): Float32Array {
    const b = readFileSync(join(this.dir, `${name}.params`));
    return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  }

  ledger(): LedgerEntry[] {
    return readLedger(join(this.dir, 'ledger.jsonl'));
  }

  /** Writes a config (an object) as YAML into the run directory; returns its path. */
  config(name: string, config: object): string {
    const file = join(this.dir, `${name}.yaml`);
    writeFileSync(file, stringify(config));
    return file;
  }
}

/** A child's stderr so far, and a wait (with a deadline, failing if the child exits) until `ok` holds for it. */
export function watchStderr(child: Child): { text: () => string; until: (what: string, ok: (text: string) => boolean, ms: number) => Promise<void> } {
  const chunks: string[] = [];
  child.proc.stderr!.on('data', (d: Buffer) => chunks.push(d.toString()));
  const text = () => chunks.join('');
  const until = async (what: string, ok: (text: string) => boolean, ms: number) => {
    const end = Date.now() + ms;
    while (!ok(text())) {
      assert.ok(Date.now() < end, `${child.name} did not print ${what} within ${ms} ms: ${text().slice(-2000)}`);
      assert.equal(child.proc.exitCode, null, `${child.name} exited early: ${text().slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  return { text, until };
}

/** The direct child processes of `pid` (none once it has exited). */
export function childPids(pid: number): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** The command line of `pid`, or '' when it is gone. */
export function commandOf(pid: number): string {
  try {
    return execFileSync('ps', ['-o', 'args=', '-p', String(pid)], { encoding: 'utf8' });
  } catch {
    return '';
  }
}

/** A free TCP port on 127.0.0.1 (for a coordinator that must come back on the same address). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/** A linear-test-model job on the shapes set's indices (fast: the orchestration is what is tested). */
export function linearConfig(runtime: Record<string, unknown>, testModel: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): object {
  return {
    name: 'orch',
    model: {
      text: { vocabSize: 259, maxLength: 8, layers: 1, dModel: 8, heads: 2 },
      image: { layers: 1, dModel: 8, heads: 2 },
      tokenizer: { imageSize: 8, patchSize: 4, encoder: { layers: 1, dModel: 8, heads: 2 }, decoder: { layers: 1, dModel: 8, heads: 2 }, codebookSize: 4, codeDim: 2 },
    },
    data: { synthetic: { samples: 240, seed: 0 } },
    training: {
      seed: 1,
      tokenizer: { steps: 1, batchSize: 2, optimizer: { type: 'adamw', lr: 0.001 } },
      parti: { steps: 1, batchSize: 2, optimizer: { type: 'adamw', lr: 0.001 } },
    },
    checkpoint: { everySteps: 0, atEnd: false },
    runtime: {
      heartbeatMs: 200,
      failureTimeoutMs: 2000,
      ...runtime,
      testModel: { kind: 'linear', dim: 48, steps: 24, batchSize: 24, microBatchSize: 5, lr: 0.02, ...testModel },
    },
    ...extra,
  };
}

/** Asserts that the ledger is exactly-once: steps 0..n-1 each once; each sample of every whole epoch once. */
export function checkExactlyOnce(ledger: LedgerEntry[], steps: number, samplesPerEpoch: number): void {
  const bySteps = ledger.map((e) => e.step);
  if (bySteps.length !== steps || bySteps.some((s, i) => s !== i)) throw new Error(`ledger steps are ${JSON.stringify(bySteps)}, expected 0..${steps - 1} once each`);
  const seen = new Map<number, number[]>();
  for (const e of ledger) for (const [epoch, id] of e.samples) (seen.get(epoch) ?? seen.set(epoch, []).get(epoch)!).push(id);
  for (const [epoch, ids] of seen) {
    const unique = new Set(ids);
    if (unique.size !== ids.length) throw new Error(`epoch ${epoch}: ${ids.length - unique.size} samples consumed twice`);
    const complete = ledger.some((e) => e.samples.some(([ep]) => ep > epoch));
    if (complete && unique.size !== samplesPerEpoch) throw new Error(`epoch ${epoch} is over but ${unique.size} of ${samplesPerEpoch} samples were consumed`);
  }
}

/**
 * Writes an image tokenizer at its initialization where a Parti stage reads it (`dir`, usually
 * `<run dir>/tokenizer`): the Parti stage only needs fixed codes. Returns its parameter count.
 */
export async function writeInitialTokenizer(dir: string, config: Pick<Config, 'model' | 'training'>): Promise<number> {
  const vq = new VitVqgan(config.model.tokenizer);
  await saveTrainingState(dir, {
    stage: 'tokenizer',
    step: 0,
    configHash: 'test',
    layout: vq.layout.toJSON(),
    params: vq.layout.initialize(config.training.seed),
    optimizer: createOptimizer(config.training.tokenizer.optimizer, vq.layout).exportState(),
    extra: {},
  });
  return vq.layout.size;
}
