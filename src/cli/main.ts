import { Command, CommanderError } from 'commander';
import { PartiError } from '../errors.ts';
import { commands } from './commands.ts';

/**
 * The `parti` command. Each area registers its subcommands in commands.ts; errors that parti
 * throws on purpose are printed as one line (never a stack trace) with exit code 2 for usage and
 * config errors and 1 for the rest.
 */
export async function buildProgram(argv: readonly string[] = []): Promise<Command> {
  const program = new Command('parti')
    .description('Train Parti-style text-to-image models on a cluster.')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  // Load only the named subcommand's module; help and unknown names load them all.
  const named = commands.find((c) => c.name === argv[0]);
  for (const c of named ? [named] : commands) (await c.load()).register(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = await buildProgram(argv);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander already printed its message (unknown option, missing argument, help).
      return err.exitCode === 0 ? 0 : 2;
    }
    if (err instanceof PartiError) {
      process.stderr.write(`parti: ${err.message}\n`);
      return err.code === 'usage' || err.code === 'config' ? 2 : 1;
    }
    process.stderr.write(`parti: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return 1;
  }
}

const code = await main(process.argv.slice(2));
// Let pending stdout writes flush, then exit even if a stray handle would keep the loop alive.
process.exitCode = code;
setImmediate(() => process.exit(code));
