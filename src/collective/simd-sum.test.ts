import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { addBf16Into, addFloat32Into, simdAvailable } from './simd-sum.ts';

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
});
