/**
 * A worker's part of a checkpoint in object storage (the storage engineer's checkpoint format):
 * `params.bin` (rank 0: the flat float32 parameters) and, per optimizer shard,
 * `optimizer-rank-R.bin` (float32, slot-major) with `optimizer-rank-R.json` (its range, slots and
 * update count). Loading cuts any range out of the shards that were written, so a job can resume
 * with another world size or another ZeRO stage.
 */
import { loadCheckpoint } from '../storage/checkpoint-load.ts';
import { writeCheckpointObject } from '../storage/checkpoint-commit.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { PartiError } from '../errors.ts';
import type { SavedObject, WorkerStateStore } from './worker-runtime.ts';
import type { OptimizerSnapshot } from './trainable.ts';

interface ShardHeader {
  start: number;
  end: number;
  slots: number;
  updates: number;
}

function floats(buf: Buffer): Float32Array {
  const copy = new Uint8Array(buf.byteLength);
  copy.set(buf);
  return new Float32Array(copy.buffer);
}

export class CheckpointShards implements WorkerStateStore {
  constructor(
    private readonly store: ObjectStore,
    private readonly configHash: string,
  ) {}

  async save(s: Parameters<WorkerStateStore['save']>[0]): Promise<SavedObject[]> {
    const out: SavedObject[] = [];
    if (s.params) out.push(await writeCheckpointObject(this.store, s.step, 'params.bin', s.params));
    const { start, end, slots, updates, state } = s.optimizer;
    const header: ShardHeader = { start, end, slots, updates };
    out.push(await writeCheckpointObject(this.store, s.step, `optimizer-rank-${s.rank}.json`, Buffer.from(JSON.stringify(header))));
    out.push(await writeCheckpointObject(this.store, s.step, `optimizer-rank-${s.rank}.bin`, state));
    return out.map(({ key, size, sha256, name }) => ({ key, size, sha256, name }) as SavedObject);
  }

  async load(step: number, start: number, end: number): Promise<{ params: Float32Array; optimizer: OptimizerSnapshot }> {
    const headers = await loadCheckpoint(this.store, step, { configHash: this.configHash, select: (o) => o.name.endsWith('.json') });
    const wanted = new Set(['params.bin']);
    const shards: { rank: string; h: ShardHeader }[] = [];
    for (const [name, bytes] of headers.objects) {
      const m = /^optimizer-rank-(\d+)\.json$/.exec(name);
      if (!m) continue;
      const h = JSON.parse(bytes.toString('utf8')) as ShardHeader;
      if (h.end > start && h.start < end) {
        shards.push({ rank: m[1]!, h });
        wanted.add(`optimizer-rank-${m[1]}.bin`);
      }
    }
    const loaded = await loadCheckpoint(this.store, step, { configHash: this.configHash, select: (o) => wanted.has(o.name) });
    const paramsBytes = loaded.objects.get('params.bin');
    if (!paramsBytes) throw new PartiError('checkpoint', `checkpoint ${step} in ${this.store.url}: no params.bin`);
    const params = floats(paramsBytes);
    const len = end - start;
    let slots = 0;
    let updates = 0;
    let covered = 0;
    let state = new Float32Array(0);
    for (const { rank, h } of shards) {
      const data = floats(loaded.objects.get(`optimizer-rank-${rank}.bin`)!);
      const n = h.end - h.start;
      if (data.length !== n * h.slots) throw new PartiError('checkpoint', `checkpoint ${step}: optimizer-rank-${rank}.bin has ${data.length} floats, its header says ${n * h.slots}`);
      if (!slots) {
        slots = h.slots;
        updates = h.updates;
        state = new Float32Array(len * slots);
      }
      const a = Math.max(start, h.start);
      const b = Math.min(end, h.end);
      for (let k = 0; k < slots; k++) state.set(data.subarray(k * n + (a - h.start), k * n + (b - h.start)), k * len + (a - start));
      covered += b - a;
    }
    if (covered !== len) throw new PartiError('checkpoint', `checkpoint ${step}: optimizer shards cover ${covered} of the ${len} parameters [${start}, ${end})`);
    return { params, optimizer: { updates, state } };
  }
}
