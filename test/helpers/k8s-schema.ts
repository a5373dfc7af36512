import { isDeepStrictEqual } from 'node:util';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { Job } from 'kubernetes-models/batch/v1/Job';
import { ObjectSerializer } from '@kubernetes/client-node/dist/gen/models/ObjectSerializer.js';

/**
 * Schema checks for rendered Kubernetes objects, from two independent sources:
 * - kubernetes-models: validators generated from the Kubernetes OpenAPI schemas (types, required
 *   fields, enums such as a podFailurePolicy action); they accept unknown fields;
 * - @kubernetes/client-node's model maps (also generated from the OpenAPI schemas): a round trip
 *   through its serializer drops any field the API does not define, so a misspelt field shows up
 *   as a difference.
 */

type Model = { validate(): void };
const MODELS: Record<string, { ctor: new (data: never) => Model; clientType: string }> = {
  'v1/ConfigMap': { ctor: ConfigMap as never, clientType: 'V1ConfigMap' },
  'v1/Secret': { ctor: Secret as never, clientType: 'V1Secret' },
  'v1/Service': { ctor: Service as never, clientType: 'V1Service' },
  'apps/v1/Deployment': { ctor: Deployment as never, clientType: 'V1Deployment' },
  'batch/v1/Job': { ctor: Job as never, clientType: 'V1Job' },
};

/** Returns the problems of one object (empty when it is valid). */
export function schemaProblems(object: { apiVersion?: string; kind?: string; metadata?: { name?: string } }): string[] {
  const id = `${object.kind}/${object.metadata?.name}`;
  const model = MODELS[`${object.apiVersion}/${object.kind}`];
  if (!model) return [`${id}: no schema for ${object.apiVersion} ${object.kind}`];
  const problems: string[] = [];
  try {
    new model.ctor(structuredClone(object) as never).validate();
  } catch (err) {
    problems.push(`${id}: ${(err as Error).message}`);
  }
  const roundTrip = JSON.parse(
    JSON.stringify(ObjectSerializer.serialize(ObjectSerializer.deserialize(structuredClone(object), model.clientType, ''), model.clientType, '')),
  );
  for (const path of differences(object, roundTrip, '')) problems.push(`${id}: unknown field ${path}`);
  return problems;
}

function differences(a: unknown, b: unknown, path: string): string[] {
  if (isDeepStrictEqual(a, b)) return [];
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) => differences((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], `${path}.${k}`));
  }
  return [path || '(root)'];
}
