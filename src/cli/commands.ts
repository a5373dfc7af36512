import type { Command } from 'commander';

/**
 * Every area's subcommands. Each module exports `register(program)`; add one line here per area.
 */
export const commands: ((program: Command) => void)[] = [];
