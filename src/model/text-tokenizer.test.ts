import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BOS_ID, EOS_ID, PAD_ID, TextTokenizer } from './text-tokenizer.ts';

test('round trip of any Unicode text, with BOS, EOS and PAD', () => {
  const tok = new TextTokenizer(64);
  for (const text of ['a red circle above a blue square', '', 'naïve café – 東京 🚀👩‍👩‍👧', 'tab\tnew\nline\u0000nul']) {
    const e = tok.encode(text);
    assert.equal(e.ids.length, 64);
    assert.equal(e.ids[0], BOS_ID);
    const n = new TextEncoder().encode(text).length;
    assert.equal(e.ids[n + 1], EOS_ID);
    assert.ok(e.ids.slice(n + 2).every((id) => id === PAD_ID));
    assert.equal(e.mask.reduce((a, b) => a + b, 0), n + 2);
    assert.equal(e.truncated, false);
    assert.equal(tok.decode(e.ids), text);
  }
});

test('long text is truncated at a character boundary and flagged', () => {
  const tok = new TextTokenizer(8); // room for 6 bytes
  const e = tok.encode('abcde東京'); // 5 + 3 + 3 bytes: 東 would be cut, so stop after 'abcde'
  assert.equal(e.truncated, true);
  assert.equal(tok.decode(e.ids), 'abcde');
  assert.equal(e.ids[6], EOS_ID);
  const exact = tok.encode('abcdef');
  assert.equal(exact.truncated, false);
  assert.equal(tok.decode(exact.ids), 'abcdef');
  assert.equal(tok.encode('abcdefg').truncated, true);
});
