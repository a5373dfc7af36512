import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import type { z } from 'zod';
import { configSchema, type Config } from './schema.ts';
import { PartiError } from '../errors.ts';

/** Formats zod issues as `source: field.path: what is wrong`, one per line. */
export function formatIssues(source: string, issues: readonly z.core.$ZodIssue[]): string {
  return issues
    .map((issue) => {
      const path = issue.path.length ? issue.path.map(String).join('.') : '(top level)';
      const missing = /^Invalid input: expected (.*), received undefined$/.exec(issue.message);
      const message = missing ? `required (${missing[1]})` : issue.message;
      return `${source}: ${path}: ${message}`;
    })
    .join('\n');
}

/** Validates a parsed config object; `source` names where it came from in error messages. */
export function parseConfig(raw: unknown, source = 'config'): Config {
  const result = configSchema.safeParse(raw ?? {});
  if (!result.success) throw new PartiError('config', formatIssues(source, result.error.issues));
  return result.data;
}

/** Reads and validates a YAML config file. Fails at once with the file, field path and what is allowed. */
export function loadConfig(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new PartiError('config', `${file}: cannot read config file (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  return parseConfigText(text, file);
}

/** Parses YAML text as a config. */
export function parseConfigText(text: string, source: string): Config {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    if (err instanceof YAMLParseError) {
      const where = err.linePos?.[0] ? ` line ${err.linePos[0].line}` : '';
      throw new PartiError('config', `${source}:${where}: invalid YAML: ${err.message.split('\n')[0]}`);
    }
    throw err;
  }
  return parseConfig(raw, source);
}

/**
 * Fields that do not change what is computed: how many workers, which backend, logging, policies.
 * Everything else is in the config hash, so a new field is covered unless it is listed here.
 */
const NOT_HASHED: readonly (readonly string[])[] = [
  ['name'],
  ['runtime'],
  ['dashboard'],
  ['training', 'logEvery'],
  ['data', 'badSamplePolicy'],
  ['data', 'reader'],
  ['checkpoint'],
  ['security'],
  // How the all-reduce moves bytes, not what it computes: every element is summed in the same
  // fixed ring order whatever the buckets, chunks, streams or windows (src/collective/ring.ts).
  // `collective.compress` changes the sums and stays hashed. Tuning these must not turn a run's
  // checkpoints foreign (a new tuning field with a default would otherwise change every hash).
  ['collective', 'bucketMiB'],
  ['collective', 'chunkKiB'],
  ['collective', 'inflight'],
  ['collective', 'streams'],
  ['collective', 'deadlineMs'],
  ['collective', 'maxMessageMiB'],
  ['collective', 'flowControlWindowMiB'],
  ['collective', 'v8InitialOldSpaceMiB'],
];

function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[key];
      if (v !== undefined) out[key] = canonical(v);
    }
    return out;
  }
  return value;
}

/**
 * A stable hash (sha256 hex, first 16 characters) of everything in the config that changes the
 * computation. Peers with another hash are refused; a checkpoint with another hash does not load.
 */
export function configHash(config: Config): string {
  const copy = structuredClone(config) as Record<string, unknown>;
  for (const path of NOT_HASHED) {
    let node: Record<string, unknown> | undefined = copy;
    for (let i = 0; i < path.length - 1 && node; i++) node = node[path[i]!] as Record<string, unknown> | undefined;
    if (node) delete node[path[path.length - 1]!];
  }
  return createHash('sha256').update(JSON.stringify(canonical(copy))).digest('hex').slice(0, 16);
}
