/**
 * Node/V8 command-line flags that a process running collectives should start with (they cannot be
 * set once V8 runs, and `--initial-old-space-size` is refused in NODE_OPTIONS). The local launcher
 * and the Kubernetes worker command put them before the script: `node ...flags bin/parti.mjs worker`.
 *
 * ```ts
 * spawn(process.execPath, [...collectiveNodeFlags(config.collective), BIN, 'worker', ...args]);
 * ```
 */
export function collectiveNodeFlags(collective: { v8InitialOldSpaceMiB: number }): string[] {
  const mib = collective.v8InitialOldSpaceMiB;
  return mib > 0 ? [`--initial-old-space-size=${mib}`] : [];
}
