/**
 * One collective worker in its own process, driven by JSON lines on stdin, answering JSON lines on
 * stdout: what the multi-process tests (test/collective-grpc.test.ts) and `parti bench allreduce`
 * start N times. Run: `node --import tsx src/collective/rank-process.ts '<GrpcCollectiveNodeOptions JSON>'`.
 *
 * Commands: {cmd:'configure', epoch, rank, peers} | {cmd:'allreduce', id, length, seed, op,
 * compress, deadlineMs, repeat, check, inPlace} | {cmd:'close'}. Events: {event:'listening',
 * address}, {event:'started', id} after the first collective of a command, {event:'done', id, ...}.
 */
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import { PartiError } from '../errors.ts';
import { createGrpcCollectiveNode, type GrpcCollectiveNodeOptions } from './grpc-transport.ts';
import { float64Reference, maxAbsError, seededInput } from './seeded-input.ts';
import type { WireCompression } from './wire-compression.ts';

interface AllReduceCommand {
  cmd: 'allreduce';
  id: string;
  length: number;
  seed: number;
  op: 'sum' | 'mean';
  compress: WireCompression;
  deadlineMs: number;
  repeat: number;
  /** Compare with the float64 reference of all ranks' inputs (costly for big arrays). */
  check: boolean;
  inPlace: boolean;
}

type Command =
  | { cmd: 'configure'; epoch: number; rank: number; peers: string[] }
  | AllReduceCommand
  | { cmd: 'close' };

const send = (o: object): void => {
  process.stdout.write(`${JSON.stringify(o)}\n`);
};

const options = JSON.parse(process.argv[2] ?? '{}') as GrpcCollectiveNodeOptions;
const node = await createGrpcCollectiveNode(options);
let world = 1;
let rank = 0;
send({ event: 'listening', address: node.address, pid: process.pid });

async function allReduce(c: AllReduceCommand): Promise<void> {
  const input = seededInput(c.length, c.seed, rank);
  const times: number[] = [];
  /** CPU seconds (user + system) of each iteration: a cost measure that the machine's load does not inflate. */
  const cpu: number[] = [];
  let result: Float32Array = new Float32Array(0);
  try {
    for (let i = 0; i < c.repeat; i++) {
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      result = await node.allReduce(input, { op: c.op, compress: c.compress, deadlineMs: c.deadlineMs, inPlace: c.inPlace });
      times.push((performance.now() - t0) / 1000);
      const c1 = process.cpuUsage(c0);
      cpu.push((c1.user + c1.system) / 1e6);
      if (i === 0) send({ event: 'started', id: c.id });
    }
    const sha256 = createHash('sha256').update(new Uint8Array(result.buffer, result.byteOffset, result.byteLength)).digest('hex');
    let maxErr: number | null = null;
    if (c.check) {
      const inputs = Array.from({ length: world }, (_, r) => seededInput(c.length, c.seed, r));
      maxErr = maxAbsError(result, float64Reference(inputs, c.op));
    }
    send({ event: 'done', id: c.id, ok: true, sha256, maxErr, times, cpu, length: result.length });
  } catch (err) {
    const e = PartiError.from(err);
    send({ event: 'done', id: c.id, ok: false, code: e.code, message: e.message, times });
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const c = JSON.parse(line) as Command;
  if (c.cmd === 'configure') {
    world = c.peers.length;
    rank = c.rank;
    node.configure(c);
    send({ event: 'configured', epoch: c.epoch });
  } else if (c.cmd === 'allreduce') {
    void allReduce(c);
  } else if (c.cmd === 'close') {
    break;
  }
}
await node.close();
process.exit(0);
