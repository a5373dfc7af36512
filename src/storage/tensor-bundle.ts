import { z } from 'zod';
import { PartiError } from '../errors.ts';

/**
 * Named arrays in one checkpoint object: `PTB1` (4 bytes), header length (u32 LE), a JSON header
 * listing each array's name, dtype, shape, offset and length, then the raw little-endian data,
 * each array aligned to 64 bytes so that it can be read back as a view without a copy.
 *
 * encodeTensorBundle does not copy the data either: it returns the header and the caller's own
 * arrays as chunks for writeCheckpointObject / CheckpointWriter.
 */
const MAGIC = Buffer.from('PTB1', 'ascii');
const ALIGN = 64;

export type BundleDtype = 'float32' | 'int32' | 'uint8' | 'float64';
export type BundleArray = Float32Array | Int32Array | Uint8Array | Float64Array;

/** One named array. */
export interface BundleEntry {
  name: string;
  shape: number[];
  data: BundleArray;
}

const headerSchema = z.strictObject({
  tensors: z.array(
    z.strictObject({
      name: z.string().min(1),
      dtype: z.enum(['float32', 'int32', 'uint8', 'float64']),
      shape: z.array(z.number().int().min(0)),
      offset: z.number().int().min(0),
      byteLength: z.number().int().min(0),
    }),
  ),
});

function dtypeOf(a: BundleArray): BundleDtype {
  if (a instanceof Float32Array) return 'float32';
  if (a instanceof Int32Array) return 'int32';
  if (a instanceof Float64Array) return 'float64';
  return 'uint8';
}

const CTORS = { float32: Float32Array, int32: Int32Array, uint8: Uint8Array, float64: Float64Array } as const;

/** The chunks of a bundle (header, padding and the arrays themselves, uncopied). */
export function encodeTensorBundle(entries: readonly BundleEntry[]): Uint8Array[] {
  if (new Set(entries.map((e) => e.name)).size !== entries.length) throw new PartiError('internal', 'tensor bundle: duplicate array names');
  const layout: z.infer<typeof headerSchema>['tensors'] = [];
  let offset = 0;
  for (const e of entries) {
    const count = e.shape.reduce((a, b) => a * b, 1);
    if (count !== e.data.length) throw new PartiError('internal', `tensor bundle: ${e.name} has shape [${e.shape}] but ${e.data.length} elements`);
    offset = Math.ceil(offset / ALIGN) * ALIGN;
    layout.push({ name: e.name, dtype: dtypeOf(e.data), shape: e.shape, offset, byteLength: e.data.byteLength });
    offset += e.data.byteLength;
  }
  const json = Buffer.from(JSON.stringify({ tensors: layout }));
  const headerLen = Math.ceil((8 + json.length) / ALIGN) * ALIGN;
  const header = Buffer.alloc(headerLen, 0x20);
  MAGIC.copy(header, 0);
  header.writeUInt32LE(json.length, 4);
  json.copy(header, 8);
  const chunks: Uint8Array[] = [header];
  let at = 0;
  entries.forEach((e, i) => {
    const pad = layout[i]!.offset - at;
    if (pad > 0) chunks.push(new Uint8Array(pad));
    chunks.push(new Uint8Array(e.data.buffer, e.data.byteOffset, e.data.byteLength));
    at = layout[i]!.offset + e.data.byteLength;
  });
  return chunks;
}

/** Reads a bundle; arrays are views into `bytes` when aligned, copies otherwise. */
export function decodeTensorBundle(bytes: Uint8Array, source = 'tensor bundle'): Map<string, BundleEntry> {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < 8 || !buf.subarray(0, 4).equals(MAGIC)) throw new PartiError('checkpoint', `${source}: not a tensor bundle (bad magic)`);
  const jsonLen = buf.readUInt32LE(4);
  if (8 + jsonLen > buf.length) throw new PartiError('checkpoint', `${source}: header runs past the end`);
  let header: z.infer<typeof headerSchema>;
  try {
    header = headerSchema.parse(JSON.parse(buf.subarray(8, 8 + jsonLen).toString('utf8')));
  } catch (err) {
    throw new PartiError('checkpoint', `${source}: bad header (${(err as Error).message.split('\n')[0]})`);
  }
  const dataStart = Math.ceil((8 + jsonLen) / ALIGN) * ALIGN;
  const out = new Map<string, BundleEntry>();
  for (const t of header.tensors) {
    const start = dataStart + t.offset;
    if (start + t.byteLength > buf.length) throw new PartiError('checkpoint', `${source}: array ${t.name} runs past the end`);
    const Ctor = CTORS[t.dtype];
    const count = t.byteLength / Ctor.BYTES_PER_ELEMENT;
    // The header is untrusted: its shape must describe exactly the bytes it points at, or model
    // code would read a tensor of one shape from data of another.
    const elements = t.shape.reduce((x, y) => x * y, 1);
    if (!Number.isInteger(count) || elements !== count) {
      throw new PartiError('checkpoint', `${source}: array ${t.name.slice(0, 100)} has shape [${t.shape.slice(0, 8).join(', ')}] but ${t.byteLength} bytes of ${t.dtype}`);
    }
    if (out.has(t.name)) throw new PartiError('checkpoint', `${source}: array ${t.name.slice(0, 100)} appears twice`);
    const abs = buf.byteOffset + start;
    const data =
      abs % Ctor.BYTES_PER_ELEMENT === 0
        ? new Ctor(buf.buffer as ArrayBuffer, abs, count)
        : new Ctor(new Uint8Array(buf.subarray(start, start + t.byteLength)).buffer, 0, count);
    out.set(t.name, { name: t.name, shape: t.shape, data });
  }
  return out;
}
