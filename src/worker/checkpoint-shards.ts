/**
 * A worker's part of a checkpoint in object storage (the storage engineer's checkpoint format):
 * `params.bin` (rank 0: the flat float32 parameters) and, per optimizer shard,
 * `optimizer-rank-R.bin` (float32, slot-major) with `optimizer-rank-R.json` (its range, slots and
 * update count). Loading cuts any range out of the shards that were written, so a job can resume
 * with another world size or another ZeRO stage.
 *
 * Saving is asynchronous: the objects are hashed and uploaded by a CheckpointWriter (its upload
 * thread by default) while the worker trains on; save() resolves when they have landed.
 */
import { loadCheckpoint } from '../storage/checkpoint-load.ts';
import { CheckpointWriter, type SnapshotObject } from '../storage/checkpoint-writer.ts';
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

/** Options of CheckpointShards. */
export interface CheckpointShardsOptions {
  /**
   * Uploads the objects; default: a CheckpointWriter on the store's URL with its upload thread,
   * without transferring the arrays (the worker reuses its snapshot buffer).
   */
  writer?: CheckpointWriter;
}

export class CheckpointShards implements WorkerStateStore {
  private writer: CheckpointWriter | null;

  constructor(
    private readonly store: ObjectStore,
    private readonly configHash: string,
    options: CheckpointShardsOptions = {},
  ) {
    this.writer = options.writer ?? null;
  }

  private uploads(): CheckpointWriter {
    this.writer ??= new CheckpointWriter({ url: this.store.url, transfer: false });
    return this.writer;
  }

  /**
   * Hands this rank's objects to the upload (synchronously: the arrays are the snapshot and must
   * not change until the promise settles) and resolves with their manifest entries once all have
   * landed. One save at a time: a second one while the first uploads is refused.
   */
  save(s: Parameters<WorkerStateStore['save']>[0]): Promise<SavedObject[]> {
    const started = this.start_(s.step, s.rank, s.params, { ...s.optimizer, state: [s.optimizer.state] }, false);
    return started.done;
  }

  /**
   * Saves from the live state in shared memory: the upload thread copies it while the caller goes
   * on, and `copied` resolves when the caller may change it again (see WorkerStateStore.saveLive).
   */
  saveLive(s: Parameters<NonNullable<WorkerStateStore['saveLive']>>[0]): { copied: Promise<void>; done: Promise<SavedObject[]> } {
    return this.start_(s.step, s.rank, s.params, s.optimizer, true);
  }

  private start_(
    step: number,
    rank: number,
    params: Float32Array | null,
    optimizer: { start: number; end: number; slots: number; updates: number; state: readonly Float32Array[] },
    live: boolean,
  ): { copied: Promise<void>; done: Promise<SavedObject[]> } {
    const objects: SnapshotObject[] = [];
    if (params) objects.push({ name: 'params.bin', bytes: params });
    const { start, end, slots, updates, state } = optimizer;
    const header: ShardHeader = { start, end, slots, updates };
    objects.push({ name: `optimizer-rank-${rank}.json`, bytes: Buffer.from(JSON.stringify(header)) });
    // slot-major: the slot arrays one after the other
    objects.push({ name: `optimizer-rank-${rank}.bin`, bytes: state.length === 1 ? state[0]! : state });
    const writer = this.uploads();
    const ticket = writer.save(step, objects, { copyInThread: live });
    if (!ticket) {
      const busy = writer.state.state === 'saving' ? writer.state.step : '?';
      return { copied: Promise.resolve(), done: Promise.reject(new PartiError('checkpoint', `checkpoint ${step} in ${this.store.url}: the save of step ${busy} is still uploading`)) };
    }
    return { copied: ticket.copied, done: ticket.done.then((refs) => refs.map(({ key, size, sha256, name }) => ({ key, size, sha256, name }))) };
  }

  /** Starts the upload thread now, so that the first checkpoint does not wait for it to load. */
  async start(): Promise<void> {
    await this.uploads().start();
  }

  /** Waits for the upload in flight, then stops the upload thread. */
  async close(): Promise<void> {
    await this.writer?.close();
    this.writer = null;
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
