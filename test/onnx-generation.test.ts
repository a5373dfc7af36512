import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportOnnx } from '../src/export/onnx-export.ts';
import { Generator } from '../src/generate/generator.ts';
import { sampleImageTokens } from '../src/generate/sampler.ts';
import { OnnxGenerator } from '../src/serve/onnx-generator.ts';
import { writeOnnxTestRun } from './onnx-fixture.ts';

/**
 * Generation on ONNX Runtime (what `parti serve` runs) against tfjs (what `parti generate` runs)
 * on the same checkpoint: the same prompt, settings and seed draw the same tokens, token for
 * token, and decode to the same pixels.
 */
let root = '';
let gen: Generator;
let onnx: OnnxGenerator;

const SETTINGS = [
  { cfg: 3, topK: 0, topP: 1, temperature: 1, seed: 11 },
  { cfg: 1, topK: 0, topP: 1, temperature: 1, seed: 12 },
  { cfg: 2, topK: 8, topP: 0.9, temperature: 0.7, seed: 13 },
  { cfg: 1.5, topK: 0, topP: 0.5, temperature: 1.3, seed: 14 },
];

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'parti-onnx-generation-'));
  const run = join(root, 'run');
  await writeOnnxTestRun(run);
  gen = await Generator.load(run);
  await exportOnnx(gen.checkpoint, join(root, 'onnx'), { externalThreshold: 4096 });
  onnx = await OnnxGenerator.load(join(root, 'onnx'));
});

after(async () => {
  gen?.dispose();
  await onnx?.release();
  await rm(root, { recursive: true, force: true });
});

test('ONNX Runtime and tfjs draw the same tokens for the same prompt, settings and seed', async () => {
  const prompts = ['a red circle above a blue square', '', 'ünïcödé ✓ prompt'];
  const distinct = new Set<string>();
  for (const s of SETTINGS) {
    for (const [i, prompt] of prompts.entries()) {
      const ref = sampleImageTokens(gen.runner, [{ prompt, promptIndex: i, samples: [0, 1, 2] }], s)[0]!;
      const got = await onnx.sampleTokens(prompt, s, { promptIndex: i, samples: [0, 1, 2] });
      assert.equal(got.tokens.length, 3);
      got.tokens.forEach((t, j) => {
        assert.deepEqual(Array.from(t), Array.from(ref[j]!), `settings ${JSON.stringify(s)}, prompt ${i}, sample ${j}`);
        distinct.add(Array.from(t).join(','));
      });
    }
  }
  // The draws differ across samples, prompts and settings (the test compares real choices).
  assert.ok(distinct.size >= SETTINGS.length * 3 * 2, `only ${distinct.size} distinct token sequences`);
  // Greedy-like settings depend on the logits alone: the model, not the random draw, decides.
  const greedy = { cfg: 3, topK: 1, topP: 1, temperature: 1, seed: 0 };
  const a = await onnx.sampleTokens('a red circle', greedy, { n: 2 });
  const b = sampleImageTokens(gen.runner, [{ prompt: 'a red circle', promptIndex: 0, samples: [0, 1] }], { ...greedy, seed: 999 })[0]!;
  assert.deepEqual(a.tokens.map((t) => Array.from(t)), b.map((t) => Array.from(t)));
});

test('the same request gives the same images as Generator.generate (parti generate)', async () => {
  const s = { ...SETTINGS[2]!, samples: 3 };
  const ref = (await gen.generate([{ prompt: 'two green triangles', promptIndex: 0 }], s))[0]!;
  const got = await onnx.generate('two green triangles', 3, s);
  assert.equal(got.images.length, 3);
  for (let j = 0; j < 3; j++) {
    assert.deepEqual(Array.from(got.tokens[j]!), Array.from(ref.images[j]!.tokens));
    const a = got.images[j]!;
    const b = ref.images[j]!.image;
    assert.equal(a.length, b.length);
    // Pixels are rounded to bytes from float32 values that agree to ~1e-6: at most one level
    // apart where a value sits on a rounding boundary (none here, but a different CPU may differ).
    let maxDiff = 0;
    for (let k = 0; k < a.length; k++) maxDiff = Math.max(maxDiff, Math.abs(a[k]! - b[k]!));
    assert.ok(maxDiff <= 1, `image ${j}: pixels differ by ${maxDiff} levels`);
  }
  // Not a constant image: the decoder's output depends on the tokens.
  assert.notDeepEqual(Array.from(got.images[0]!), Array.from(got.images[1]!));
});

test('an aborted signal stops generation between steps with a deadline error', async () => {
  const c = new AbortController();
  let steps = 0;
  await assert.rejects(
    onnx.sampleTokens('x', SETTINGS[0]!, {
      n: 1,
      signal: c.signal,
      onToken: (t) => {
        steps = t;
        if (t === 3) c.abort();
      },
    }),
    (e: Error & { code?: string }) => e.code === 'deadline',
  );
  assert.equal(steps, 3);
});
