import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { parseConfig } from '../config/load.ts';
import { initBackend } from '../model/backend.ts';
import { PartiModel } from '../model/parti.ts';
import { TextTokenizer } from '../model/text-tokenizer.ts';
import { EVAL_CONTEXT, type KeysValues } from '../model/transformer.ts';
import { smallGenerationConfig } from './random-run.ts';
import { encodeForRows, sampleImageTokens, type PartiRunner, type SamplerSettings } from './sampler.ts';
import { bestIndices, CaptionLikelihoodScorer, tokenLogLikelihoods } from './reranking.ts';
import { crossAttentionMaps } from './attention-maps.ts';

await initBackend('wasm');

/**
 * A randomly initialized model whose weights are scaled up so that its logits vary strongly with
 * the prefix and the caption (at the init scale they are near zero and near-uniform sampling
 * would hide a wrong cache).
 */
function runner(imageSize = 16): PartiRunner {
  const config = parseConfig(smallGenerationConfig({ imageSize }));
  const model = new PartiModel(config.model);
  const params = model.layout.initialize(3);
  for (const e of model.layout.entries) if (e.init.kind === 'normal') for (let i = e.offset; i < e.offset + e.size; i++) params[i]! *= 12;
  return { model, tokenizer: new TextTokenizer(config.model.text.maxLength), params: model.layout.toTensors(params) };
}

const r = runner();
const settings: SamplerSettings = { cfg: 3, temperature: 1, topK: 0, topP: 1, seed: 11 };

test('cached decoding gives the logits of a full recomputation at every position', () => {
  const { model, params: p } = r;
  const T = model.imageTokens;
  const tokens = Int32Array.from({ length: 2 * T }, (_, i) => (i * 7 + 3) % model.codes);
  const inputs = new Int32Array(2 * T);
  for (let b = 0; b < 2; b++) {
    inputs[b * T] = model.bosId;
    inputs.set(tokens.subarray(b * T, b * T + T - 1), b * T + 1);
  }
  const { cross, bias } = encodeForRows(r, ['a red circle', ''], [0, 1]);
  const full = tf.tidy(() => model.decode(p, tf.tensor1d(inputs, 'int32'), 2, T, cross, bias, EVAL_CONTEXT).logits).arraySync() as number[][];
  let past: KeysValues[] | undefined;
  let worst = 0;
  let spread = 0;
  for (let t = 0; t < T; t++) {
    const step = tf.tidy(() => {
      const o = model.decode(p, tf.tensor1d([inputs[t]!, inputs[T + t]!], 'int32'), 2, 1, cross, bias, EVAL_CONTEXT, { start: t, past });
      return { logits: o.logits, selfKV: o.selfKV } as unknown as tf.TensorContainer;
    }) as unknown as { logits: tf.Tensor2D; selfKV: KeysValues[] };
    if (past) for (const kv of past) tf.dispose([kv.kT, kv.v]);
    past = step.selfKV;
    const l = step.logits.arraySync();
    step.logits.dispose();
    for (let b = 0; b < 2; b++)
      for (let v = 0; v < model.codes; v++) {
        worst = Math.max(worst, Math.abs(l[b]![v]! - full[b * T + t]![v]!));
        spread = Math.max(spread, Math.abs(full[b * T + t]![v]! - full[b * T]![v]!));
      }
  }
  for (const kv of past!) tf.dispose([kv.kT, kv.v]);
  tf.dispose([bias, ...cross.flatMap((c) => [c.kT, c.v])]);
  assert.ok(spread > 1, `logits barely depend on the prefix (${spread}): the test would not see a wrong cache`);
  assert.ok(worst < 1e-3, `cached vs full logits differ by ${worst}`);
});

test('cached and uncached sampling draw identical tokens for the same seed', () => {
  const requests = [
    { prompt: 'a red circle above a blue square', promptIndex: 0, samples: [0, 1] },
    { prompt: '', promptIndex: 1, samples: [0, 1] },
  ];
  for (const s of [settings, { ...settings, cfg: 1, topK: 20, topP: 0.9, temperature: 0.8 }]) {
    const cached = sampleImageTokens(r, requests, s, { cache: true });
    const uncached = sampleImageTokens(r, requests, s, { cache: false });
    assert.deepEqual(cached, uncached);
  }
});

test('same seed same tokens; another seed, prompt or sample index differs', () => {
  const req = (prompt: string, promptIndex = 0, samples = [0, 1]) => [{ prompt, promptIndex, samples }];
  const a = sampleImageTokens(r, req('a green triangle'), settings);
  assert.deepEqual(sampleImageTokens(r, req('a green triangle'), settings), a);
  assert.notDeepEqual(sampleImageTokens(r, req('a green triangle'), { ...settings, seed: 12 }), a);
  assert.notDeepEqual(a[0]![0], a[0]![1]);
  assert.notDeepEqual(sampleImageTokens(r, req('a white cross'), settings)[0]![0], a[0]![0]);
});

test("a prompt's images do not depend on the other prompts of the batch", () => {
  const alone = sampleImageTokens(r, [{ prompt: 'a white cross on the right', promptIndex: 3, samples: [0, 1] }], settings);
  const batched = sampleImageTokens(
    r,
    [
      { prompt: 'a yellow square', promptIndex: 2, samples: [0, 1, 2] },
      { prompt: 'a white cross on the right', promptIndex: 3, samples: [0, 1] },
    ],
    settings,
  );
  assert.deepEqual(batched[1], alone[0]);
});

test('guidance changes what is drawn; top-k 1 is greedy and ignores the seed', () => {
  const req = [{ prompt: 'a purple circle', promptIndex: 0, samples: [0] }];
  assert.notDeepEqual(sampleImageTokens(r, req, settings), sampleImageTokens(r, req, { ...settings, cfg: 1 }));
  const g1 = sampleImageTokens(r, req, { ...settings, topK: 1, seed: 1 });
  const g2 = sampleImageTokens(r, req, { ...settings, topK: 1, seed: 2 });
  assert.deepEqual(g1, g2);
});

test('log-likelihoods are teacher-forced on the right targets; the scorer is their difference', async () => {
  const prompt = 'a blue square at the top left';
  const greedy = sampleImageTokens(r, [{ prompt, promptIndex: 0, samples: [0] }], { ...settings, cfg: 1, topK: 1 })[0]![0]!;
  const random = Int32Array.from(greedy, (_, i) => (i * 13 + 5) % r.model.codes);
  const [lg, lr] = tokenLogLikelihoods(r, [prompt, prompt], [greedy, random]);
  // Greedy tokens take the most likely code at each step; an arbitrary sequence scores far lower.
  assert.ok(lg! > lr!, `greedy ${lg} vs arbitrary ${lr}`);
  assert.ok(lg! <= 0);
  const scorer = new CaptionLikelihoodScorer(r);
  const [score] = await scorer.score(prompt, [{ tokens: greedy, pixels: () => new Uint8Array() }]);
  const [uncond] = tokenLogLikelihoods(r, [''], [greedy]);
  assert.ok(Math.abs(score! - (lg! - uncond!)) < 1e-3);
});

test('bestIndices keeps the best scores, earlier candidate on ties, NaN last', () => {
  assert.deepEqual(bestIndices([1, 3, NaN, 3, 2], 3), [1, 3, 4]);
  assert.deepEqual(bestIndices([NaN, 0], 2), [1, 0]);
});

test('attention maps: one distribution over the text per image token, per layer', () => {
  const prompt = 'a red cross';
  const toks = sampleImageTokens(r, [{ prompt, promptIndex: 0, samples: [0] }], settings)[0]!;
  const [maps] = crossAttentionMaps(r, prompt, toks);
  const T = r.model.imageTokens;
  const L = r.tokenizer.maxLength;
  assert.equal(maps!.grid * maps!.grid, T);
  assert.equal(maps!.perLayer.length, r.model.image.layers);
  const real = maps!.textMask.reduce((a, b) => a + b, 0);
  assert.equal(real, prompt.length + 2);
  for (let t = 0; t < T; t++) {
    let sum = 0;
    let padMass = 0;
    for (let l = 0; l < L; l++) {
      sum += maps!.mean[t * L + l]!;
      if (!maps!.textMask[l]) padMass += maps!.mean[t * L + l]!;
    }
    assert.ok(Math.abs(sum - 1) < 1e-4, `row ${t} sums to ${sum}`);
    assert.ok(padMass < 1e-6);
  }
});
