import pino, { type Logger } from 'pino';

/**
 * Structured logs. JSON lines (pino) with the bindings a process adds (job, rank, step, role);
 * readable lines when stderr is a terminal. Level from PARTI_LOG_LEVEL (default info).
 * Logs go to stderr so that stdout stays for a command's output (JSON, tables).
 */
function makeRoot(): Logger {
  const level = process.env.PARTI_LOG_LEVEL ?? 'info';
  const pretty = process.stderr.isTTY && process.env.PARTI_LOG_FORMAT !== 'json';
  if (pretty) {
    return pino({
      level,
      transport: {
        target: 'pino-pretty',
        options: { destination: 2, colorize: true, ignore: 'pid,hostname', translateTime: 'HH:MM:ss' },
      },
    });
  }
  return pino({ level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}

/** The process-wide logger. Use `log.child({ role, rank, job })` to add bindings. */
export const log: Logger = makeRoot();

const enabled = new Set(
  (process.env.PARTI_TRACE ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean),
);

/** A debug tracer switched on by PARTI_TRACE=name[,name…] (or `*`); a no-op otherwise. */
export type Tracer = ((msg: string, fields?: Record<string, unknown>) => void) & { readonly enabled: boolean };

/** Returns the tracer called `name`. */
export function tracer(name: string): Tracer {
  const on = enabled.has(name) || enabled.has('*');
  const child = on ? log.child({ trace: name }) : null;
  const fn = ((msg: string, fields?: Record<string, unknown>) => {
    if (child) child.info(fields ?? {}, msg);
  }) as Tracer;
  Object.defineProperty(fn, 'enabled', { value: on });
  return fn;
}
