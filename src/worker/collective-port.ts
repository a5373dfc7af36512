/**
 * What the worker runtime needs from the collectives (src/collective's CollectiveNode): one
 * membership at a time (epoch, rank, ring order), ring operations with a deadline, and an abort
 * that makes every pending operation of the epoch reject with PartiError('collective-aborted').
 * A structural subset, so tests can hand in an in-memory node and the CLI a gRPC one.
 */
import type { CollectiveNode } from '../collective/collective-node.ts';

export type CollectivePort = Pick<CollectiveNode, 'address' | 'configure' | 'allReduce' | 'reduceScatter' | 'allGather' | 'broadcast' | 'abort' | 'close'>;
