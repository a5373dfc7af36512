import { z } from 'zod';

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
