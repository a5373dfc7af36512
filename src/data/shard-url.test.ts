import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { expandBraces, parseShardSetUrl } from './shard-url.ts';

test('shard urls: brace ranges keep zero padding; lists and products expand in order', () => {
  assert.deepEqual(expandBraces('train-{000000..000002}.tar'), ['train-000000.tar', 'train-000001.tar', 'train-000002.tar']);
  assert.deepEqual(expandBraces('x{3..1}'), ['x3', 'x2', 'x1']);
  assert.deepEqual(expandBraces('{a,b}-{0..1}'), ['a-0', 'a-1', 'b-0', 'b-1']);
  assert.deepEqual(expandBraces('plain.tar'), ['plain.tar']);
  assert.throws(() => expandBraces('x{1..'), /unmatched/);
  assert.throws(() => expandBraces('x{abc}'), /neither a range/);
  assert.throws(() => expandBraces('x{0..99999999}'), /at most/);
});

test('shard urls: file, s3, plain paths and folders', () => {
  const f = parseShardSetUrl('file:///data/ds/train-{000000..000009}.tar');
  assert.equal(f.storeUrl, 'file:///data/ds');
  assert.equal(f.names.length, 10);
  assert.equal(f.names[9], 'train-000009.tar');
  assert.equal(f.indexName, 'train.index.json');
  const s = parseShardSetUrl('s3://bucket/a/b/heldout-{0..3}.tar?endpoint=http://127.0.0.1:9000');
  assert.equal(s.storeUrl, 's3://bucket/a/b?endpoint=http://127.0.0.1:9000');
  assert.deepEqual(s.names, ['heldout-0.tar', 'heldout-1.tar', 'heldout-2.tar', 'heldout-3.tar']);
  assert.equal(s.indexName, 'heldout.index.json');
  const p = parseShardSetUrl('rel/dir/train-000003.tar');
  assert.equal(p.storeUrl, pathToFileURL(path.resolve('rel/dir')).href);
  assert.deepEqual(p.names, ['train-000003.tar']);
  const d = parseShardSetUrl('file:///data/ds/');
  assert.ok(d.isFolder);
  assert.equal(d.storeUrl, 'file:///data/ds');
  assert.throws(() => parseShardSetUrl('http://x/y.tar'), /unsupported/);
  assert.throws(() => parseShardSetUrl('file:///data/{a,b}/x.tar'), /last path segment/);
});
