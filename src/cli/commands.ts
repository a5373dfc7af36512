import type { Command } from 'commander';

/** A top-level subcommand and the module that registers it (`export function register(program)`). */
export interface CommandModule {
  name: string;
  load: () => Promise<{ register: (program: Command) => void }>;
}

/**
 * Every area's subcommands, one line per area. Modules load lazily so that a command pulls in only
 * what it needs: `parti serve` must not load tfjs, `parti data inspect` not gRPC.
 */
export const commands: CommandModule[] = [
  { name: 'model', load: () => import('./model.ts') },
  { name: 'train', load: () => import('./train.ts') },
  { name: 'bench', load: () => import('./bench.ts') },
  { name: 'launch', load: () => import('./launch.ts') },
  { name: 'data', load: () => import('./data.ts') },
  { name: 'coordinator', load: () => import('./coordinator.ts') },
  { name: 'worker', load: () => import('./worker.ts') },
  { name: 'generate', load: () => import('./generate.ts') },
  { name: 'export', load: () => import('./export.ts') },
  { name: 'serve', load: () => import('./serve.ts') },
  { name: 'eval', load: () => import('./eval.ts') },
  { name: 'certs', load: () => import('./certs.ts') },
];
