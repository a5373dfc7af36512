import * as tf from '@tensorflow/tfjs';
import { PartiError } from '../errors.ts';
import { log } from '../observability/log.ts';

/** What `runtime.backend` may say. */
export type BackendChoice = 'auto' | 'tensorflow' | 'wasm' | 'cpu';

/** The backend that is running, after `initBackend`. */
export interface BackendInfo {
  /** tfjs backend name: `tensorflow`, `wasm` or `cpu`. */
  name: 'tensorflow' | 'wasm' | 'cpu';
  /** Which package provided it (`@tensorflow/tfjs-node-gpu`, `@tensorflow/tfjs-node`, ...). */
  package: string;
}

let current: BackendInfo | null = null;

async function tryImport(pkg: string): Promise<boolean> {
  try {
    // A variable specifier keeps TypeScript and bundlers from requiring the optional package.
    const spec: string = pkg;
    await import(spec);
    return true;
  } catch {
    return false;
  }
}

async function useWasm(): Promise<BackendInfo> {
  await import('@tensorflow/tfjs-backend-wasm');
  await tf.setBackend('wasm');
  await tf.ready();
  return { name: 'wasm', package: '@tensorflow/tfjs-backend-wasm' };
}

/**
 * Selects and initializes the tfjs backend once per process. `auto` tries
 * @tensorflow/tfjs-node-gpu, then @tensorflow/tfjs-node (neither is a dependency: a cluster image
 * adds one with `npm install @tensorflow/tfjs-node`), else wasm. `tensorflow` fails with a
 * `backend` error when neither native package is installed. The choice is logged.
 *
 * `@tensorflow/tfjs` (imported here) registers the gradients the model needs; tfjs-core alone
 * does not.
 */
export async function initBackend(choice: BackendChoice = 'auto'): Promise<BackendInfo> {
  if (current && (choice === 'auto' || choice === current.name)) return current;
  let info: BackendInfo | null = null;
  if (choice === 'auto' || choice === 'tensorflow') {
    for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
      if ((await tryImport(pkg)) && (await tf.setBackend('tensorflow'))) {
        await tf.ready();
        info = { name: 'tensorflow', package: pkg };
        break;
      }
    }
    if (!info && choice === 'tensorflow') {
      throw new PartiError(
        'backend',
        'runtime.backend: tensorflow needs @tensorflow/tfjs-node-gpu or @tensorflow/tfjs-node installed (npm install @tensorflow/tfjs-node)',
      );
    }
  }
  if (!info && choice === 'cpu') {
    await tf.setBackend('cpu');
    await tf.ready();
    info = { name: 'cpu', package: '@tensorflow/tfjs-backend-cpu' };
  }
  if (!info) info = await useWasm();
  current = info;
  log.info({ backend: info.name, package: info.package, requested: choice }, `tfjs backend: ${info.name}`);
  return info;
}

/** The running backend's name; throws if `initBackend` has not run. */
export function backendName(): BackendInfo['name'] {
  const name = tf.getBackend();
  if (name === 'wasm' || name === 'cpu' || name === 'tensorflow') return name;
  throw new PartiError('illegal-state', `tfjs backend is "${name}"; call initBackend() first`);
}
