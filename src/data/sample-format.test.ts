import { test } from 'node:test';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { decodeSample, type RawSample } from './sample-format.ts';

const checks = { imageSize: 32, maxCaptionBytes: 256, tokenCount: 0 };

function raw(png: Buffer): RawSample {
  return { key: 'k', files: new Map<string, Buffer>([['png', png], ['txt', Buffer.from('a red circle')]]) } as RawSample;
}

test('decodeSample: a wrong-size image is refused from its header, before its pixels are decoded', async () => {
  const big = await sharp({ create: { width: 2048, height: 1024, channels: 3, background: { r: 200, g: 0, b: 0 } } }).png().toBuffer();
  // Keep the header and the first bytes only: the pixels cannot be decoded. Read from the header,
  // the image is the wrong size; a reader that decoded first would call it undecodable.
  const truncated = big.subarray(0, 64);
  for (const png of [big, truncated]) {
    const out = await decodeSample(raw(png), checks);
    assert.equal(out.ok, false);
    assert.ok(!out.ok && out.reason === 'wrong-image-size', JSON.stringify(out));
    assert.ok(!out.ok && out.detail === '2048x1024, expected 32x32');
  }
});

test('decodeSample: a right-size image decodes to RGB; a right-size header over broken pixels is undecodable', async () => {
  const png = await sharp({ create: { width: 32, height: 32, channels: 4, background: { r: 0, g: 0, b: 255, alpha: 1 } } }).png().toBuffer();
  const ok = await decodeSample(raw(png), checks);
  assert.ok(ok.ok);
  assert.equal(ok.sample.image.length, 32 * 32 * 3);
  assert.deepEqual([...ok.sample.image.subarray(0, 3)], [0, 0, 255]);
  const broken = await decodeSample(raw(png.subarray(0, 40)), checks);
  assert.ok(!broken.ok && broken.reason === 'undecodable-image', JSON.stringify(broken));
});
