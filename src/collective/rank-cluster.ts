import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { PartiError } from '../errors.ts';
import { collectiveSchema } from '../config/collective-schema.ts';
import type { GrpcCollectiveNodeOptions } from './grpc-transport.ts';
import { collectiveNodeFlags } from './worker-node-flags.ts';

const RANK_PROCESS = fileURLToPath(new URL('./rank-process.ts', import.meta.url));

/** An event a rank process printed (see rank-process.ts). */
export type RankEvent = { event: string; id?: string; [k: string]: unknown };

interface RankHandle {
  child: ChildProcess;
  address: string;
  events: RankEvent[];
  waiters: { match(e: RankEvent): boolean; resolve(e: RankEvent): void }[];
  exited: boolean;
  stderr: string;
}

/**
 * N rank processes (`node --import tsx rank-process.ts`) on this machine, for multi-process tests
 * and the benchmark. Every wait has a deadline; close() kills whatever still runs.
 */
export class RankCluster {
  private constructor(readonly ranks: RankHandle[]) {}

  /**
   * `nodeFlags`: flags every rank process starts with; default those of the `collective` config
   * section's defaults (collectiveNodeFlags), as a worker process gets them.
   */
  static async start(
    count: number,
    options: (i: number) => GrpcCollectiveNodeOptions,
    timeoutMs = 30_000,
    nodeFlags: string[] = collectiveNodeFlags(collectiveSchema.parse({})),
  ): Promise<RankCluster> {
    const ranks: RankHandle[] = [];
    for (let i = 0; i < count; i++) {
      // PARTI_RANK_NODE_ARGS adds node flags to every rank process (e.g. --cpu-prof for profiling).
      const extra = (process.env.PARTI_RANK_NODE_ARGS ?? '').split(' ').filter(Boolean);
      const child = spawn(process.execPath, [...nodeFlags, ...extra, '--import', 'tsx', RANK_PROCESS, JSON.stringify(options(i))], {
        stdio: ['pipe', 'pipe', 'pipe'],
        env: { ...process.env, PARTI_LOG_FORMAT: 'json' },
      });
      const h: RankHandle = { child, address: '', events: [], waiters: [], exited: false, stderr: '' };
      createInterface({ input: child.stdout! }).on('line', (line) => {
        let e: RankEvent;
        try {
          e = JSON.parse(line) as RankEvent;
        } catch {
          return;
        }
        h.events.push(e);
        for (const w of [...h.waiters]) {
          if (w.match(e)) {
            h.waiters.splice(h.waiters.indexOf(w), 1);
            w.resolve(e);
          }
        }
      });
      child.stderr!.on('data', (d: Buffer) => (h.stderr = (h.stderr + d.toString()).slice(-4000)));
      child.on('exit', () => (h.exited = true));
      child.stdin!.on('error', () => {});
      ranks.push(h);
    }
    const cluster = new RankCluster(ranks);
    try {
      await Promise.all(
        ranks.map(async (h, i) => {
          const e = await cluster.waitFor(i, (x) => x.event === 'listening', timeoutMs);
          h.address = String(e.address);
        }),
      );
    } catch (err) {
      await cluster.close();
      throw err;
    }
    return cluster;
  }

  get size(): number {
    return this.ranks.length;
  }

  send(i: number, command: object): void {
    this.ranks[i]!.child.stdin!.write(`${JSON.stringify(command)}\n`);
  }

  /** The first event of rank i (already seen or future) that matches; fails after timeoutMs. */
  waitFor(i: number, match: (e: RankEvent) => boolean, timeoutMs: number): Promise<RankEvent> {
    const h = this.ranks[i]!;
    const seen = h.events.find(match);
    if (seen) {
      h.events.splice(h.events.indexOf(seen), 1);
      return Promise.resolve(seen);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        h.waiters = h.waiters.filter((w) => w !== waiter);
        reject(new PartiError('deadline', `rank process ${i} (pid ${h.child.pid}) sent no matching event within ${timeoutMs} ms; stderr: ${h.stderr.slice(-500)}`));
      }, timeoutMs);
      const waiter = {
        match,
        resolve: (e: RankEvent) => {
          clearTimeout(timer);
          const at = h.events.indexOf(e);
          if (at >= 0) h.events.splice(at, 1);
          resolve(e);
        },
      };
      h.waiters.push(waiter);
    });
  }

  /** Configures the processes `members` (in ring order) as epoch `epoch`; waits for each to confirm. */
  async configure(epoch: number, members: number[], timeoutMs = 10_000): Promise<void> {
    const peers = members.map((i) => this.ranks[i]!.address);
    members.forEach((i, rank) => this.send(i, { cmd: 'configure', epoch, rank, peers }));
    await Promise.all(members.map((i) => this.waitFor(i, (e) => e.event === 'configured' && e.epoch === epoch, timeoutMs)));
  }

  kill(i: number): void {
    this.ranks[i]!.child.kill('SIGKILL');
  }

  /** Asks every rank to close, then kills those still running after graceMs. */
  async close(graceMs = 2000): Promise<void> {
    for (let i = 0; i < this.ranks.length; i++) {
      if (!this.ranks[i]!.exited) {
        try {
          this.send(i, { cmd: 'close' });
          this.ranks[i]!.child.stdin!.end();
        } catch {
          // already gone
        }
      }
    }
    await Promise.all(
      this.ranks.map(
        (h) =>
          new Promise<void>((resolve) => {
            if (h.exited) return resolve();
            const t = setTimeout(() => {
              h.child.kill('SIGKILL');
              resolve();
            }, graceMs);
            h.child.once('exit', () => {
              clearTimeout(t);
              resolve();
            });
          }),
      ),
    );
  }
}
