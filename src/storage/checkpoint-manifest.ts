import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { PartiError } from '../errors.ts';

/**
 * The checkpoint format. A checkpoint of step s is a set of objects under `steps/<s>/` and a
 * manifest at `manifests/<s>.json`, written last. The manifest lists every object with its size
 * and sha256; a step without a valid manifest does not exist. Steps are zero-padded so that key
 * order is step order.
 *
 *   <store root>/
 *     manifests/000000001000.json
 *     steps/000000001000/params.bin
 *     steps/000000001000/optimizer-rank-0.bin   (one per rank when optimizer state is sharded)
 *     steps/000000001000/_<attempt>/params.bin  (the same, as one save attempt writes them: below)
 */
export const CHECKPOINT_FORMAT = 'parti-checkpoint';
export const CHECKPOINT_VERSION = 1;

const STEP_DIGITS = 12;
/** Largest step the key layout holds. */
export const MAX_STEP = 10 ** STEP_DIGITS - 1;

/** Object names: short, lowercase, safe as a key segment on every store (`params.bin`, `optimizer-rank-3.bin`). */
export const objectNameSchema = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]{0,127}$/, 'lowercase letters, digits, dot, dash, underscore; at most 128')
  .refine((n) => !n.includes('..'), 'no ".."');

/** One object of a checkpoint, as the manifest lists it. */
export const checkpointObjectSchema = z.strictObject({
  /** Name within the checkpoint, e.g. `params.bin`. */
  name: objectNameSchema,
  /** Store key, `steps/<step>/<name>` (checked against the step when a manifest is read). */
  key: z.string().min(1).max(1100),
  /** Bytes. */
  size: z.number().int().min(0),
  /** Hex sha256 of the bytes. */
  sha256: z.string().regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits'),
});
export type CheckpointObjectRef = z.infer<typeof checkpointObjectSchema>;

export const stepSchema = z.number().int().min(0).max(MAX_STEP);

/** The manifest: what makes a checkpoint exist. Validated with this schema whenever it is read. */
export const checkpointManifestSchema = z.strictObject({
  format: z.literal(CHECKPOINT_FORMAT),
  version: z.literal(CHECKPOINT_VERSION),
  /** Optimizer steps taken: training resumes at this step. */
  step: stepSchema,
  /** Ranks that wrote it. */
  worldSize: z.number().int().min(1),
  /** configHash() of the config that wrote it; a checkpoint only loads into the same hash. */
  configHash: z.string().min(1),
  /** The config itself (plain JSON), for `parti` commands that inspect a run. */
  config: z.unknown(),
  /** The data plan's cursor (opaque JSON from the data plan). */
  cursor: z.unknown(),
  /** RNG state (opaque JSON: a seed/counter pair, or one per rank). */
  rng: z.unknown(),
  /** Every object of the checkpoint. Names are unique. */
  objects: z
    .array(checkpointObjectSchema)
    .refine((objs) => new Set(objs.map((o) => o.name)).size === objs.length, 'object names must be unique'),
  /** When the coordinator committed it (ISO 8601). */
  committedAt: z.string().min(1),
  /** Anything else the trainer wants kept with it (loss, tokens seen...). */
  meta: z.record(z.string(), z.unknown()).optional(),
});
export type CheckpointManifest = z.infer<typeof checkpointManifestSchema>;

/** What the coordinator passes to commitManifest: the manifest without the fields the commit fills in. */
export type ManifestInput = Omit<CheckpointManifest, 'format' | 'version' | 'committedAt'>;

export const MANIFESTS_PREFIX = 'manifests/';
export const STEPS_PREFIX = 'steps/';

export function padStep(step: number): string {
  return String(step).padStart(STEP_DIGITS, '0');
}

/** Key of the manifest of a step. */
export function manifestKey(step: number): string {
  return `${MANIFESTS_PREFIX}${padStep(step)}.json`;
}

/** Prefix of a step's objects. */
export function stepPrefix(step: number): string {
  return `${STEPS_PREFIX}${padStep(step)}/`;
}

/** Key of one object of a step. */
export function objectKey(step: number, name: string): string {
  return `${stepPrefix(step)}${name}`;
}

/** The step a manifest key names, or null for anything else under manifests/. */
export function stepOfManifestKey(key: string): number | null {
  const m = /^manifests\/(\d{12})\.json$/.exec(key);
  return m ? Number(m[1]) : null;
}

/** The step an object key (`steps/<step>/...`) belongs to, or null. */
export function stepOfObjectKey(key: string): number | null {
  const m = /^steps\/(\d{12})\//.exec(key);
  return m ? Number(m[1]) : null;
}

/**
 * Save attempts. Two attempts to save the same step (a save dropped or abandoned by a restarted
 * coordinator, then the same step saved again, possibly by another rank or world size) must not
 * write the same key: an upload of the old attempt still in flight would replace an object of
 * the new one after it was committed. In the attempt layout every save writes its objects under a
 * folder of its own, `steps/<step>/_<attempt>/<name>`, and the manifest names those keys. The
 * `_` cannot start an object name, so these keys never meet the older layout's
 * `steps/<step>/<name>` (checkpoints written that way still load). Both layouts keep every key of
 * a step under `steps/<step>/`, which is what retention goes by.
 */
const ATTEMPT_PATTERN = /^[a-z0-9]{8,32}$/;

/** A new save attempt's id: 64 random bits, so that no two attempts of any process share one. */
export function newSaveAttempt(): string {
  return randomBytes(8).toString('hex');
}

/** Key of object `name` of save attempt `attempt` of `step` (the attempt layout). */
export function attemptObjectKey(step: number, attempt: string, name: string): string {
  if (!ATTEMPT_PATTERN.test(attempt)) throw new PartiError('checkpoint', `checkpoint save attempt ${JSON.stringify(attempt)}: 8 to 32 lowercase letters or digits`);
  return `${stepPrefix(step)}_${attempt}/${name}`;
}

/**
 * Whether `key` is where object `name` of a checkpoint of `step` may live: `steps/<step>/<name>`
 * (the layout of older checkpoints) or `steps/<step>/_<attempt>/<name>` (one save attempt's).
 * A manifest naming any other key is refused, so that it cannot send a reader outside its step.
 */
export function isCheckpointObjectKey(step: number, name: string, key: string): boolean {
  if (key === objectKey(step, name)) return true;
  const prefix = `${stepPrefix(step)}_`;
  const suffix = `/${name}`;
  if (!key.startsWith(prefix) || !key.endsWith(suffix) || key.length <= prefix.length + suffix.length) return false;
  return ATTEMPT_PATTERN.test(key.slice(prefix.length, key.length - suffix.length));
}

/** The keys object `name` of `step` may have, as an error message names them. */
export function expectedObjectKeys(step: number, name: string): string {
  return `${objectKey(step, name)} or ${stepPrefix(step)}_<attempt>/${name}`;
}
