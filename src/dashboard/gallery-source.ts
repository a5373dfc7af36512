/**
 * What the gallery needs to know about its job, and where a run's trained image tokenizer is.
 * Light on purpose (no tfjs): the coordinator's main thread imports it; only the gallery thread
 * loads a model.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Config } from '../config/schema.ts';
import { isStoreUrl } from '../storage/published-state.ts';

export { tokenizerDir as galleryTokenizerDir } from '../worker/tokenizer-source.ts';

/**
 * Whether the gallery can count on a trained tokenizer: one published at a URL
 * (training.tokenizerFrom = s3:// or file://) is fetched and verified by the gallery thread, so it
 * counts as there; otherwise its folder must hold one.
 */
export function galleryTokenizerAvailable(config: Config, dir: string): boolean {
  const from = config.training.tokenizerFrom;
  return (from !== undefined && isStoreUrl(from)) || galleryTokenizerExists(dir);
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

