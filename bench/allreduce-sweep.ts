// Sweeps transport settings of the ring all-reduce, interleaving configurations round by round so
// that a machine whose load changes (it is shared) treats them alike. Prints one JSON line per run
// and a median per configuration at the end.
//   flock /tmp/parti-bench.lock npx tsx bench/allreduce-sweep.ts [rounds] [mib] [world]
import { benchAllReduce, benchLoopbackTcp, type AllReduceBenchRow } from '../src/collective/allreduce-bench.ts';

const rounds = Number(process.argv[2] ?? 3);
const mib = Number(process.argv[3] ?? 64);
const world = Number(process.argv[4] ?? 2);
// Default: around the measured best (s2c4096i1, the config defaults) on a 2-core machine.
const configs = (process.env.SWEEP ?? 's2c4096i1 s2c4096i2 s2c4096i4 s1c4096i1 s2c2048i1')
  .split(' ')
  .map((c) => {
    const m = /^s(\d+)c(\d+)i(\d+)$/.exec(c)!;
    return { streams: Number(m[1]), chunkKiB: Number(m[2]), inflight: Number(m[3]) };
  });
const results = new Map<string, number[]>();
const cpus = new Map<string, number[]>();
const tcp: number[] = [];
const extra = process.env.PARTI_RANK_NODE_ARGS ?? '';
for (let r = 0; r < rounds; r++) {
  for (const c of configs) {
    await benchAllReduce({ world, mibs: [mib], compress: 'none', repeat: 5, warmup: 1, tcpMiB: 0, ...c }, (row: AllReduceBenchRow) => {
      const key = `s${c.streams}c${c.chunkKiB}i${c.inflight}`;
      results.set(key, [...(results.get(key) ?? []), row.busbw_GBps]);
      cpus.set(key, [...(cpus.get(key) ?? []), row.cpu_s_per_rank]);
      console.log(JSON.stringify({ round: r, ...row }));
    });
  }
  const t = await benchLoopbackTcp(512);
  tcp.push(t.GBps);
  console.log(JSON.stringify({ round: r, bench: 'loopback-tcp', ...t }));
}
const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
for (const [k, v] of results) {
  console.log(`${k} ${extra} busbw median ${med(v).toFixed(3)} GB/s  cpu/rank median ${(med(cpus.get(k)!) * 1000).toFixed(0)} ms  runs ${v.map((x) => x.toFixed(3)).join(' ')}`);
}
console.log(`loopback tcp median ${med(tcp).toFixed(3)} GB/s  runs ${tcp.map((x) => x.toFixed(3)).join(' ')}`);
process.exit(0);
