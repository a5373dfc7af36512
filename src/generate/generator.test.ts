import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Generator } from './generator.ts';
import { smallGenerationConfig, writeRandomRun } from './random-run.ts';
import type { RerankCandidate, Scorer } from './reranking.ts';

const root = await mkdtemp(join(tmpdir(), 'parti-generator-'));
after(() => rm(root, { recursive: true, force: true }));
await writeRandomRun(join(root, 'run'), smallGenerationConfig(), { upsampler: true });
const gen = await Generator.load(join(root, 'run'));
after(() => gen.dispose());
const settings = { samples: 2, cfg: 2, temperature: 1, topK: 0, topP: 1, seed: 4 };

/** A scorer that likes a large first image token, and records what it was shown. */
class FirstTokenScorer implements Scorer {
  readonly name = 'first-token';
  seen: RerankCandidate[] = [];
  async score(_prompt: string, candidates: readonly RerankCandidate[]): Promise<number[]> {
    this.seen = [...candidates];
    return candidates.map((c) => c.tokens[0]!);
  }
}

test('reranking draws M candidates and keeps the best N by the plugged-in scorer', async () => {
  const scorer = new FirstTokenScorer();
  const [r] = await gen.generate([{ prompt: 'a red circle', promptIndex: 0 }], { ...settings, rerank: 6 }, { scorer });
  assert.equal(scorer.seen.length, 6);
  const firsts = scorer.seen.map((c) => c.tokens[0]!);
  const expected = firsts
    .map((f, i) => [f, i] as const)
    .sort((a, b) => b[0] - a[0] || a[1] - b[1])
    .slice(0, 2)
    .map(([, i]) => i);
  assert.deepEqual(
    r!.images.map((i) => i.candidate),
    expected,
  );
  assert.deepEqual(
    r!.images.map((i) => i.score),
    expected.map((i) => firsts[i]),
  );
  // Kept images are the decoded kept tokens, and candidates are the same draws as without reranking.
  const plain = await gen.generate([{ prompt: 'a red circle', promptIndex: 0 }], { ...settings, samples: 6 });
  r!.images.forEach((im) => {
    assert.deepEqual(im.tokens, plain[0]!.images[im.candidate]!.tokens);
    assert.deepEqual(im.image, plain[0]!.images[im.candidate]!.image);
  });
  // pixels() decodes on demand.
  assert.deepEqual(scorer.seen[expected[0]!]!.pixels(), r!.images[0]!.image);
});

test('images have the configured size; the upsampler enlarges them by its scale', async () => {
  const [r] = await gen.generate([{ prompt: '', promptIndex: 0 }], settings);
  assert.equal(r!.images.length, 2);
  assert.equal(r!.images[0]!.image.length, 16 * 16 * 3);
  const up = gen.upsample(r!.images.map((i) => i.image));
  assert.equal(up.size, 64);
  assert.equal(up.images[1]!.length, 64 * 64 * 3);
});

test('bad settings are usage errors naming the flag', async () => {
  const p = [{ prompt: 'x', promptIndex: 0 }];
  await assert.rejects(gen.generate(p, { ...settings, topK: -1 }), { code: 'usage', message: /--top-k/ });
  await assert.rejects(gen.generate(p, { ...settings, topP: 0 }), { code: 'usage', message: /--top-p/ });
  await assert.rejects(gen.generate(p, { ...settings, temperature: 0 }), { code: 'usage', message: /--temperature/ });
  await assert.rejects(gen.generate(p, { ...settings, samples: 0 }), { code: 'usage', message: /--samples/ });
  await assert.rejects(gen.generate(p, { ...settings, rerank: 1 }), { code: 'usage', message: /--rerank/ });
});
