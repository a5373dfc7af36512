/**
 * Where a run's trained image tokenizer comes from: `<run dir>/tokenizer` (trained here), or
 * training.tokenizerFrom: a local run directory (or its `tokenizer/` directory), or an object-store
 * URL (s3://bucket/prefix, file:///dir) where `parti train --stage tokenizer --publish-tokenizer`
 * put it, which is fetched and verified into `<run dir>/tokenizer-from/` (how pods get it).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Config } from '../config/schema.ts';
import { fetchPublishedState, isStoreUrl } from '../storage/published-state.ts';

/** The local directory the trained tokenizer is read from (for a URL: where it is fetched to). */
export function tokenizerDir(config: Config, runDir: string): string {
  const from = config.training.tokenizerFrom;
  if (!from) return join(runDir, 'tokenizer');
  if (isStoreUrl(from)) return join(runDir, 'tokenizer-from');
  return existsSync(join(from, 'tokenizer', 'checkpoint.json')) ? join(from, 'tokenizer') : from;
}

/**
 * tokenizerDir, after fetching a published tokenizer (training.tokenizerFrom is a URL) and
 * verifying it. Throws PartiError('checkpoint') naming the URL when it is missing or corrupt.
 */
export async function prepareTokenizer(config: Config, runDir: string): Promise<string> {
  const from = config.training.tokenizerFrom;
  const dir = tokenizerDir(config, runDir);
  if (from && isStoreUrl(from)) await fetchPublishedState(from, dir);
  return dir;
}
