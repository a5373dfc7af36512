import { PartiError } from '../errors.ts';
import { constantTimeEqual } from '../security/constant-time.ts';

/** What a frame is: tensor bytes of a collective, or the news that the sender aborted the epoch. */
export type FrameKind = 'data' | 'abort';

/** Phases of a collective; part of a frame's address so that frames never mix. */
export const Phase = { reduceScatter: 1, allGather: 2, broadcastLength: 3, broadcastData: 4 } as const;

/**
 * One message between two workers (proto/collective.proto `Frame`). Every frame names the job and
 * the membership epoch; receivers refuse frames of another job or an older epoch.
 */
export interface Frame {
  jobId: string;
  epoch: number;
  fromRank: number;
  op: number;
  kind: FrameKind;
  phase: number;
  step: number;
  chunk: number;
  /** Why the sender aborted (kind 'abort'). */
  reason: string;
  /** Reserved for the job token; empty when the job has none. */
  jobToken: Uint8Array;
  /** Raw little-endian tensor bytes. A view: never copied by decode. */
  payload: Uint8Array;
}

/** The subscription a receiver sends to open one stream of frames (proto `SubscribeRequest`). */
export interface SubscribeRequest {
  jobId: string;
  epoch: number;
  rank: number;
  stream: number;
  jobToken: Uint8Array;
  /** The config hash of the caller's job (src/config/load.ts configHash); empty when not checked. */
  configHash: string;
}

const EMPTY = new Uint8Array(0);

function varintLength(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function writeVarint(buf: Buffer, pos: number, v: number): number {
  while (v >= 0x80) {
    buf[pos++] = (v % 128) | 0x80;
    v = Math.floor(v / 128);
  }
  buf[pos++] = v;
  return pos;
}

/** Encodes fields in protobuf wire format; `bytes` fields are copied once, into the result. */
class FieldWriter {
  private readonly parts: (readonly [number, number | Uint8Array])[] = [];
  size = 0;
  uint(field: number, v: number): this {
    if (v !== 0) {
      this.parts.push([field, v]);
      this.size += varintLength(field << 3) + varintLength(v);
    }
    return this;
  }
  bytes(field: number, v: Uint8Array, always = false): this {
    if (v.byteLength !== 0 || always) {
      this.parts.push([field, v]);
      this.size += varintLength((field << 3) | 2) + varintLength(v.byteLength) + v.byteLength;
    }
    return this;
  }
  /** A length-delimited field's tag and length only: its `length` bytes follow the message. */
  prefix(field: number, length: number): this {
    this.parts.push([field, -length - 1]);
    this.size += varintLength((field << 3) | 2) + varintLength(length);
    return this;
  }
  string(field: number, v: string): this {
    return v.length === 0 ? this : this.bytes(field, Buffer.from(v, 'utf8'));
  }
  finish(): Buffer {
    const out = Buffer.allocUnsafe(this.size);
    let pos = 0;
    for (const [field, v] of this.parts) {
      if (typeof v === 'number' && v < 0) {
        pos = writeVarint(out, pos, (field << 3) | 2);
        pos = writeVarint(out, pos, -v - 1);
      } else if (typeof v === 'number') {
        pos = writeVarint(out, pos, field << 3);
        pos = writeVarint(out, pos, v);
      } else {
        pos = writeVarint(out, pos, (field << 3) | 2);
        pos = writeVarint(out, pos, v.byteLength);
        out.set(v, pos);
        pos += v.byteLength;
      }
    }
    return out;
  }
}

/** Fields that are length-delimited (string/bytes) in a message, by field number; the rest are varints. */
const FRAME_BYTES_FIELDS = new Set([1, 9, 10, 14, 15]);
const SUBSCRIBE_BYTES_FIELDS = new Set([1, 5, 6]);
const FRAME_VARINT_FIELDS = new Set([2, 3, 4, 5, 6, 7, 8]);
const SUBSCRIBE_VARINT_FIELDS = new Set([2, 3, 4]);

/**
 * Reads protobuf fields; `bytes` fields come back as views of the input. A known field with the
 * wrong wire type is refused (protobuf would reject it too): values from the network are checked
 * before anything uses them as numbers or bytes.
 */
function readFields(
  buf: Uint8Array,
  what: string,
  visit: (field: number, v: number | Uint8Array) => void,
  known?: { bytes: ReadonlySet<number>; varint: ReadonlySet<number> },
): void {
  let pos = 0;
  const varint = (): number => {
    let v = 0;
    let mul = 1;
    for (;;) {
      if (pos >= buf.length) throw new PartiError('refused', `${what}: truncated message`);
      const b = buf[pos++]!;
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 128;
      if (mul > 2 ** 56) throw new PartiError('refused', `${what}: varint too long`);
    }
  };
  while (pos < buf.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (known && ((wire === 0 && known.bytes.has(field)) || (wire === 2 && known.varint.has(field)))) {
      throw new PartiError('refused', `${what}: field ${field} has the wrong wire type ${wire}`);
    }
    if (wire === 0) {
      const v = varint();
      // Every varint field is a count, rank or id: past 2^53 it is not a number JS can hold exactly.
      if (!Number.isSafeInteger(v)) throw new PartiError('refused', `${what}: field ${field} is out of range`);
      visit(field, v);
    } else if (wire === 2) {
      const len = varint();
      if (pos + len > buf.length) throw new PartiError('refused', `${what}: field ${field} overruns the message`);
      visit(field, buf.subarray(pos, pos + len));
      pos += len;
    } else throw new PartiError('refused', `${what}: unsupported wire type ${wire} in field ${field}`);
  }
}

const utf8 = new TextDecoder();

const PAD = new Uint8Array(8);

/**
 * A frame ready for the wire, in two parts: the header fields (with the payload's tag and length
 * at its end) and the payload itself, not yet copied. `byteLength` and `copy()` are the part of
 * the Buffer interface grpc-js's serializeMessage uses: it copies the message once into its own
 * length-prefixed buffer, so handing it this object instead of a Buffer saves a copy of every
 * payload. The payload must stay unchanged until the write's callback (GrpcTransport waits so).
 */
export class EncodedFrame {
  constructor(
    readonly header: Buffer,
    readonly payload: Uint8Array,
  ) {}
  get byteLength(): number {
    return this.header.byteLength + this.payload.byteLength;
  }
  get length(): number {
    return this.byteLength;
  }
  copy(target: Uint8Array, targetStart = 0): number {
    target.set(this.header, targetStart);
    target.set(this.payload, targetStart + this.header.byteLength);
    return this.byteLength;
  }
  toBuffer(): Buffer {
    const out = Buffer.allocUnsafe(this.byteLength);
    this.copy(out);
    return out;
  }
}

/**
 * Encodes a frame. A `pad` field (14) places the payload at an offset that is a multiple of 8
 * counting grpc-js's 5-byte message prefix: grpc-js hands large received messages over in a fresh
 * buffer after that prefix, so the receiver reads the floats in place instead of copying them.
 */
export function encodeFrameParts(f: Frame): EncodedFrame {
  const header = frameHeader(f);
  const n = f.payload.byteLength;
  const payloadPrefix = n === 0 ? 0 : 1 + varintLength(n);
  const before = 5 + header.size + 2 + payloadPrefix; // 2: the pad field's tag and length
  header.bytes(14, PAD.subarray(0, (8 - (before % 8)) % 8), true);
  if (n !== 0) header.prefix(15, n);
  return new EncodedFrame(header.finish(), f.payload);
}

/** The frame as one Buffer (the payload copied into it). */
export function encodeFrame(f: Frame): Buffer {
  return encodeFrameParts(f).toBuffer();
}

function frameHeader(f: Frame): FieldWriter {
  return new FieldWriter()
    .string(1, f.jobId)
    .uint(2, f.epoch)
    .uint(3, f.fromRank)
    .uint(4, f.op)
    .uint(5, f.kind === 'abort' ? 1 : 0)
    .uint(6, f.phase)
    .uint(7, f.step)
    .uint(8, f.chunk)
    .string(9, f.reason)
    .bytes(10, f.jobToken);
}

export function decodeFrame(buf: Uint8Array): Frame {
  const f: Frame = {
    jobId: '', epoch: 0, fromRank: 0, op: 0, kind: 'data', phase: 0, step: 0, chunk: 0, reason: '',
    jobToken: EMPTY, payload: EMPTY,
  };
  readFields(buf, 'collective frame', (field, v) => {
    switch (field) {
      case 1: f.jobId = utf8.decode(v as Uint8Array); break;
      case 2: f.epoch = v as number; break;
      case 3: f.fromRank = v as number; break;
      case 4: f.op = v as number; break;
      case 5: f.kind = v === 1 ? 'abort' : 'data'; break;
      case 6: f.phase = v as number; break;
      case 7: f.step = v as number; break;
      case 8: f.chunk = v as number; break;
      case 9: f.reason = utf8.decode(v as Uint8Array); break;
      case 10: f.jobToken = v as Uint8Array; break;
      case 15: f.payload = v as Uint8Array; break;
      default: break; // unknown fields are skipped, as protobuf does
    }
  }, { bytes: FRAME_BYTES_FIELDS, varint: FRAME_VARINT_FIELDS });
  return f;
}

export function encodeSubscribeRequest(r: SubscribeRequest): Buffer {
  return new FieldWriter()
    .string(1, r.jobId)
    .uint(2, r.epoch)
    .uint(3, r.rank)
    .uint(4, r.stream)
    .bytes(5, r.jobToken)
    .string(6, r.configHash)
    .finish();
}

export function decodeSubscribeRequest(buf: Uint8Array): SubscribeRequest {
  const r: SubscribeRequest = { jobId: '', epoch: 0, rank: 0, stream: 0, jobToken: EMPTY, configHash: '' };
  readFields(buf, 'subscribe request', (field, v) => {
    if (field === 1) r.jobId = utf8.decode(v as Uint8Array);
    else if (field === 2) r.epoch = v as number;
    else if (field === 3) r.rank = v as number;
    else if (field === 4) r.stream = v as number;
    else if (field === 5) r.jobToken = v as Uint8Array;
    else if (field === 6) r.configHash = utf8.decode(v as Uint8Array);
  }, { bytes: SUBSCRIBE_BYTES_FIELDS, varint: SUBSCRIBE_VARINT_FIELDS });
  return r;
}

/** Constant-time equality of two job tokens (both empty = equal); hides the expected length too. */
export function sameToken(a: Uint8Array, b: Uint8Array): boolean {
  return constantTimeEqual(a, b);
}
