import { test } from 'node:test';
import assert from 'node:assert/strict';
import { configHash, loadConfig, parseConfig } from './load.ts';

test('the dashboard section has safe defaults and is not in the config hash', () => {
  const tiny = loadConfig('configs/tiny.yaml');
  assert.equal(tiny.dashboard.host, '127.0.0.1');
  assert.equal(tiny.dashboard.token, undefined);
  assert.equal(tiny.dashboard.allowUnauthenticated, false);
  assert.deepEqual(tiny.dashboard.gallery.prompts, []);
  const raw = JSON.parse(JSON.stringify(tiny));
  raw.dashboard = { host: '0.0.0.0', port: 9000, tokenFile: '/var/run/secrets/token', gallery: { prompts: ['a red circle'], everySteps: 50 } };
  const changed = parseConfig(raw);
  assert.equal(changed.dashboard.gallery.everySteps, 50);
  assert.equal(configHash(changed), configHash(tiny));
});

test('a bad dashboard field names its path', () => {
  const raw = JSON.parse(JSON.stringify(loadConfig('configs/tiny.yaml')));
  raw.dashboard = { port: 70000 };
  assert.throws(() => parseConfig(raw, 'x.yaml'), /x\.yaml: dashboard\.port: /);
  raw.dashboard = { token: 'short' };
  assert.throws(() => parseConfig(raw, 'x.yaml'), /x\.yaml: dashboard\.token: at least 16 characters/);
  raw.dashboard = { tokenEnv: 'not a name' };
  assert.throws(() => parseConfig(raw, 'x.yaml'), /dashboard\.tokenEnv: an environment variable name/);
});
