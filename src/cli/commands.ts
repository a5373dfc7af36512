import type { Command } from 'commander';
import { register as registerModel } from './model.ts';
import { register as registerTrain } from './train.ts';
import { register as registerBench } from './bench.ts';
import { register as registerData } from './data.ts';
import { register as registerLaunch } from './launch.ts';
import { register as registerCoordinator } from './coordinator.ts';
import { register as registerWorker } from './worker.ts';
import { register as registerGenerate } from './generate.ts';
import { register as registerExport } from './export.ts';
import { register as registerServe } from './serve.ts';
import { register as registerCerts } from './certs.ts';
import { register as registerEval } from './eval.ts';

/**
 * Every area's subcommands. Each module exports `register(program)`; add one line here per area.
 */
export const commands: ((program: Command) => void)[] = [registerModel, registerTrain, registerBench, registerLaunch, registerData, registerCoordinator, registerWorker, registerGenerate, registerExport, registerServe, registerEval, registerCerts];
