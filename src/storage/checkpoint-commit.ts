import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { ObjectStore } from './object-store.ts';
import {
  CHECKPOINT_FORMAT,
  CHECKPOINT_VERSION,
  attemptObjectKey,
  isCheckpointObjectKey,
  MANIFESTS_PREFIX,
  STEPS_PREFIX,
  checkpointManifestSchema,
  manifestKey,
  objectKey,
  objectNameSchema,
  stepOfManifestKey,
  stepOfObjectKey,
  stepPrefix,
  stepSchema,
  type CheckpointManifest,
  type CheckpointObjectRef,
  type ManifestInput,
} from './checkpoint-manifest.ts';
import { PartiError } from '../errors.ts';
import { SecretRedactor, redactConfig } from '../security/secret-redactor.ts';
import { log, tracer } from '../observability/log.ts';

const trace = tracer('checkpoint');

/** Bytes of one checkpoint object: one buffer, or several written one after the other. */
export type ObjectBytes = ArrayBufferView | readonly ArrayBufferView[];

function asChunks(bytes: ObjectBytes): Buffer[] {
  const list = ArrayBuffer.isView(bytes) ? [bytes] : bytes;
  return list.map((v) => Buffer.from(v.buffer, v.byteOffset, v.byteLength));
}

/** Objects up to this size are joined and sent as one buffer (retried whole); larger ones stream. */
const JOIN_LIMIT = 8 << 20;
/** Pieces a large object is streamed (and hashed) in. */
const PIECE = 4 << 20;

/** Options of writeCheckpointObject. */
export interface WriteObjectOptions {
  signal?: AbortSignal;
  /**
   * The save attempt (newSaveAttempt()) whose folder the object goes to; absent: the step's own
   * folder (the older layout, where two attempts of a step write the same keys).
   */
  attempt?: string;
}

/**
 * Writes one object of the checkpoint of `step` (on a worker: its parameters or its optimizer
 * shard) and returns what the manifest lists for it. Writing it does not commit anything: only
 * the coordinator's commitManifest does.
 */
export async function writeCheckpointObject(
  store: ObjectStore,
  step: number,
  name: string,
  bytes: ObjectBytes,
  options: WriteObjectOptions = {},
): Promise<CheckpointObjectRef> {
  checkStep(step);
  const parsedName = objectNameSchema.safeParse(name);
  if (!parsedName.success) throw new PartiError('checkpoint', `checkpoint object name ${JSON.stringify(name)}: ${parsedName.error.issues[0]?.message}`);
  const chunks = asChunks(bytes);
  const size = chunks.reduce((n, c) => n + c.length, 0);
  const hash = createHash('sha256');
  const key = options.attempt === undefined ? objectKey(step, name) : attemptObjectKey(step, options.attempt, name);
  trace('object', { step, name, size, key });
  if (size <= JOIN_LIMIT) {
    // Small: one buffer, which the store can resend whole on a retry.
    const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
    hash.update(body);
    await store.put(key, body, { signal: options.signal, contentType: 'application/octet-stream' });
  } else {
    // Large: hash each piece as the store pulls it, so that hashing overlaps the write instead of
    // adding a second pass over the bytes. The store reads the stream once (multipart parts are
    // buffered by the uploader and resent from there on a retry).
    let hashed = 0;
    function* pieces(): Generator<Buffer> {
      for (const c of chunks)
        for (let at = 0; at < c.length; at += PIECE) {
          const piece = c.subarray(at, Math.min(c.length, at + PIECE));
          hash.update(piece);
          hashed += piece.length;
          yield piece;
        }
    }
    await store.put(key, Readable.from(pieces(), { objectMode: false }), { signal: options.signal, contentType: 'application/octet-stream' });
    if (hashed !== size) throw new PartiError('internal', `checkpoint object ${key}: the store read ${hashed} of ${size} bytes`);
  }
  return { name, key, size, sha256: hash.digest('hex') };
}

/** Options of commitManifest. */
export interface CommitOptions {
  /** Committed checkpoints kept, newest first, counting this one (at least 2). */
  keep: number;
}

/** What commitManifest did. */
export interface CommitResult {
  manifest: CheckpointManifest;
  /** Steps whose committed checkpoint was deleted because `keep` newer ones exist. */
  pruned: number[];
  /** Uncommitted steps older than this one whose objects were removed (failed or killed saves). */
  orphansRemoved: number[];
  /** Temp files / multipart uploads of older steps removed. */
  incompleteRemoved: number;
}

/**
 * Commits a checkpoint (coordinator only): checks that every listed object has landed with its
 * listed size, writes the manifest (the commit point), then keeps the newest `keep` committed
 * checkpoints and removes older ones and the leftovers of failed saves of older steps. Steps newer
 * than this one are never touched (their saves may be running).
 */
export async function commitManifest(store: ObjectStore, input: ManifestInput, options: CommitOptions): Promise<CommitResult> {
  if (!Number.isInteger(options.keep) || options.keep < 2) throw new PartiError('checkpoint', `checkpoint keep: must be an integer >= 2, got ${options.keep}`);
  // The config goes into storage that outlives the job and may be shared: secret fields (dashboard
  // and job tokens, keys) are left out and known secret values redacted. The hash is unchanged.
  const config = redactConfig(input.config, SecretRedactor.fromEnv());
  const candidate = { ...input, config, format: CHECKPOINT_FORMAT, version: CHECKPOINT_VERSION, committedAt: new Date().toISOString() };
  const parsed = checkpointManifestSchema.safeParse(candidate);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new PartiError('checkpoint', `manifest of step ${input.step}: ${issue.path.map(String).join('.') || '(top level)'}: ${issue.message}`);
  }
  const manifest = parsed.data;
  const step = manifest.step;
  for (const o of manifest.objects) {
    if (!isCheckpointObjectKey(step, o.name, o.key))
      throw new PartiError('checkpoint', `manifest of step ${step}: object ${o.name} has key ${o.key}, expected ${objectKey(step, o.name)} or ${stepPrefix(step)}_<attempt>/${o.name}`);
  }
  // Objects first, manifest last: refuse to commit unless every object is there in full.
  await Promise.all(
    manifest.objects.map(async (o) => {
      const info = await store.head(o.key);
      if (!info) throw new PartiError('checkpoint', `cannot commit step ${step}: object ${o.name} (${o.key}) is missing`);
      if (info.size !== o.size) throw new PartiError('checkpoint', `cannot commit step ${step}: object ${o.name} has ${info.size} bytes, the manifest says ${o.size}`);
    }),
  );
  await store.put(manifestKey(step), Buffer.from(JSON.stringify(manifest, null, 1)), { contentType: 'application/json' });
  log.info({ step, objects: manifest.objects.length, store: store.url }, 'checkpoint committed');

  const result: CommitResult = { manifest, pruned: [], orphansRemoved: [], incompleteRemoved: 0 };
  try {
    await prune(store, step, options.keep, result);
  } catch (err) {
    // The commit stands; cleanup is retried at the next commit.
    log.warn({ step, err: (err as Error).message }, 'checkpoint cleanup failed; it is retried at the next commit');
  }
  return result;
}

async function prune(store: ObjectStore, step: number, keep: number, result: CommitResult): Promise<void> {
  const committed = (await store.list(MANIFESTS_PREFIX)).map((o) => stepOfManifestKey(o.key)).filter((s): s is number => s !== null);
  // Newest `keep` at or below this step stay; anything newer than it is left alone.
  const older = committed.filter((s) => s <= step).sort((a, b) => b - a);
  const drop = new Set(older.slice(keep));
  for (const s of [...drop].sort((a, b) => a - b)) {
    // Manifest first, so that a crash in the middle leaves an uncommitted step, never a committed
    // one with objects missing.
    await store.delete(manifestKey(s));
    result.pruned.push(s);
  }
  // Keys go by step in both layouts: a pruned or never committed step loses every attempt's
  // objects. An abandoned attempt of a step that is still kept (its late upload landed beside the
  // committed attempt) stays until that step is pruned: bounded by `keep`, and no manifest names it.
  const live = new Set(committed.filter((s) => !drop.has(s)));
  const objects = await store.list(STEPS_PREFIX);
  const orphanSteps = new Set<number>();
  for (const o of objects) {
    const s = stepOfObjectKey(o.key);
    if (s === null || s >= step || live.has(s)) continue;
    await store.delete(o.key);
    orphanSteps.add(s);
  }
  result.orphansRemoved = [...orphanSteps].filter((s) => !drop.has(s)).sort((a, b) => a - b);
  result.incompleteRemoved = await store.cleanupIncomplete(STEPS_PREFIX, new Date(), (key) => {
    const s = stepOfObjectKey(key);
    // Every object of this step and of committed older ones has landed, so a temp file or an open
    // upload there is left over from a killed process, like those of failed older saves.
    return s !== null && s <= step;
  });
  if (result.pruned.length || result.orphansRemoved.length || result.incompleteRemoved)
    trace('pruned', { step, pruned: result.pruned, orphans: result.orphansRemoved, incomplete: result.incompleteRemoved });
}

function checkStep(step: number): void {
  if (!stepSchema.safeParse(step).success) throw new PartiError('checkpoint', `checkpoint step: must be an integer in [0, 1e12), got ${step}`);
}
