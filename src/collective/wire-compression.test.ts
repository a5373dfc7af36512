import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { addWireInto, decodeWireInto, encodeWire, roundToWire, type WireCompression } from './wire-compression.ts';
import { decodeFrame, encodeFrame, type Frame } from './frame.ts';

const roundTrip = (xs: number[], c: WireCompression): number[] => {
  const out = new Float32Array(xs.length);
  decodeWireInto(encodeWire(new Float32Array(xs), c), c, out);
  return [...out];
};

describe('wire compression', () => {
  it('fp16 rounds to nearest even, keeps specials, overflows to infinity', () => {
    assert.deepEqual(roundTrip([0, -0, 1, -2, 0.5, 65504, 1e6, -1e6, 2 ** -24, 2 ** -26, 1 + 2 ** -11, 1 + 3 * 2 ** -11], 'fp16'), [
      0, -0, 1, -2, 0.5, 65504, Infinity, -Infinity, 2 ** -24, 0, 1, 1 + 2 * 2 ** -10,
    ]);
    assert.ok(Number.isNaN(roundTrip([NaN], 'fp16')[0]));
    assert.deepEqual(roundTrip([Infinity, -Infinity], 'fp16'), [Infinity, -Infinity]);
  });

  it('bf16 keeps the float32 range with 8 bits of precision', () => {
    assert.deepEqual(roundTrip([1, -3.5, 1 + 2 ** -8, 1 + 3 * 2 ** -8], 'bf16'), [1, -3.5, 1, 1 + 2 ** -6]);
    const [big] = roundTrip([1e30], 'bf16');
    assert.ok(Math.abs(big! - 1e30) / 1e30 <= 2 ** -9, `1e30 -> ${big}`);
    assert.equal(new Uint32Array(new Float32Array([big!]).buffer)[0]! & 0xffff, 0, 'only the upper 16 bits are set');
    assert.ok(Number.isNaN(roundTrip([NaN], 'bf16')[0]));
    assert.equal(encodeWire(new Float32Array(10), 'bf16').byteLength, 20);
  });

  it('none is a view, and adding accumulates in float32 with an optional divisor', () => {
    const x = new Float32Array([1, 2, 3]);
    assert.equal(encodeWire(x, 'none').buffer, x.buffer);
    const acc = new Float32Array([1, 1, 1]);
    addWireInto(encodeWire(x, 'bf16'), 'bf16', acc);
    assert.deepEqual([...acc], [2, 3, 4]);
    addWireInto(encodeWire(x, 'none'), 'none', acc, 2);
    assert.deepEqual([...acc], [1.5, 2.5, 3.5]);
    const y = new Float32Array([1 + 2 ** -10]);
    roundToWire(y, 'bf16');
    assert.equal(y[0], 1);
  });

  it('frames round-trip and put the payload 8-aligned after the 5-byte grpc prefix', () => {
    for (const n of [0, 1, 3, 1000, 70_000]) {
      const f: Frame = {
        jobId: 'job-x', epoch: 2 ** 40, fromRank: 3, op: 7, kind: n === 1 ? 'abort' : 'data', phase: 2, step: 1, chunk: 9, reason: n === 1 ? 'why' : '',
        jobToken: new Uint8Array([1, 2]), payload: new Uint8Array(n * 4).map((_, i) => i),
      };
      const wire = encodeFrame(f);
      const framed = Buffer.alloc(wire.length + 5);
      wire.copy(framed, 5);
      const back = decodeFrame(framed.subarray(5));
      assert.deepEqual({ ...back, payload: [...back.payload], jobToken: [...back.jobToken] }, { ...f, payload: [...f.payload], jobToken: [...f.jobToken] });
      if (n > 0) assert.equal(back.payload.byteOffset % 8, 0, `payload of ${n} floats aligned`);
    }
  });
});
