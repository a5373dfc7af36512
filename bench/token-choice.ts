/**
 * Microseconds per `chooseToken` call over 4096 codes (the recipe tokenizer's codebook), with all
 * codes, top-k 32, top-p 0.9 and top-p 0.8, on logits shaped like a trained model's: a few codes
 * carry most of the mass (a Gumbel-like spread, scale 3). `parti eval` draws 192 images x 64
 * tokens = 12288 tokens per evaluation, so every 100 us per call is 1.2 s of its time.
 *
 *   npx tsx bench/token-choice.ts [CALLS=4000] [CODES=4096]
 */
import { chooseToken, samplerUniform, type TokenChoiceSettings } from '../src/generate/token-choice.ts';
import { hashInts } from '../src/model/rng.ts';

const calls = Number(process.argv[2] ?? 4000);
const V = Number(process.argv[3] ?? 4096);
const rows = Array.from({ length: 64 }, (_, r) => {
  const z = new Float64Array(V);
  for (let v = 0; v < V; v++) z[v] = -3 * Math.log(-Math.log((hashInts(r, v, 7) + 0.5) / 4294967296));
  return z;
});
const cases: [string, TokenChoiceSettings][] = [
  ['all codes', { temperature: 1, topK: 0, topP: 1 }],
  ['top-k 32', { temperature: 1, topK: 32, topP: 1 }],
  ['top-p 0.9', { temperature: 1, topK: 0, topP: 0.9 }],
  ['top-p 0.8', { temperature: 1, topK: 0, topP: 0.8 }],
];
const z = new Float64Array(V);
for (const [name, settings] of cases) {
  let check = 0;
  for (let i = 0; i < 200; i++) { z.set(rows[i % 64]!); check += chooseToken(z, settings, samplerUniform(1, 0, 0, i)); }
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) { z.set(rows[i % 64]!); check += chooseToken(z, settings, samplerUniform(0, 0, 0, i)); }
  const us = Number(process.hrtime.bigint() - t0) / 1e3 / calls;
  console.log(`${name.padEnd(10)} ${us.toFixed(1).padStart(7)} us/call  (${V} codes, ${calls} calls, checksum ${check})`);
}
