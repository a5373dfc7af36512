/**
 * Wire formats for tensor payloads. `none` sends float32 as is; `bf16` and `fp16` halve the bytes
 * on the wire while every sum is still taken in float32 (as Horovod's and PyTorch DDP's fp16/bf16
 * compression hooks do). Rounding is round-to-nearest-even; fp16 overflows to ±Infinity past 65504.
 */
import { addBf16Into, addFloat32Into, decodeBf16Simd, encodeBf16Simd, roundBf16Simd } from './simd-sum.ts';

export type WireCompression = 'none' | 'bf16' | 'fp16';

export const WIRE_COMPRESSIONS: readonly WireCompression[] = ['none', 'bf16', 'fp16'];

/** Bytes one element takes on the wire. */
export function wireBytesPerElement(c: WireCompression): number {
  return c === 'none' ? 4 : 2;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function f32BitsToBf16(u: number): number {
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) & 0x8000) | 0x7fc0; // NaN stays NaN
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

function f32BitsToF16(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const e = exp - 112;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1) !== 0)) half++;
    return sign | half;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++; // a carry into the exponent is right
  return sign | h;
}

let f16Table: Float32Array | null = null;
/** float16 -> float32 for all 65536 codes (256 KiB, built on first use). */
function f16ToF32Table(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  const bits = new Uint32Array(t.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) t[h] = (sign ? -1 : 1) * mant * 2 ** -24;
    else if (exp === 31) bits[h] = (sign | 0x7f800000 | (mant << 13)) >>> 0;
    else bits[h] = (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  }
  f16Table = t;
  return t;
}

/** A copy of `bytes` in its own ArrayBuffer (Buffer#slice would return a view of a pool). */
export function copyBytes(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(bytes.byteLength);
  out.set(bytes);
  return out;
}

/** A Float32Array over `bytes`: a view when aligned, else a copy (grpc buffers may be unaligned). */
export function float32View(bytes: Uint8Array): Float32Array {
  if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return new Float32Array(copyBytes(bytes).buffer);
}

function uint16View(bytes: Uint8Array): Uint16Array {
  if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  return new Uint16Array(copyBytes(bytes).buffer);
}

/** The wire bytes of `src`. For `none` a view of src's memory (no copy), else a new buffer. */
export function encodeWire(src: Float32Array, c: WireCompression): Uint8Array {
  if (c === 'none') return new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
  const out = new Uint16Array(src.length);
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  if (c === 'bf16') for (let i = encodeBf16Simd(src, out); i < src.length; i++) out[i] = f32BitsToBf16(bits[i]!);
  else for (let i = 0; i < src.length; i++) out[i] = f32BitsToF16(bits[i]!);
  return new Uint8Array(out.buffer);
}

/** Number of elements the wire bytes hold; throws nothing, callers check lengths. */
export function wireElements(bytes: Uint8Array, c: WireCompression): number {
  return bytes.byteLength / wireBytesPerElement(c);
}

/** out[i] = decoded element i. */
export function decodeWireInto(bytes: Uint8Array, c: WireCompression, out: Float32Array): void {
  if (c === 'none') {
    out.set(float32View(bytes));
    return;
  }
  if (c === 'bf16') {
    const h = uint16View(bytes);
    const o = new Uint32Array(out.buffer, out.byteOffset, out.length);
    for (let i = decodeBf16Simd(bytes, out); i < h.length; i++) o[i] = h[i]! << 16;
  } else {
    const h = uint16View(bytes);
    const t = f16ToF32Table();
    for (let i = 0; i < h.length; i++) out[i] = t[h[i]!]!;
  }
}

/**
 * acc[i] = float32(acc[i] + decoded element i), then divided by `divisor` (float32) when given:
 * the one reduction every collective uses (the division fused in saves a pass over the memory).
 */
export function addWireInto(bytes: Uint8Array, c: WireCompression, acc: Float32Array, divisor = 1): void {
  // float32 and bf16 run in the WebAssembly SIMD kernels (simd-sum.ts); fp16 needs its table.
  if (c === 'none') return addFloat32Into(acc, bytes, divisor);
  if (c === 'bf16') return addBf16Into(acc, bytes, divisor);
  const h = uint16View(bytes);
  const t = f16ToF32Table();
  if (divisor !== 1) for (let i = 0; i < h.length; i++) acc[i] = Math.fround(acc[i]! + t[h[i]!]!) / divisor;
  else for (let i = 0; i < h.length; i++) acc[i]! += t[h[i]!]!;
}

/** x = decode(encode(x)) in place: what a peer will see of x. Keeps ranks bitwise equal. */
export function roundToWire(x: Float32Array, c: WireCompression): void {
  if (c === 'none') return;
  if (c === 'bf16') {
    const done = roundBf16Simd(x);
    if (done < x.length) decodeWireInto(encodeWire(x.subarray(done), c), c, x.subarray(done));
    return;
  }
  decodeWireInto(encodeWire(x, c), c, x);
}
