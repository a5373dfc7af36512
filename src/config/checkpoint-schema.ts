import { z } from 'zod';

/**
 * Where and how often a run saves its state. None of it changes what is computed, so the section
 * belongs in the config hash's NOT_HASHED list (a checkpoint must load after `keep` or `everySteps`
 * changed).
 */
export const checkpointSchema = z.strictObject({
  /** Save every this many optimizer steps; 0 turns periodic checkpoints off. */
  everySteps: z.number().int().min(0).default(1000),
  /**
   * Committed checkpoints kept (the newest ones). At least 2, so that a newest one that turns out
   * unreadable still leaves one to fall back to.
   */
  keep: z.number().int().min(2, 'at least 2 (one to fall back to)').default(3),
  /**
   * Where checkpoints go: `s3://bucket/prefix`, `file:///abs/dir` or a path. Unset: the run
   * directory (`<run dir>/checkpoints`). Credentials come from the AWS environment and files,
   * never from here.
   */
  url: z
    .string()
    .min(1)
    .refine((u) => !/^s3:\/\/[^/]*@/.test(u), 'no credentials in the URL; use the AWS environment or files')
    .refine((u) => u.startsWith('s3://') || u.startsWith('file:') || !/^[a-z][a-z0-9+.-]*:\/\//i.test(u), 's3://bucket/prefix, file:///dir or a path')
    .optional(),
  /** Objects of one checkpoint uploaded at once by a process. */
  uploadConcurrency: z.number().int().min(1).max(64).default(4),
  /** S3 multipart part size in MiB (S3 needs at least 5); objects larger than this go up in parts. */
  partSizeMiB: z.number().int().min(5).max(5120).default(16),
  /** Parts of one multipart upload in flight at once. */
  partConcurrency: z.number().int().min(1).max(64).default(4),
  /** Attempts per request on 5xx, SlowDown and network errors, with exponential backoff. */
  maxAttempts: z.number().int().min(1).max(20).default(6),
  /** Save once more when training ends (or is stopped), whatever the step. */
  atEnd: z.boolean().default(true),
});
export type CheckpointConfig = z.infer<typeof checkpointSchema>;
