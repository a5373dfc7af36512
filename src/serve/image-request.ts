import { z } from 'zod';

/**
 * The body of POST /v1/images, validated once at the edge. Field names are the HTTP API's
 * (snake_case); absent sampling fields take the export's defaults (parti-onnx.json), which are
 * `parti generate`'s, so a request and `parti generate` with the same values draw the same image.
 */

/** Limits a server applies to requests. */
export interface RequestLimits {
  /** Most images per request. */
  maxImages: number;
  /** Longest prompt in characters (longer prompts are refused, not truncated). */
  maxPromptChars: number;
}

/** Sampling defaults (from the export's manifest). */
export interface RequestDefaults {
  cfg: number;
  topK: number;
  topP: number;
  temperature: number;
  seed: number;
}

/** A validated request. */
export interface ImageRequest {
  prompt: string;
  n: number;
  cfg: number;
  topK: number;
  topP: number;
  temperature: number;
  seed: number;
  /** Answer format: png (one PNG; a grid when n > 1) or json (base64 PNG per image). */
  format: 'png' | 'json' | undefined;
}

export function imageRequestSchema(limits: RequestLimits, d: RequestDefaults) {
  return z.strictObject({
    prompt: z.string({ error: 'must be a string ("" generates unconditionally)' }).max(limits.maxPromptChars, { error: `must be at most ${limits.maxPromptChars} characters` }),
    n: z
      .number({ error: 'must be an integer' })
      .int({ error: 'must be an integer' })
      .min(1, { error: 'must be >= 1' })
      .max(limits.maxImages, { error: `must be <= ${limits.maxImages}` })
      .default(1),
    cfg: z.number({ error: 'must be a finite number' }).finite({ error: 'must be a finite number' }).default(d.cfg),
    top_k: z.number({ error: 'must be an integer >= 0' }).int({ error: 'must be an integer >= 0' }).min(0, { error: 'must be an integer >= 0 (0 keeps all codes)' }).default(d.topK),
    top_p: z.number({ error: 'must be a number in (0, 1]' }).gt(0, { error: 'must be in (0, 1]' }).max(1, { error: 'must be in (0, 1]' }).default(d.topP),
    temperature: z.number({ error: 'must be a number > 0' }).gt(0, { error: 'must be > 0' }).finite({ error: 'must be finite' }).default(d.temperature),
    seed: z
      .number({ error: 'must be an integer >= 0' })
      .int({ error: 'must be an integer >= 0' })
      .min(0, { error: 'must be an integer >= 0' })
      .max(Number.MAX_SAFE_INTEGER, { error: 'must be a safe integer' })
      .default(d.seed),
    format: z.enum(['png', 'json'], { error: 'must be "png" or "json"' }).optional(),
  });
}

/** A request that failed validation: the field (dotted path) and what is allowed. */
export interface RequestProblem {
  field: string;
  message: string;
}

/** Validates a parsed JSON body. */
export function parseImageRequest(body: unknown, limits: RequestLimits, d: RequestDefaults): { ok: true; request: ImageRequest } | { ok: false; problem: RequestProblem } {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    return { ok: false, problem: { field: '(body)', message: 'must be a JSON object' } };
  }
  const r = imageRequestSchema(limits, d).safeParse(body);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    if (issue.code === 'unrecognized_keys') {
      return { ok: false, problem: { field: issue.keys.join(', '), message: 'unknown field (allowed: prompt, n, cfg, top_k, top_p, temperature, seed, format)' } };
    }
    const field = issue.path.join('.') || '(body)';
    const message = issue.code === 'invalid_type' && issue.input === undefined ? 'required' : issue.message;
    return { ok: false, problem: { field, message } };
  }
  const v = r.data;
  return {
    ok: true,
    request: { prompt: v.prompt, n: v.n, cfg: v.cfg, topK: v.top_k, topP: v.top_p, temperature: v.temperature, seed: v.seed, format: v.format },
  };
}
