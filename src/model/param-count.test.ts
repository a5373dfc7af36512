import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from '../config/load.ts';
import { countParams } from './param-count.ts';

test('non-embedding parameter counts match the Parti paper within 3%', () => {
  const expected: [string, number][] = [
    ['parti-350m', 350e6],
    ['parti-750m', 750e6],
    ['parti-3b', 3e9],
    ['parti-20b', 20e9],
  ];
  for (const [name, n] of expected) {
    const c = countParams(loadConfig(`configs/${name}.yaml`).model);
    const ratio = c.nonEmbedding / n;
    assert.ok(Math.abs(ratio - 1) <= 0.03, `${name}: ${c.nonEmbedding} is ${((ratio - 1) * 100).toFixed(2)}% off ${n}`);
    const parts = Object.values(c.components).reduce((a, b) => a + b, 0);
    assert.equal(parts, c.total, `${name}: components add up to the total`);
    assert.ok(c.total > c.nonEmbedding);
  }
});

test('a known small shape counts exactly', () => {
  const cfg = loadConfig('configs/tiny.yaml').model;
  const c = countParams(cfg);
  const d = cfg.text.dModel;
  const block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d);
  assert.equal(c.components.textEncoder, cfg.text.layers * block + 2 * d);
  assert.equal(c.components.textEmbedding, (cfg.text.vocabSize + cfg.text.maxLength) * d);
});
