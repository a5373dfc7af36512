/**
 * The reduction inner loops of the collectives (acc += x, optionally then / n) as a tiny
 * WebAssembly SIMD module, with plain-JS fallbacks where SIMD is missing.
 *
 * Why: a JS loop over Float32Arrays runs at ~3 ns an element here (V8 does not vectorize), and the
 * reduce-scatter of a 64 MiB all-reduce adds 8M elements per rank. f32x4 does 4 a time; the data
 * are copied through a 64 KiB window of the module's memory (copies at memcpy speed, in cache),
 * which still comes out ~3x faster than the JS loop (measured 8M elements: 57-84 ms JS vs
 * 17-28 ms on a loaded 2-core machine).
 *
 * Results are bitwise those of the JS loops: f32x4.add and f32x4.div are IEEE float32 operations
 * rounded to nearest, and the JS `acc[i] += x[i]` (a float64 sum of two float32 values rounded to
 * float32) and `Math.fround(a + x) / n` stored into a Float32Array round to the same values.
 * The module is written out byte by byte below (no toolchain needed); the tests compare it with
 * the JS loops on random data.
 */

/** Bytes of one window of the module's memory (accumulator at 0, operand at WINDOW). */
const WINDOW = 1 << 16;

const leb = (n: number): number[] => {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
};
/** Signed LEB128, for i32.const immediates. */
const sleb = (n: number): number[] => {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) return [...out, b];
    out.push(b | 0x80);
  }
};
const section = (id: number, body: number[]): number[] => [id, ...leb(body.length), ...body];
const vector = (items: number[][]): number[] => [...leb(items.length), ...items.flat()];
const name = (s: string): number[] => [...leb(s.length), ...Array.from(s, (c) => c.charCodeAt(0))];
const simd = (op: number): number[] => [0xfd, ...leb(op)];
const memarg = (op: number, align: number, offset = 0): number[] => [...simd(op), align, ...leb(offset)];

const I32 = 0x7f;
const F32 = 0x7d;
const OP = {
  block: 0x02, loop: 0x03, br: 0x0c, brIf: 0x0d, end: 0x0b, void: 0x40,
  localGet: 0x20, localSet: 0x21, i32Const: 0x41, i32Add: 0x6a, i32GeU: 0x4f, i32ShrU: 0x76,
  v128Load: 0x00, v128Load16x4U: 0x04, v128Store: 0x0b, i32x4Shl: 171, f32x4Splat: 0x13, f32x4Add: 228, f32x4Div: 231,
  i32x4Splat: 0x11, i32x4GtU: 0x3c, v128And: 0x4e, v128Or: 0x50, v128Bitselect: 0x52, i16x8NarrowI32x4U: 134,
  i32x4ShrU: 173, i32x4Add: 174, localTee: 0x22,
} as const;
const V128 = 0x7b;

/** Pushes an i32x4 with all lanes `v`. */
const splat32 = (v: number): number[] => [OP.i32Const, ...sleb(v | 0), ...simd(OP.i32x4Splat)];

/**
 * float32 bits in local `u` -> bf16 bits (in the low half of each i32 lane), exactly as
 * f32BitsToBf16 in wire-compression.ts: round to nearest even, NaN -> quiet NaN of the same sign.
 */
function roundBf16Lanes(u: number): number[] {
  const get = [OP.localGet, u];
  return [
    // if NaN: ((u >>> 16) & 0x8000) | 0x7fc0
    ...get, OP.i32Const, 16, ...simd(OP.i32x4ShrU), ...splat32(0x8000), ...simd(OP.v128And), ...splat32(0x7fc0), ...simd(OP.v128Or),
    // else: (u + 0x7fff + ((u >>> 16) & 1)) >>> 16
    ...get, ...splat32(0x7fff), ...simd(OP.i32x4Add),
    ...get, OP.i32Const, 16, ...simd(OP.i32x4ShrU), ...splat32(1), ...simd(OP.v128And), ...simd(OP.i32x4Add),
    OP.i32Const, 16, ...simd(OP.i32x4ShrU),
    // NaN: (u & 0x7fffffff) > 0x7f800000
    ...get, ...splat32(0x7fffffff), ...simd(OP.v128And), ...splat32(0x7f800000), ...simd(OP.i32x4GtU),
    ...simd(OP.v128Bitselect),
  ];
}

/** A loop over byte offset `i` (local 3) of 0..n (param 2) in steps of `step`, running `inner`. */
function loopFunction(step: number, inner: number[], locals: number[][]): number[] {
  const code = [
    OP.block, OP.void, OP.loop, OP.void,
    OP.localGet, 3, OP.localGet, 2, OP.i32GeU, OP.brIf, 1,
    ...inner,
    OP.localGet, 3, OP.i32Const, ...sleb(step), OP.i32Add, OP.localSet, 3,
    OP.br, 0,
    OP.end, OP.end, OP.end,
  ];
  const body = [...vector(locals), ...code];
  return [...leb(body.length), ...body];
}

/** encBf16(src, dst, bytes): 8 float32 at src+i -> 8 bf16 at dst+i/2, for i in 0..bytes step 32. */
function encodeBf16Kernel(): number[] {
  const lane = (offset: number): number[] => [
    OP.localGet, 0, OP.localGet, 3, OP.i32Add, ...memarg(OP.v128Load, 2, offset), OP.localSet, 4,
    ...roundBf16Lanes(4),
  ];
  const inner = [
    OP.localGet, 1, OP.localGet, 3, OP.i32Const, 1, OP.i32ShrU, OP.i32Add,
    ...lane(0), ...lane(16),
    ...simd(OP.i16x8NarrowI32x4U),
    ...memarg(OP.v128Store, 2),
  ];
  return loopFunction(32, inner, [[1, I32], [1, V128]]);
}

/** decBf16(src, dst, bytes): 4 bf16 at src+i/2 -> 4 float32 at dst+i, for i in 0..bytes step 16. */
function decodeBf16Kernel(): number[] {
  const inner = [
    OP.localGet, 1, OP.localGet, 3, OP.i32Add,
    OP.localGet, 0, OP.localGet, 3, OP.i32Const, 1, OP.i32ShrU, OP.i32Add, ...memarg(OP.v128Load16x4U, 1), OP.i32Const, 16, ...simd(OP.i32x4Shl),
    ...memarg(OP.v128Store, 2),
  ];
  return loopFunction(16, inner, [[1, I32]]);
}

/** roundBf16(p, unused, bytes): float32 at p+i := bf16-rounded value, 4 at a time. */
function roundBf16Kernel(): number[] {
  const inner = [
    OP.localGet, 0, OP.localGet, 3, OP.i32Add,
    OP.localGet, 0, OP.localGet, 3, OP.i32Add, ...memarg(OP.v128Load, 2), OP.localSet, 4,
    ...roundBf16Lanes(4), OP.i32Const, 16, ...simd(OP.i32x4Shl),
    ...memarg(OP.v128Store, 2),
  ];
  return loopFunction(16, inner, [[1, I32], [1, V128]]);
}

/**
 * One function (acc, x, bytes[, divisor]): for i in 0..bytes step 16, acc[i..i+16) as f32x4 +=
 * the operand (f32x4 at x+i, or 4 bf16 at x+i/2 widened), then divided by `divisor` if `divide`.
 */
function kernel(bf16: boolean, divide: boolean): number[] {
  const i = divide ? 4 : 3; // the loop counter comes after the parameters
  const get = (l: number): number[] => [OP.localGet, l];
  const operand = bf16
    ? [...get(1), ...get(i), OP.i32Const, 1, OP.i32ShrU, OP.i32Add, ...memarg(OP.v128Load16x4U, 1), OP.i32Const, 16, ...simd(OP.i32x4Shl)]
    : [...get(1), ...get(i), OP.i32Add, ...memarg(OP.v128Load, 2)];
  const code = [
    OP.block, OP.void, OP.loop, OP.void,
    ...get(i), ...get(2), OP.i32GeU, OP.brIf, 1,
    ...get(0), ...get(i), OP.i32Add, // store address
    ...get(0), ...get(i), OP.i32Add, ...memarg(OP.v128Load, 2),
    ...operand,
    ...simd(OP.f32x4Add),
    ...(divide ? [...get(3), ...simd(OP.f32x4Splat), ...simd(OP.f32x4Div)] : []),
    ...memarg(OP.v128Store, 2),
    ...get(i), OP.i32Const, 16, OP.i32Add, OP.localSet, i,
    OP.br, 0,
    OP.end, OP.end, OP.end,
  ];
  const body = [...vector([[1, I32]]), ...code];
  return [...leb(body.length), ...body];
}

function moduleBytes(): Uint8Array<ArrayBuffer> {
  const pages = (2 * WINDOW) / 65536;
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0,
    ...section(1, vector([[0x60, 3, I32, I32, I32, 0], [0x60, 4, I32, I32, I32, F32, 0]])),
    ...section(3, vector([[0], [1], [0], [1], [0], [0], [0]])),
    ...section(5, vector([[0, pages]])),
    ...section(7, vector([
      [...name('mem'), 2, 0],
      [...name('add'), 0, 0],
      [...name('addDiv'), 0, 1],
      [...name('addBf16'), 0, 2],
      [...name('addBf16Div'), 0, 3],
      [...name('encBf16'), 0, 4],
      [...name('decBf16'), 0, 5],
      [...name('roundBf16'), 0, 6],
    ])),
    ...section(10, vector([
      kernel(false, false), kernel(false, true), kernel(true, false), kernel(true, true),
      encodeBf16Kernel(), decodeBf16Kernel(), roundBf16Kernel(),
    ])),
  ]);
}

interface Kernels {
  mem: Uint8Array;
  add(acc: number, x: number, bytes: number): void;
  addDiv(acc: number, x: number, bytes: number, divisor: number): void;
  addBf16(acc: number, x: number, bytes: number): void;
  addBf16Div(acc: number, x: number, bytes: number, divisor: number): void;
  encBf16(src: number, dst: number, bytes: number): void;
  decBf16(src: number, dst: number, bytes: number): void;
  roundBf16(p: number, unused: number, bytes: number): void;
}

let kernels: Kernels | null | undefined;

/** The module, or null where WebAssembly SIMD is unavailable (then the JS loops run). */
function load(): Kernels | null {
  if (kernels !== undefined) return kernels;
  kernels = null;
  if (process.env.PARTI_COLLECTIVE_SIMD === '0') return null;
  try {
    const bytes = moduleBytes();
    if (typeof WebAssembly === 'undefined' || !WebAssembly.validate(bytes)) return null;
    const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes));
    const e = instance.exports as unknown as Omit<Kernels, 'mem'> & { mem: WebAssembly.Memory };
    // The memory never grows, so this view stays valid.
    kernels = {
      mem: new Uint8Array(e.mem.buffer), add: e.add, addDiv: e.addDiv, addBf16: e.addBf16, addBf16Div: e.addBf16Div,
      encBf16: e.encBf16, decBf16: e.decBf16, roundBf16: e.roundBf16,
    };
  } catch {
    kernels = null;
  }
  return kernels;
}

/** True when the SIMD kernels run (false: the JS fallbacks). */
export function simdAvailable(): boolean {
  return load() !== null;
}

const bytesOf = (a: Float32Array | Uint16Array | Uint8Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function sumJs(acc: Float32Array, x: Float32Array, from: number, divisor: number): void {
  if (divisor === 1) for (let i = from; i < acc.length; i++) acc[i]! += x[i]!;
  else for (let i = from; i < acc.length; i++) acc[i] = Math.fround(acc[i]! + x[i]!) / divisor;
}

function sumBf16Js(acc: Float32Array, h: Uint8Array, from: number, divisor: number): void {
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = from; i < acc.length; i++) {
    u[0] = (h[2 * i]! | (h[2 * i + 1]! << 8)) << 16;
    acc[i] = divisor === 1 ? acc[i]! + f[0]! : Math.fround(acc[i]! + f[0]!) / divisor;
  }
}

/**
 * acc[i] = float32(acc[i] + x[i]), then / divisor (float32) when divisor !== 1. `x` holds
 * acc.length float32 values, little-endian, at any byte offset (no alignment needed).
 */
export function addFloat32Into(acc: Float32Array, x: Uint8Array, divisor = 1): void {
  const done = addWindowed(acc, x, 4, divisor, (k) => (divisor === 1 ? k.add : k.addDiv));
  if (done < acc.length) {
    // The tail (or everything, without SIMD): an aligned view when possible, else a copy.
    const rest = x.byteOffset % 4 === 0 ? new Float32Array(x.buffer, x.byteOffset, acc.length) : new Float32Array(x.slice(0, acc.length * 4).buffer);
    sumJs(acc, rest, done, divisor);
  }
}

/** acc[i] = float32(acc[i] + bf16 element i of h), then / divisor when divisor !== 1. */
export function addBf16Into(acc: Float32Array, h: Uint8Array, divisor = 1): void {
  const done = addWindowed(acc, h, 2, divisor, (k) => (divisor === 1 ? k.addBf16 : k.addBf16Div));
  if (done < acc.length) sumBf16Js(acc, h, done, divisor);
}

/**
 * The SIMD part of acc += operand (then / divisor): window by window through the module's memory
 * (accumulator at 0, operand at WINDOW), for the leading elements a multiple of 16 bytes of `acc`
 * covers. `operandBytes` per element: 4 (float32) or 2 (bf16). Returns how many elements it did
 * (0 without SIMD): the caller's JS loop does the rest.
 */
function addWindowed(
  acc: Float32Array,
  operand: Uint8Array,
  operandBytes: 2 | 4,
  divisor: number,
  pick: (k: Kernels) => (acc: number, x: number, bytes: number, divisor: number) => void,
): number {
  const k = load();
  if (!k) return 0;
  const run = pick(k);
  const a = bytesOf(acc);
  const n = a.byteLength & ~15;
  for (let o = 0; o < n; o += WINDOW) {
    const len = Math.min(WINDOW, n - o);
    k.mem.set(a.subarray(o, o + len), 0);
    k.mem.set(operand.subarray((o / 4) * operandBytes, ((o + len) / 4) * operandBytes), WINDOW);
    run(0, WINDOW, len, divisor);
    a.set(k.mem.subarray(0, len), o);
  }
  return n / 4;
}

/**
 * out[i] = bf16 bits of src[i] (round to nearest even, as f32BitsToBf16) for the leading elements
 * the kernel covers; returns how many it did (0 without SIMD): the caller finishes the rest.
 */
export function encodeBf16Simd(src: Float32Array, out: Uint16Array): number {
  const k = load();
  if (!k) return 0;
  const a = bytesOf(src);
  const o = bytesOf(out);
  const n = a.byteLength & ~31;
  for (let p = 0; p < n; p += WINDOW) {
    const len = Math.min(WINDOW, n - p);
    k.mem.set(a.subarray(p, p + len), WINDOW);
    k.encBf16(WINDOW, 0, len);
    o.set(k.mem.subarray(0, len / 2), p / 2);
  }
  return n / 4;
}

/** out[i] = float32 of bf16 element i of h for the leading elements; returns how many (0 without SIMD). */
export function decodeBf16Simd(h: Uint8Array, out: Float32Array): number {
  const k = load();
  if (!k) return 0;
  const o = bytesOf(out);
  const n = o.byteLength & ~15;
  for (let p = 0; p < n; p += WINDOW) {
    const len = Math.min(WINDOW, n - p);
    k.mem.set(h.subarray(p / 2, (p + len) / 2), WINDOW);
    k.decBf16(WINDOW, 0, len);
    o.set(k.mem.subarray(0, len), p);
  }
  return n / 4;
}

/** x[i] = bf16-rounded x[i] in place for the leading elements; returns how many (0 without SIMD). */
export function roundBf16Simd(x: Float32Array): number {
  const k = load();
  if (!k) return 0;
  const a = bytesOf(x);
  const n = a.byteLength & ~15;
  for (let p = 0; p < n; p += WINDOW) {
    const len = Math.min(WINDOW, n - p);
    k.mem.set(a.subarray(p, p + len), 0);
    k.roundBf16(0, 0, len);
    a.set(k.mem.subarray(0, len), p);
  }
  return n / 4;
}
