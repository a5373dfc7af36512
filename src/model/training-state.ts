import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PartiError } from '../errors.ts';
import type { OptimizerState } from './optimizer.ts';
import type { ParamLayout } from './param-layout.ts';

/**
 * Everything needed to resume a stage or hand it to a joining worker, as plain arrays and JSON:
 * the step, the flat parameters, the optimizer state and small extra state (e.g. the tokenizer's
 * dead-code clock). The checkpoint engineer replaces the storage; the shape stays.
 */
export interface TrainingState {
  stage: string;
  /** Optimizer steps completed. */
  step: number;
  configHash: string;
  layout: { name: string; shape: number[]; offset: number }[];
  params: Float32Array;
  optimizer: OptimizerState;
  /** Extra arrays (e.g. `lastUsed` of the dead-code re-seeder) and JSON. */
  extra: Record<string, Float32Array | Int32Array>;
  /** Where the data stream stands (EpochPlan cursor), as JSON. */
  data?: unknown;
}

interface Manifest {
  format: 'parti-local-v1';
  stage: string;
  step: number;
  configHash: string;
  layout: TrainingState['layout'];
  data?: unknown;
  optimizer: { type: string; updates: number; range: [number, number] };
  /** Arrays inside state.bin, in order: name, dtype, offset (bytes), length (elements). */
  arrays: { name: string; dtype: 'float32' | 'int32'; offset: number; length: number }[];
}

/** Writes a state to `dir` (checkpoint.json + state.bin), replacing any earlier one atomically per file. */
export async function saveTrainingState(dir: string, s: TrainingState): Promise<void> {
  await mkdir(dir, { recursive: true });
  const arrays: { name: string; data: Float32Array | Int32Array }[] = [{ name: 'params', data: s.params }];
  for (const [k, v] of Object.entries(s.optimizer.slots)) arrays.push({ name: `optimizer.${k}`, data: v });
  for (const [k, v] of Object.entries(s.extra)) arrays.push({ name: `extra.${k}`, data: v });
  let offset = 0;
  const entries: Manifest['arrays'] = arrays.map((a) => {
    const e = { name: a.name, dtype: a.data instanceof Int32Array ? ('int32' as const) : ('float32' as const), offset, length: a.data.length };
    offset += a.data.byteLength;
    return e;
  });
  const bin = Buffer.alloc(offset);
  arrays.forEach((a, i) => Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).copy(bin, entries[i]!.offset));
  const manifest: Manifest = {
    format: 'parti-local-v1',
    stage: s.stage,
    step: s.step,
    configHash: s.configHash,
    layout: s.layout,
    data: s.data,
    optimizer: { type: s.optimizer.type, updates: s.optimizer.updates, range: s.optimizer.range },
    arrays: entries,
  };
  // Data first, manifest last: a state without a manifest does not exist.
  await writeFile(join(dir, 'state.bin.tmp'), bin);
  await rename(join(dir, 'state.bin.tmp'), join(dir, 'state.bin'));
  await writeFile(join(dir, 'checkpoint.json.tmp'), JSON.stringify(manifest));
  await rename(join(dir, 'checkpoint.json.tmp'), join(dir, 'checkpoint.json'));
}

/** Reads a state written by saveTrainingState; null when `dir` has none. Checks it fits `layout`. */
export async function loadTrainingState(dir: string, layout: ParamLayout): Promise<TrainingState | null> {
  let manifest: Manifest;
  try {
    manifest = JSON.parse(await readFile(join(dir, 'checkpoint.json'), 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new PartiError('checkpoint', `${join(dir, 'checkpoint.json')}: unreadable (${(err as Error).message})`);
  }
  if (manifest.format !== 'parti-local-v1') throw new PartiError('checkpoint', `${dir}: unknown checkpoint format ${manifest.format}`);
  if (!layout.sameAs(manifest.layout)) throw new PartiError('checkpoint', `${dir}: parameter layout differs from the config's model`);
  const bin = await readFile(join(dir, 'state.bin'));
  const get = (e: Manifest['arrays'][number]) => {
    const bytes = bin.subarray(e.offset, e.offset + e.length * 4);
    if (bytes.length !== e.length * 4) throw new PartiError('checkpoint', `${dir}: state.bin is truncated at ${e.name}`);
    const copy = new Uint8Array(bytes).buffer;
    return e.dtype === 'int32' ? new Int32Array(copy) : new Float32Array(copy);
  };
  const slots: Record<string, Float32Array> = {};
  const extra: Record<string, Float32Array | Int32Array> = {};
  let params: Float32Array | null = null;
  for (const e of manifest.arrays) {
    if (e.name === 'params') params = get(e) as Float32Array;
    else if (e.name.startsWith('optimizer.')) slots[e.name.slice('optimizer.'.length)] = get(e) as Float32Array;
    else if (e.name.startsWith('extra.')) extra[e.name.slice('extra.'.length)] = get(e);
  }
  if (!params || params.length !== layout.size) throw new PartiError('checkpoint', `${dir}: parameters missing or of the wrong size`);
  return {
    stage: manifest.stage,
    step: manifest.step,
    configHash: manifest.configHash,
    layout: manifest.layout,
    params,
    optimizer: { type: manifest.optimizer.type as OptimizerState['type'], updates: manifest.optimizer.updates, range: manifest.optimizer.range, slots },
    extra,
    data: manifest.data,
  };
}
