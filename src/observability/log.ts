import pino, { type Logger } from 'pino';
import pinoPretty from 'pino-pretty';
import { SecretRedactor } from '../security/secret-redactor.ts';

/**
 * Secrets never reach a log line: the values of the secret environment variables (job token,
 * dashboard token, AWS keys), values added with addLogSecret, secret shapes (`Bearer …`, PEM keys,
 * AWS key ids) and the values of secret-named fields (`token`, `authorization`, …).
 */
const redactor = SecretRedactor.fromEnv(process.env);

/** Adds a secret the process learnt elsewhere (a token file) to what logs redact. */
export function addLogSecret(secret: string | undefined): void {
  redactor.add(secret);
}

function redactArg(arg: unknown): unknown {
  if (typeof arg === 'string') return redactor.redact(arg);
  if (arg instanceof Error) return redactor.redactError(arg);
  if (arg && typeof arg === 'object') {
    // Errors keep their stack (redacted) so that pino's err serializer still shows it.
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(arg)) out[k] = v instanceof Error ? redactor.redactError(v) : redactor.redactValue({ [k]: v })[k];
    return out;
  }
  return arg;
}

const hooks = {
  logMethod(this: Logger, args: Parameters<Logger['info']>, method: (...a: unknown[]) => void): void {
    method.apply(this, (args as unknown[]).map(redactArg));
  },
};

/**
 * Structured logs. JSON lines (pino) with the bindings a process adds (job, rank, step, role);
 * readable lines when stderr is a terminal. Level from PARTI_LOG_LEVEL (default info);
 * PARTI_LOG_FORMAT=json or =pretty overrides the terminal check.
 * Logs go to stderr so that stdout stays for a command's output (JSON, tables).
 */
function makeRoot(): Logger {
  const level = process.env.PARTI_LOG_LEVEL ?? 'info';
  const format = process.env.PARTI_LOG_FORMAT;
  const pretty = format === 'pretty' || (process.stderr.isTTY && format !== 'json');
  if (pretty) {
    // In this thread (not a transport) so that messageFormat can be a function.
    return pino(
      { level, hooks },
      pinoPretty({
        destination: 2,
        sync: true,
        colorize: process.stderr.isTTY,
        // One line per entry: who and where first (`worker 1 step 42`), then the message, then the rest.
        messageFormat: (entry, messageKey) => {
          const who = [entry.role, entry.rank, entry.step !== undefined ? `step ${entry.step}` : undefined, entry.trace ? `[${entry.trace}]` : undefined];
          return [...who.filter((x) => x !== undefined && x !== ''), entry[messageKey]].join(' ');
        },
        ignore: 'pid,hostname,role,rank,step,trace',
        singleLine: true,
        translateTime: 'HH:MM:ss',
      }),
    );
  }
  return pino({ level, base: { pid: process.pid }, hooks }, pino.destination({ fd: 2, sync: true }));
}

/** The process-wide logger. Use `log.child({ role, rank, job })` to add bindings. */
export const log: Logger = makeRoot();

/** The bindings that identify where a log line comes from. */
export interface LogBindings {
  /** The job id (config `name` plus a run suffix, as the coordinator assigns it). */
  job?: string;
  /** The worker's rank in the current membership epoch. */
  rank?: number;
  /** The process role. */
  role?: 'coordinator' | 'worker' | 'launcher' | 'server';
  /** The optimizer step a line is about. */
  step?: number;
  /** The worker id (stable across rank changes). */
  worker?: string;
}

/**
 * Adds bindings to every line the process logs from now on (through `log`, `stepLog` and
 * tracers), e.g. `bindProcessLog({ role: 'worker', job, rank })` once a worker has joined, and
 * again when its rank changes. Children made earlier with `log.child` keep their old bindings.
 */
export function bindProcessLog(bindings: LogBindings): void {
  log.setBindings(bindings as Record<string, unknown>);
}

/** A child of `parent` (default: the process logger) that stamps every line with `step`. */
export function stepLog(step: number, parent: Logger = log): Logger {
  return parent.child({ step });
}

const enabled = new Set(
  (process.env.PARTI_TRACE ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean),
);

/** A debug tracer switched on by PARTI_TRACE=name[,name…] (or `*`); a no-op otherwise. */
export type Tracer = ((msg: string, fields?: Record<string, unknown>) => void) & { readonly enabled: boolean };

/**
 * Returns the tracer called `name` (e.g. `ring`, `membership`, `sse`). Its lines are debug detail
 * at level info with `trace: name`, carrying the process bindings current when they are written.
 */
export function tracer(name: string): Tracer {
  const on = enabled.has(name) || enabled.has('*');
  const fn = ((msg: string, fields?: Record<string, unknown>) => {
    // A child per line (only when on) so that bindings added later by bindProcessLog show up.
    if (on) log.child({ trace: name }).info(fields ?? {}, msg);
  }) as Tracer;
  Object.defineProperty(fn, 'enabled', { value: on });
  return fn;
}
