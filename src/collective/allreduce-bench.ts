import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import { PartiError } from '../errors.ts';
import { collectiveSchema } from '../config/collective-schema.ts';
import { RankCluster } from './rank-cluster.ts';
import { collectiveNodeFlags } from './worker-node-flags.ts';
import type { WireCompression } from './wire-compression.ts';

/** What `parti bench allreduce` measures. */
export interface AllReduceBenchOptions {
  /** Rank processes on 127.0.0.1. */
  world: number;
  /** Buffer sizes in MiB of float32 (the size before any compression). */
  mibs: number[];
  compress: WireCompression;
  /** Timed iterations per size (after `warmup` untimed ones). */
  repeat: number;
  warmup: number;
  streams: number;
  chunkKiB: number;
  inflight: number;
  /** Also measure raw TCP between two Node processes (MiB sent). 0 skips it. */
  tcpMiB: number;
  /**
   * V8 --initial-old-space-size of the rank processes, MiB (0: V8's default). Default: the
   * `collective.v8InitialOldSpaceMiB` default, what worker processes are to start with.
   */
  v8InitialOldSpaceMiB?: number;
}

/** One result line; GB/s are 1e9 bytes per second, as nccl-tests report them. */
export interface AllReduceBenchRow {
  world: number;
  mib: number;
  compress: WireCompression;
  median_s: number;
  algbw_GBps: number;
  busbw_GBps: number;
  /** CPU seconds (user+system) per iteration and rank, median: the cost, whatever the load. */
  cpu_s_per_rank: number;
  streams: number;
  chunk_kib: number;
  inflight: number;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/**
 * Runs ring all-reduce between `world` processes: each iteration's time is the slowest rank's;
 * per size the median over iterations gives algbw = bytes / t and busbw = algbw * 2(N-1)/N.
 */
export async function benchAllReduce(o: AllReduceBenchOptions, onRow: (row: AllReduceBenchRow) => void): Promise<void> {
  const deadlineMs = 120_000;
  const cluster = await RankCluster.start(o.world, () => ({
    jobId: 'bench',
    streams: o.streams,
    chunkBytes: o.chunkKiB * 1024,
    inflight: o.inflight,
    deadlineMs,
    maxMessageBytes: Math.max(64 << 20, o.chunkKiB * 1024 + 4096),
  }), 30_000, collectiveNodeFlags({ v8InitialOldSpaceMiB: o.v8InitialOldSpaceMiB ?? collectiveSchema.parse({}).v8InitialOldSpaceMiB }));
  try {
    const members = Array.from({ length: o.world }, (_, i) => i);
    await cluster.configure(1, members);
    for (const [k, mib] of o.mibs.entries()) {
      const id = `size-${k}`;
      const length = Math.round((mib * 1024 * 1024) / 4);
      for (const i of members) {
        cluster.send(i, { cmd: 'allreduce', id, length, seed: k, op: 'mean', compress: o.compress, deadlineMs, repeat: o.warmup + o.repeat, check: false, inPlace: true });
      }
      const done = await Promise.all(members.map((i) => cluster.waitFor(i, (e) => e.event === 'done' && e.id === id, deadlineMs * (o.warmup + o.repeat))));
      const failed = done.find((d) => !d.ok);
      if (failed) throw new PartiError('internal', `bench all-reduce of ${mib} MiB failed: ${String(failed.code)}: ${String(failed.message)}`);
      const times = (done[0]!.times as number[]).slice(o.warmup).map((_, it) => Math.max(...done.map((d) => (d.times as number[])[o.warmup + it]!)));
      const t = median(times);
      const cpu = median(done.flatMap((d) => (d.cpu as number[]).slice(o.warmup)));
      const algbw = (length * 4) / t / 1e9;
      onRow({
        world: o.world, mib, compress: o.compress, median_s: t, algbw_GBps: algbw, busbw_GBps: (algbw * 2 * (o.world - 1)) / o.world,
        cpu_s_per_rank: cpu, streams: o.streams, chunk_kib: o.chunkKiB, inflight: o.inflight,
      });
    }
  } finally {
    await cluster.close(10_000);
  }
}

const SINK = `
const net = require('node:net');
const total = Number(process.argv[1]);
const server = net.createServer((sock) => {
  let got = 0;
  sock.on('data', (d) => { got += d.length; if (got >= total) { sock.end('k'); server.close(); } });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(server.address().port + '\\n'));
`;

/** Raw loopback TCP from this process to a child Node process that discards: GB/s one way. */
export async function benchLoopbackTcp(mib: number): Promise<{ tcp_mib: number; seconds: number; GBps: number }> {
  const total = mib * 1024 * 1024;
  const child = spawn(process.execPath, ['-e', SINK, String(total)], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const [first] = (await Promise.race([
      once(child.stdout!, 'data'),
      new Promise((_, reject) => setTimeout(() => reject(new PartiError('deadline', 'tcp sink did not start within 10 s')), 10_000)),
    ])) as [Buffer];
    const port = Number(first.toString().trim());
    const sock = connect(port, '127.0.0.1');
    await once(sock, 'connect');
    const block = Buffer.alloc(4 << 20, 1);
    const t0 = performance.now();
    const acked = once(sock, 'data');
    for (let sent = 0; sent < total; sent += block.length) {
      if (!sock.write(block)) await once(sock, 'drain');
    }
    await acked;
    const seconds = (performance.now() - t0) / 1000;
    sock.destroy();
    return { tcp_mib: mib, seconds, GBps: total / seconds / 1e9 };
  } finally {
    child.kill('SIGKILL');
  }
}
