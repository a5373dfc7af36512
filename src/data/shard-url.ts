import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { PartiError } from '../errors.ts';

/**
 * A shard set named by one URL: `file:///data/train-{000000..000009}.tar`,
 * `s3://bucket/ds/train-{000000..000099}.tar`, a plain path (`./shards/train-{0..3}.tar`), a single
 * shard (`…/train-000000.tar`) or a folder (`file:///data/` — every `*.tar` in it, listed later).
 * Braces may appear only in the last path segment, so a set lives in one folder (one store).
 */
export interface ShardSetUrl {
  /** The folder as a store URL: `file:///abs/dir` or `s3://bucket/prefix`. */
  storeUrl: string;
  /** Shard object names inside the folder, in order. Empty for a folder URL (list the store). */
  names: string[];
  /** The index object beside the shards (see shard-index.ts). */
  indexName: string;
  /** True when the URL named a folder rather than shards. */
  isFolder: boolean;
}

/** Most shards one pattern may expand to; a typo like {0..99999999} fails fast instead of filling memory. */
export const MAX_EXPANDED_SHARDS = 1_000_000;

/**
 * Expands bash-style braces: `{000..012}` (zero-padded to the width of the first bound),
 * `{3..1}` (descending), `{a,b,c}`, and several groups (cartesian product, left to right).
 */
export function expandBraces(pattern: string, what = 'shard URL'): string[] {
  const open = pattern.indexOf('{');
  if (open < 0) {
    if (pattern.includes('}')) throw new PartiError('data', `${what} ${pattern}: unmatched '}'`);
    return [pattern];
  }
  const close = pattern.indexOf('}', open);
  if (close < 0) throw new PartiError('data', `${what} ${pattern}: unmatched '{'`);
  const body = pattern.slice(open + 1, close);
  if (body.includes('{')) throw new PartiError('data', `${what} ${pattern}: nested braces are not supported`);
  const head = pattern.slice(0, open);
  if (head.includes('}')) throw new PartiError('data', `${what} ${pattern}: unmatched '}'`);
  let options: string[];
  const range = /^(-?\d+)\.\.(-?\d+)$/.exec(body);
  if (range) {
    const [, a, b] = range as unknown as [string, string, string];
    const from = Number(a);
    const to = Number(b);
    const width = a.replace('-', '').length;
    const count = Math.abs(to - from) + 1;
    if (count > MAX_EXPANDED_SHARDS) throw new PartiError('data', `${what} ${pattern}: {${body}} expands to ${count} names (at most ${MAX_EXPANDED_SHARDS})`);
    const step = to >= from ? 1 : -1;
    options = [];
    for (let i = from; step > 0 ? i <= to : i >= to; i += step) {
      const digits = String(Math.abs(i)).padStart(width, '0');
      options.push(i < 0 ? `-${digits}` : digits);
    }
  } else if (body.includes(',')) {
    options = body.split(',');
  } else {
    throw new PartiError('data', `${what} ${pattern}: {${body}} is neither a range {A..B} nor a list {a,b}`);
  }
  const tails = expandBraces(pattern.slice(close + 1), what);
  const out: string[] = [];
  for (const option of options) {
    for (const tail of tails) {
      out.push(head + option + tail);
      if (out.length > MAX_EXPANDED_SHARDS) throw new PartiError('data', `${what} ${pattern}: expands to more than ${MAX_EXPANDED_SHARDS} names`);
    }
  }
  return out;
}

/**
 * The index name for a shard pattern: the part of the last segment before the first brace (or
 * before `.tar`), without trailing separators, plus `.index.json`.
 * `train-{000000..000009}.tar` → `train.index.json`; `heldout-000000.tar` → `heldout-000000.index.json`;
 * a folder → `index.json`.
 */
export function indexNameFor(lastSegment: string): string {
  if (!lastSegment) return 'index.json';
  const brace = lastSegment.indexOf('{');
  let stem = brace >= 0 ? lastSegment.slice(0, brace) : lastSegment.replace(/\.tar$/, '');
  stem = stem.replace(/[-_.]+$/, '');
  return stem ? `${stem}.index.json` : 'index.json';
}

/** Parses a shard set URL (see ShardSetUrl). Throws PartiError('data') naming the URL. */
export function parseShardSetUrl(fullUrl: string): ShardSetUrl {
  if (!fullUrl) throw new PartiError('data', 'empty shard URL');
  // An s3:// URL may carry store options in its query (`?endpoint=http://…`); keep it on the store URL.
  const q = fullUrl.startsWith('s3://') ? fullUrl.indexOf('?') : -1;
  const url = q >= 0 ? fullUrl.slice(0, q) : fullUrl;
  const query = q >= 0 ? fullUrl.slice(q) : '';
  let base: string;
  let last: string;
  const split = (u: string, sep: number) => [u.slice(0, sep), u.slice(sep + 1)] as const;
  if (url.startsWith('s3://') || url.startsWith('file://')) {
    const sep = url.lastIndexOf('/');
    [base, last] = split(url, sep);
    const scheme = url.startsWith('s3://') ? 's3://' : 'file://';
    if (base.length < scheme.length) throw new PartiError('data', `${url}: no folder in the shard URL`);
    if (base === 's3:/') throw new PartiError('data', `${url}: no bucket in the shard URL`);
    if (base === 'file:/' || base === 'file://') base = 'file:///';
  } else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    throw new PartiError('data', `${url}: unsupported shard URL (use file:///dir/train-{000000..000009}.tar, a path, or s3://bucket/prefix/...)`);
  } else {
    const abs = path.resolve(url);
    const isDirLike = url.endsWith('/');
    const dir = isDirLike ? abs : path.dirname(abs);
    last = isDirLike ? '' : path.basename(abs);
    base = pathToFileURL(dir).href;
  }
  if (base.includes('{') || base.includes('}')) throw new PartiError('data', `${url}: braces may appear only in the last path segment`);
  const isFolder = last === '' || (!last.includes('{') && !last.endsWith('.tar'));
  if (isFolder && last !== '') {
    // `file:///data/shards` without a trailing slash: a folder too.
    base = `${base}/${last}`;
    last = '';
  }
  const names = isFolder ? [] : expandBraces(last, url);
  return { storeUrl: base + query, names, indexName: indexNameFor(last), isFolder };
}
