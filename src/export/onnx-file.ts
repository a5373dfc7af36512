import protobuf from 'protobufjs';
import { open, writeFile, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PartiError } from '../errors.ts';
import { ELEM_TYPE, type Attr, type Initializer, type OnnxGraph, type ValueSpec } from './onnx-graph.ts';

/**
 * Serializes an OnnxGraph to a .onnx file with protobufjs and the hand-kept proto/onnx.proto.
 * Weights of at least `externalThreshold` bytes go to an external data file beside the model
 * (TensorProto.data_location = EXTERNAL with location/offset/length), so the .onnx protobuf stays
 * small and models past protobuf's 2 GB limit export; the data file is written as a stream and has
 * no size limit. Several models may share one data file (the image decoder's prefill and step
 * graphs share their weights): a tensor already written under the same name is referenced, not
 * written again.
 */

/** ONNX IR version and default-domain opset of every graph parti writes (opset 17 needs IR >= 8). */
export const IR_VERSION = 8;
export const OPSET = 17;

/** Default size from which a weight goes to the external data file: 1 MiB. */
export const DEFAULT_EXTERNAL_THRESHOLD = 1 << 20;

/**
 * Inline weights stop once they add up to this many bytes; later ones go external whatever their
 * size, so many mid-sized tensors cannot push the .onnx file past protobuf's 2 GB either.
 */
const INLINE_CAP = 1 << 30;

/** External tensors start on multiples of this (lets a runtime map them without copying). */
const ALIGN = 64;

const PROTO_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'proto', 'onnx.proto');

let root: protobuf.Root | null = null;

/** The onnx package of proto/onnx.proto, loaded once. */
export function onnxProto(): protobuf.Root {
  root ??= protobuf.loadSync(PROTO_PATH);
  return root;
}

/** Where one tensor lies in an external data file. */
interface Placement {
  offset: number;
  length: number;
}

/**
 * An external data file being written: tensors are appended (aligned) as they are placed. Close it
 * after the last model that uses it was written.
 */
export class ExternalDataFile {
  /** File name relative to the models (what TensorProto.external_data's `location` says). */
  readonly location: string;
  private handle: FileHandle | null = null;
  private size = 0;
  private readonly placed = new Map<string, Placement>();

  constructor(readonly path: string) {
    this.location = basename(path);
  }

  /** Bytes written so far. */
  get bytes(): number {
    return this.size;
  }

  /** Tensor names stored in the file. */
  get tensorNames(): string[] {
    return [...this.placed.keys()];
  }

  /** Appends a tensor's bytes (once per name) and returns where they are. */
  async place(t: Initializer): Promise<Placement> {
    const known = this.placed.get(t.name);
    if (known) {
      if (known.length !== t.data.byteLength) throw new PartiError('internal', `external tensor ${t.name} placed twice with different sizes`);
      return known;
    }
    this.handle ??= await open(this.path, 'w');
    const pad = (ALIGN - (this.size % ALIGN)) % ALIGN;
    if (pad) await this.handle.write(new Uint8Array(pad), 0, pad, this.size);
    const offset = this.size + pad;
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    // Write in chunks: one write call is limited to 2 GB.
    const CHUNK = 1 << 30;
    for (let o = 0; o < bytes.length; o += CHUNK) {
      const part = bytes.subarray(o, Math.min(bytes.length, o + CHUNK));
      await this.handle.write(part, 0, part.length, offset + o);
    }
    this.size = offset + bytes.length;
    const p = { offset, length: bytes.length };
    this.placed.set(t.name, p);
    return p;
  }

  async close(): Promise<void> {
    await this.handle?.close();
    this.handle = null;
  }
}

/** Options of `writeOnnxModel`. */
export interface WriteOptions {
  /** Weights of at least this many bytes go to `external` (default 1 MiB). */
  externalThreshold?: number;
  /** The external data file (required when any weight reaches the threshold). */
  external?: ExternalDataFile;
  /** Key/value metadata stored in the model. */
  metadata?: Record<string, string>;
  docString?: string;
}

/** What `writeOnnxModel` wrote. */
export interface WrittenModel {
  path: string;
  /** Size of the .onnx file. */
  bytes: number;
  /** Initializers stored inline and in the external file. */
  inlineTensors: number;
  externalTensors: number;
}

function attribute(name: string, a: Attr): Record<string, unknown> {
  const T = { FLOAT: 1, INT: 2, STRING: 3, INTS: 7 };
  if ('i' in a) return { name, type: T.INT, i: a.i };
  if ('f' in a) return { name, type: T.FLOAT, f: a.f };
  if ('ints' in a) return { name, type: T.INTS, ints: a.ints };
  return { name, type: T.STRING, s: new TextEncoder().encode(a.s) };
}

function valueInfo(v: ValueSpec): Record<string, unknown> {
  return {
    name: v.name,
    type: {
      tensorType: {
        elemType: ELEM_TYPE[v.type],
        shape: { dim: v.shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function elemTypeOf(t: Initializer): number {
  return t.data instanceof Float32Array ? ELEM_TYPE.float32 : ELEM_TYPE.int64;
}

/** Writes `graph` as an ONNX model (IR 8, opset 17) at `path`. */
export async function writeOnnxModel(graph: OnnxGraph, path: string, opts: WriteOptions = {}): Promise<WrittenModel> {
  const threshold = opts.externalThreshold ?? DEFAULT_EXTERNAL_THRESHOLD;
  const initializers: Record<string, unknown>[] = [];
  let inlineBytes = 0;
  let external = 0;
  for (const t of graph.initializers) {
    const base = { name: t.name, dims: t.dims, dataType: elemTypeOf(t) };
    const big = t.data.byteLength >= threshold || inlineBytes + t.data.byteLength > INLINE_CAP;
    if (big && t.data instanceof Float32Array) {
      if (!opts.external) throw new PartiError('internal', `ONNX weight ${t.name} needs an external data file`);
      const p = await opts.external.place(t);
      initializers.push({
        ...base,
        dataLocation: 1,
        externalData: [
          { key: 'location', value: opts.external.location },
          { key: 'offset', value: String(p.offset) },
          { key: 'length', value: String(p.length) },
        ],
      });
      external++;
    } else {
      inlineBytes += t.data.byteLength;
      initializers.push({ ...base, rawData: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength) });
    }
  }
  const model = {
    irVersion: IR_VERSION,
    opsetImport: [{ domain: '', version: OPSET }],
    producerName: 'parti',
    producerVersion: '0.1.0',
    docString: opts.docString ?? '',
    metadataProps: Object.entries(opts.metadata ?? {}).map(([key, value]) => ({ key, value })),
    graph: {
      name: graph.name,
      node: graph.nodes.map((n) => ({
        name: n.name,
        opType: n.op,
        input: n.inputs,
        output: n.outputs,
        attribute: Object.entries(n.attrs).map(([k, a]) => attribute(k, a)),
      })),
      initializer: initializers,
      input: graph.inputs.map(valueInfo),
      output: graph.outputs.map(valueInfo),
    },
  };
  const ModelProto = onnxProto().lookupType('onnx.ModelProto');
  const bytes = ModelProto.encode(ModelProto.fromObject(model)).finish();
  await writeFile(path, bytes);
  return { path, bytes: bytes.length, inlineTensors: graph.initializers.length - external, externalTensors: external };
}

/** Reads a .onnx file back as a plain object (tests and `--verify` inspect it). */
export function decodeOnnxModel(bytes: Uint8Array): {
  irVersion: number;
  opsetImport: { domain?: string; version: number }[];
  graph: {
    node: { opType: string }[];
    initializer: { name: string; dims: number[]; dataLocation?: number; externalData?: { key: string; value: string }[]; rawData?: Uint8Array }[];
    input: { name: string }[];
    output: { name: string }[];
  };
} {
  const ModelProto = onnxProto().lookupType('onnx.ModelProto');
  return ModelProto.toObject(ModelProto.decode(bytes), { longs: Number, enums: Number, defaults: false }) as never;
}
