import { createHash } from 'node:crypto';

/**
 * The suffix kustomize's configMapGenerator appends to a ConfigMap's name (`NAME-<suffix>`), so
 * that `parti launch` names the ConfigMap exactly as `kubectl apply -k` does and a changed config
 * gets a new name (and rolls the coordinator). kustomize (api/hasher) hashes the Go JSON encoding
 * of {data, kind, name} with sorted keys; the name it hashes is empty in the kustomize v5 that
 * ships with kubectl 1.32 (checked against `kubectl kustomize` in test/k8s-manifests.test.ts).
 */
export function configMapHashSuffix(data: Record<string, string>): string {
  const sortedData: Record<string, string> = {};
  for (const key of Object.keys(data).sort()) sortedData[key] = data[key]!;
  const encoded = goJsonStringify({ data: sortedData, kind: 'ConfigMap', name: '' });
  const hex = createHash('sha256').update(encoded, 'utf8').digest('hex');
  // kustomize's encodeHash: the first 10 hex digits, with digits and vowels that could spell
  // words swapped for consonants.
  const swap: Record<string, string> = { '0': 'g', '1': 'h', '3': 'k', a: 'm', e: 't' };
  return hex
    .slice(0, 10)
    .split('')
    .map((ch) => swap[ch] ?? ch)
    .join('');
}

/** JSON as Go's encoding/json writes it: like JSON.stringify, but with <, >, &, U+2028 and U+2029 escaped. */
function goJsonStringify(value: unknown): string {
  return JSON.stringify(value).replace(/[<>&\u2028\u2029]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
