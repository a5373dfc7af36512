import { constants as bufferConstants } from 'node:buffer';
import { createHash } from 'node:crypto';
import type { ObjectStore } from './object-store.ts';
import {
  MANIFESTS_PREFIX,
  checkpointManifestSchema,
  isCheckpointObjectKey,
  expectedObjectKeys,
  manifestKey,
  stepOfManifestKey,
  type CheckpointManifest,
  type CheckpointObjectRef,
} from './checkpoint-manifest.ts';
import { StorageError } from './storage-error.ts';
import { PartiError } from '../errors.ts';
import { log } from '../observability/log.ts';

/** Options of loadCheckpoint. */
export interface LoadOptions {
  /** The running config's hash; a checkpoint with another one is refused. */
  configHash: string;
  /**
   * Which objects to read and verify in full (a worker needs the parameters and its own optimizer
   * shard). The others are still checked for presence and size. Default: all.
   */
  select?: (object: CheckpointObjectRef) => boolean;
  signal?: AbortSignal;
}

/** A checkpoint read back and verified. */
export interface LoadedCheckpoint {
  manifest: CheckpointManifest;
  /** The selected objects' bytes, by name, each checked against its size and sha256. */
  objects: Map<string, Buffer>;
  /** What went wrong with newer checkpoints that `latest` skipped, one line each. */
  warnings: string[];
}

/** Steps that have a manifest (not checked), oldest first. */
export async function listCheckpointSteps(store: ObjectStore): Promise<number[]> {
  return (await store.list(MANIFESTS_PREFIX))
    .map((o) => stepOfManifestKey(o.key))
    .filter((s): s is number => s !== null)
    .sort((a, b) => a - b);
}

/**
 * Loads a committed checkpoint and verifies it: the manifest against its schema, the config hash,
 * then every object's presence, size and sha256. A problem throws PartiError('checkpoint') naming
 * the object. `latest` tries the newest committed step, then falls back to older ones, saying so
 * (a warning in the log and in `warnings`); it returns null when the store holds no checkpoint.
 */
export async function loadCheckpoint(store: ObjectStore, which: 'latest', options: LoadOptions): Promise<LoadedCheckpoint | null>;
export async function loadCheckpoint(store: ObjectStore, which: number, options: LoadOptions): Promise<LoadedCheckpoint>;
export async function loadCheckpoint(store: ObjectStore, which: 'latest' | number, options: LoadOptions): Promise<LoadedCheckpoint | null> {
  if (which !== 'latest') {
    const loaded = await loadStep(store, which, options);
    return { ...loaded, warnings: [] };
  }
  const steps = (await listCheckpointSteps(store)).reverse();
  if (steps.length === 0) return null;
  const warnings: string[] = [];
  for (let i = 0; i < steps.length; i++) {
    try {
      const loaded = await loadStep(store, steps[i]!, options);
      return { ...loaded, warnings };
    } catch (err) {
      if (!(err instanceof PartiError) || (err.code !== 'checkpoint' && !(err instanceof StorageError && err.reason === 'not-found'))) throw err;
      const next = steps[i + 1];
      const line = `${err.message}; ${next === undefined ? 'no older checkpoint to fall back to' : `falling back to step ${next}`}`;
      warnings.push(line);
      log.warn({ store: store.url, step: steps[i] }, line);
    }
  }
  throw new PartiError('checkpoint', `${store.url}: no checkpoint loads (${warnings.length} tried): ${warnings.join(' | ')}`);
}

/** Largest manifest read: real ones are a few KiB; the store's bytes are not trusted. */
const MAX_MANIFEST_BYTES = 16 << 20;

/** Reads and validates the manifest of a step. */
export async function readManifest(store: ObjectStore, step: number, signal?: AbortSignal): Promise<CheckpointManifest> {
  const key = manifestKey(step);
  let raw: Buffer;
  try {
    const info = await store.head(key);
    if (info && info.size > MAX_MANIFEST_BYTES) {
      throw new PartiError('checkpoint', `checkpoint step ${step}: manifest ${key} has ${info.size} bytes, more than a manifest may have (${MAX_MANIFEST_BYTES})`);
    }
    raw = await store.get(key, { signal });
  } catch (err) {
    if (err instanceof StorageError && err.reason === 'not-found')
      throw new PartiError('checkpoint', `checkpoint step ${step} does not exist in ${store.url} (no manifest ${key})`);
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new PartiError('checkpoint', `checkpoint step ${step}: manifest ${key} is not valid JSON (${raw.length} bytes)`);
  }
  const parsed = checkpointManifestSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.map(String).join('.').slice(0, 200) || '(top level)';
    throw new PartiError('checkpoint', `checkpoint step ${step}: manifest ${key} fails its schema: ${where}: ${issue.message.slice(0, 300)}`);
  }
  if (parsed.data.step !== step) throw new PartiError('checkpoint', `checkpoint step ${step}: manifest ${key} says step ${parsed.data.step}`);
  // Objects live under their own step (steps/<step>/<name>, or a save attempt's
  // steps/<step>/_<attempt>/<name>): a manifest must not send a reader to any other key.
  for (const o of parsed.data.objects) {
    if (!isCheckpointObjectKey(step, o.name, o.key))
      throw new PartiError('checkpoint', `checkpoint step ${step}: manifest ${key} fails its schema: object ${o.name} has key ${JSON.stringify(o.key.slice(0, 200))}, expected ${expectedObjectKeys(step, o.name)}`);
  }
  return parsed.data;
}

async function loadStep(store: ObjectStore, step: number, options: LoadOptions): Promise<Omit<LoadedCheckpoint, 'warnings'>> {
  const manifest = await readManifest(store, step, options.signal);
  const key = manifestKey(step);
  if (manifest.configHash !== options.configHash)
    throw new PartiError('checkpoint', `checkpoint step ${step}: manifest ${key} was written by config ${manifest.configHash}, this run is ${options.configHash}`);
  const objects = new Map<string, Buffer>();
  for (const ref of manifest.objects) {
    const what = `checkpoint step ${step}: object ${ref.name} (${ref.key})`;
    // Sizes are checked before anything is allocated: the manifest's `size` is not trusted to be
    // what the store holds, nor to fit in a buffer.
    if (ref.size > bufferConstants.MAX_LENGTH) throw new PartiError('checkpoint', `${what}: the manifest says ${ref.size} bytes, more than a buffer holds`);
    const info = await store.head(ref.key);
    if (!info) throw new PartiError('checkpoint', `${what} is missing`);
    if (info.size !== ref.size) throw new PartiError('checkpoint', `${what} has ${info.size} bytes, the manifest says ${ref.size} (truncated or replaced)`);
    if (options.select && !options.select(ref)) continue;
    // Stream it, hashing each piece as it arrives (overlapping the read), into a buffer of the
    // size the manifest promises; more or fewer bytes than that is a truncated or replaced object.
    let stream;
    try {
      stream = await store.getStream(ref.key, { signal: options.signal });
    } catch (err) {
      if (err instanceof StorageError && err.reason === 'not-found') throw new PartiError('checkpoint', `${what} is missing`);
      throw err;
    }
    const bytes = Buffer.allocUnsafe(ref.size);
    const hash = createHash('sha256');
    let got = 0;
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      if (got + chunk.length > ref.size) {
        stream.destroy();
        const info = await store.head(ref.key);
        throw new PartiError('checkpoint', `${what} has ${info?.size ?? 'more than ' + ref.size} bytes, the manifest says ${ref.size} (replaced)`);
      }
      chunk.copy(bytes, got);
      hash.update(chunk);
      got += chunk.length;
    }
    if (got !== ref.size) throw new PartiError('checkpoint', `${what} has ${got} bytes, the manifest says ${ref.size} (truncated or replaced)`);
    const sha = hash.digest('hex');
    if (sha !== ref.sha256) throw new PartiError('checkpoint', `${what}: checksum mismatch (sha256 ${sha.slice(0, 12)}…, the manifest says ${ref.sha256.slice(0, 12)}…)`);
    objects.set(ref.name, bytes);
  }
  return { manifest, objects };
}
