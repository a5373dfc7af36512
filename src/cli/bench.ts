import type { Command } from 'commander';
import { usageError } from '../errors.ts';
import { benchAllReduce, benchLoopbackTcp, type AllReduceBenchRow } from '../collective/allreduce-bench.ts';
import { WIRE_COMPRESSIONS, type WireCompression } from '../collective/wire-compression.ts';
import { collectiveSchema } from '../config/collective-schema.ts';

/** The bench measures what workers run: the collective section's defaults. */
const COLLECTIVE_DEFAULTS = collectiveSchema.parse({});

function int(flag: string, min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw usageError(flag, `must be an integer in ${min}..${max}, got ${v}`);
    return n;
  };
}

function mibList(v: string): number[] {
  const xs = v.split(',').map((s) => Number(s.trim()));
  if (xs.length === 0 || xs.some((x) => !Number.isFinite(x) || x <= 0 || x > 2048)) {
    throw usageError('--mib', `must be sizes in MiB in (0, 2048], comma-separated, got ${v}`);
  }
  return xs;
}

/** `parti bench allreduce`: ring all-reduce between N local processes over gRPC, nccl-tests style. */
export function register(program: Command): void {
  const bench = program.command('bench').description('Benchmarks of parti parts on this machine.');
  bench
    .command('allreduce')
    .description('Ring all-reduce between N processes on 127.0.0.1 over gRPC: median time, algbw and busbw per size, plus the raw loopback TCP limit.')
    .option('--world <n>', 'rank processes', int('--world', 1, 16), 2)
    .option('--mib <sizes>', 'buffer sizes in MiB of float32, comma-separated', mibList, [1, 16, 64])
    .option('--compress <mode>', `wire compression: ${WIRE_COMPRESSIONS.join('|')}`, 'none')
    .option('--repeat <n>', 'timed iterations per size', int('--repeat', 1, 1000), 10)
    .option('--warmup <n>', 'untimed iterations first', int('--warmup', 0, 100), 2)
    .option('--streams <n>', 'gRPC streams (TCP connections) per peer', int('--streams', 1, 16), COLLECTIVE_DEFAULTS.streams)
    .option('--chunk-kib <n>', 'chunk (message) size in KiB', int('--chunk-kib', 4, 65536), COLLECTIVE_DEFAULTS.chunkKiB)
    .option('--inflight <n>', 'chunks in flight per collective', int('--inflight', 1, 64), COLLECTIVE_DEFAULTS.inflight)
    .option('--tcp-mib <n>', 'MiB for the raw TCP probe (0 skips it)', int('--tcp-mib', 0, 65536), 1024)
    .option('--json', 'one JSON object per line')
    .action(async (o: { world: number; mib: number[]; compress: string; repeat: number; warmup: number; streams: number; chunkKib: number; inflight: number; tcpMib: number; json?: boolean }) => {
      if (!(WIRE_COMPRESSIONS as readonly string[]).includes(o.compress)) {
        throw usageError('--compress', `must be one of ${WIRE_COMPRESSIONS.join('|')}, got ${o.compress}`);
      }
      const print = (row: AllReduceBenchRow): void => {
        if (o.json) process.stdout.write(`${JSON.stringify({ bench: 'allreduce', ...row })}\n`);
        else {
          process.stdout.write(
            `allreduce world=${row.world} size=${row.mib}MiB compress=${row.compress} median=${(row.median_s * 1000).toFixed(1)}ms ` +
              `algbw=${row.algbw_GBps.toFixed(3)}GB/s busbw=${row.busbw_GBps.toFixed(3)}GB/s cpu/rank=${(row.cpu_s_per_rank * 1000).toFixed(0)}ms (streams=${row.streams} chunk=${row.chunk_kib}KiB inflight=${row.inflight})\n`,
          );
        }
      };
      await benchAllReduce(
        { world: o.world, mibs: o.mib, compress: o.compress as WireCompression, repeat: o.repeat, warmup: o.warmup, streams: o.streams, chunkKiB: o.chunkKib, inflight: o.inflight, tcpMiB: o.tcpMib },
        print,
      );
      if (o.tcpMib > 0) {
        const tcp = await benchLoopbackTcp(o.tcpMib);
        if (o.json) process.stdout.write(`${JSON.stringify({ bench: 'loopback-tcp', ...tcp })}\n`);
        else process.stdout.write(`loopback tcp (node -> node, one way) ${tcp.tcp_mib}MiB in ${(tcp.seconds * 1000).toFixed(0)}ms = ${tcp.GBps.toFixed(3)}GB/s\n`);
      }
    });
}
