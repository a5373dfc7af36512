import { it } from 'node:test';
import assert from 'node:assert/strict';
import { decodeTensorBundle, encodeTensorBundle } from './tensor-bundle.ts';

it('round-trips named arrays of every dtype, aligned, without copying on encode', () => {
  const a = new Float32Array([1.5, -2, 3.25]);
  const b = new Int32Array([7, -8]);
  const c = new Uint8Array([1, 2, 3, 4, 5]);
  const d = new Float64Array([Math.PI]);
  const chunks = encodeTensorBundle([
    { name: 'a', shape: [3], data: a },
    { name: 'b', shape: [1, 2], data: b },
    { name: 'c', shape: [5], data: c },
    { name: 'd', shape: [], data: d },
  ]);
  assert.ok(chunks.some((ch) => ch.buffer === a.buffer), 'the array itself is a chunk');
  const bytes = Buffer.concat(chunks);
  const out = decodeTensorBundle(bytes);
  assert.deepEqual([...out.get('a')!.data], [1.5, -2, 3.25]);
  assert.deepEqual([...out.get('b')!.data], [7, -8]);
  assert.deepEqual(out.get('b')!.shape, [1, 2]);
  assert.deepEqual([...out.get('c')!.data], [1, 2, 3, 4, 5]);
  assert.deepEqual([...out.get('d')!.data], [Math.PI]);
  assert.ok(out.get('d')!.data instanceof Float64Array);
  // Unaligned input (a copy at an odd offset) still decodes.
  const odd = Buffer.alloc(bytes.length + 1);
  bytes.copy(odd, 1);
  assert.deepEqual([...decodeTensorBundle(odd.subarray(1)).get('a')!.data], [1.5, -2, 3.25]);
});

it('refuses bad bundles and bad shapes with a message', () => {
  assert.throws(() => decodeTensorBundle(Buffer.from('nope nope')), /bad magic/);
  const bytes = Buffer.concat(encodeTensorBundle([{ name: 'a', shape: [3], data: new Float32Array(3) }]));
  assert.throws(() => decodeTensorBundle(bytes.subarray(0, bytes.length - 4)), /a runs past the end/);
  assert.throws(() => encodeTensorBundle([{ name: 'a', shape: [2], data: new Float32Array(3) }]), /shape \[2\] but 3 elements/);
});
