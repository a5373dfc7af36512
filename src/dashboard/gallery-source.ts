/**
 * What the gallery needs to know about its job, and where a run's trained image tokenizer is.
 * Light on purpose (no tfjs): the coordinator's main thread imports it; only the gallery thread
 * loads a model.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Config } from '../config/schema.ts';

/** Where a run's trained image tokenizer is: `training.tokenizerFrom` (a run or a tokenizer folder), else `<run dir>/tokenizer` (as the workers find it). */
export function galleryTokenizerDir(config: Config, runDir: string): string {
  const from = config.training.tokenizerFrom;
  if (!from) return join(runDir, 'tokenizer');
  return existsSync(join(from, 'tokenizer', 'checkpoint.json')) ? join(from, 'tokenizer') : from;
}

/** Whether a trained tokenizer is there to decode image tokens with. */
export function galleryTokenizerExists(dir: string): boolean {
  return existsSync(join(dir, 'checkpoint.json'));
}

/** What one gallery generation needs to know about its job (plain data: it crosses to a thread). */
export interface GallerySource {
  /** The job's config (parsed). */
  config: Config;
  /** configHash() of it: the checkpoint must have been written by it. */
  configHash: string;
  /** URL or path of the job's checkpoint store. */
  checkpointStore: string;
  /** Folder of the trained image tokenizer (see galleryTokenizerDir). */
  tokenizerDir: string;
}

