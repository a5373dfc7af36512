// Ring all-reduce benchmark, the same as `parti bench allreduce` (flags alike), e.g.
//   flock /tmp/parti-bench.lock npx tsx bench/allreduce.ts --world 2 --mib 64 --json
import { Command } from 'commander';
import { register } from '../src/cli/bench.ts';

const program = new Command('allreduce-bench');
register(program);
await program.parseAsync(['bench', 'allreduce', ...process.argv.slice(2)], { from: 'user' });
process.exit(0);
