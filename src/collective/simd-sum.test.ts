import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { addBf16Into, addFloat32Into, simdAvailable } from './simd-sum.ts';
import { decodeWireInto, encodeWire, roundToWire } from './wire-compression.ts';

/** Deterministic values with a spread of exponents, signs and the specials. */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = ((s / 2 ** 32) - 0.5) * 2 ** ((s % 41) - 20);
  }
  if (n > 8) out.set([Infinity, -Infinity, NaN, -0, 0, 3.4e38, -3.4e38, 1e-45], n >> 1);
  return out;
}

/** The same bytes at a chosen byte offset of a bigger buffer (received payloads may be unaligned). */
function at(bytes: Uint8Array, offset: number): Uint8Array {
  const buf = new Uint8Array(bytes.byteLength + offset);
  buf.set(bytes, offset);
  return buf.subarray(offset);
}

const bits = (a: Float32Array): number[] => [...new Uint32Array(a.buffer, a.byteOffset, a.length)].map((b, i) => (Number.isNaN(a[i]) ? -1 : b));

// Window edges: the kernels work through 64 KiB (16384 floats) at a time plus a JS tail.
const LENGTHS = [0, 1, 3, 4, 5, 17, 16383, 16384, 16385, 3 * 16384 + 7];

describe('SIMD sum kernels', () => {
  it('are available here (WebAssembly SIMD in Node 20)', () => {
    assert.equal(simdAvailable(), true);
  });

  for (const divisor of [1, 3]) {
    it(`float32: acc + x${divisor === 1 ? '' : ` then / ${divisor}`} bitwise equal to the scalar float32 loop, any offset`, () => {
      for (const n of LENGTHS) {
        for (const offset of [0, 1, 4]) {
          const acc = values(n, n + 1);
          const x = values(n, n + 2);
          const want = acc.slice();
          for (let i = 0; i < n; i++) want[i] = Math.fround(want[i]! + x[i]!) / divisor;
          addFloat32Into(acc, at(new Uint8Array(x.buffer), offset), divisor);
          assert.deepEqual(bits(acc), bits(want), `n=${n} offset=${offset}`);
        }
      }
    });

    it(`bf16: acc + widen(h)${divisor === 1 ? '' : ` then / ${divisor}`} bitwise equal to the scalar loop, any offset`, () => {
      for (const n of LENGTHS) {
        for (const offset of [0, 1]) {
          const acc = values(n, n + 3);
          const h = new Uint16Array(n);
          for (let i = 0; i < n; i++) h[i] = (Math.imul(i + 1, 40503) >>> 3) & 0xffff;
          const want = acc.slice();
          const f = new Float32Array(1);
          const u = new Uint32Array(f.buffer);
          for (let i = 0; i < n; i++) {
            u[0] = h[i]! << 16;
            want[i] = Math.fround(want[i]! + f[0]!) / divisor;
          }
          addBf16Into(acc, at(new Uint8Array(h.buffer), offset), divisor);
          assert.deepEqual(bits(acc), bits(want), `n=${n} offset=${offset}`);
        }
      }
    });
  }

  it('bf16 encode, decode and round-in-place match the scalar definition bit for bit (ties, NaN, Inf, subnormals)', () => {
    // Scalar reference: round to nearest even on the upper 16 bits; NaN -> quiet NaN of its sign.
    const toBf16 = (u: number): number =>
      (u & 0x7fffffff) > 0x7f800000 ? ((u >>> 16) & 0x8000) | 0x7fc0 : ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
    for (const n of LENGTHS) {
      const bitsIn = new Uint32Array(n);
      let s = n + 7;
      for (let i = 0; i < n; i++) {
        s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
        // Every 4th value sits on a rounding tie or right beside one; the specials are spread in.
        const special = [0x7f800000, 0xff800000, 0x7fc00001, 0xffffffff, 0x00000001, 0x80000000, 0x7f7fffff, 0x3f808000, 0x3f818000][i % 9]!;
        bitsIn[i] = i % 4 === 0 ? ((s & 0xffff0000) | 0x8000) >>> 0 : i % 11 === 0 ? special : s;
      }
      const x = new Float32Array(bitsIn.buffer);
      const enc = new Uint16Array(encodeWire(x, 'bf16').slice().buffer);
      const want = Array.from(bitsIn, toBf16);
      assert.deepEqual([...enc], want, `encode n=${n}`);
      for (const offset of [0, 1]) {
        const out = new Float32Array(n);
        decodeWireInto(at(new Uint8Array(enc.buffer), offset), 'bf16', out);
        assert.deepEqual([...new Uint32Array(out.buffer)], want.map((h) => (h << 16) >>> 0), `decode n=${n} offset=${offset}`);
      }
      const r = x.slice();
      roundToWire(r, 'bf16');
      assert.deepEqual([...new Uint32Array(r.buffer)], want.map((h) => (h << 16) >>> 0), `round n=${n}`);
    }
  });
});
