// A worker's exit code decides whether Kubernetes completes its Indexed Job index (0) or runs it
// again (75, 143): it rests on the coordinator's typed answer (Stop.finished, JoinRefusal.finished),
// and on the coordinator's words only when an older coordinator sent no such field.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import {
  coordinatorService,
  fromGrpcError,
  JOIN_REFUSAL_METADATA,
  JoinRefusedError,
  REFUSED_PREFIX,
  toGrpcStatus,
  type StopCommand,
} from '../coordinator/protocol.ts';
import { coordinatorLost, EXIT_FINISHED, EXIT_JOB_STOPPED, EXIT_PREEMPTED, jobFinished, RETRY_EXIT_CODES, workerExitCode } from './worker-exit-code.ts';

/** A Stop command as the worker decodes it off the wire. */
function overTheWire(stop: StopCommand): StopCommand {
  const { responseSerialize, responseDeserialize } = coordinatorService.commands;
  return responseDeserialize(responseSerialize({ stop })).stop!;
}

test('the typed field decides, whatever the words', () => {
  for (const signalled of [false, true]) {
    // a coordinator that words its end differently still ends the job
    assert.equal(workerExitCode({ reason: 'the run is complete', finished: true, signalled }), EXIT_FINISHED);
    assert.equal(workerExitCode({ reason: 'left at a step boundary', finished: true, signalled }), EXIT_FINISHED);
    // and the old words of the end do not end a job the coordinator says is not done
    assert.equal(workerExitCode({ reason: 'all steps done', finished: false, signalled }), signalled ? EXIT_PREEMPTED : EXIT_JOB_STOPPED);
    assert.equal(workerExitCode({ reason: 'job j has finished', finished: false, signalled }), signalled ? EXIT_PREEMPTED : EXIT_JOB_STOPPED);
  }
  assert.equal(jobFinished({ reason: 'all steps done', finished: false }), false);
  assert.equal(jobFinished({ reason: 'SIGTERM', finished: true }), true);
});

test('without the field (an older coordinator) its words decide: "all steps done" and "has finished"', () => {
  assert.equal(workerExitCode({ reason: 'all steps done', signalled: false }), EXIT_FINISHED);
  assert.equal(workerExitCode({ reason: 'all steps done', signalled: true }), EXIT_FINISHED);
  assert.equal(workerExitCode({ reason: 'coordinator c:7070 join: job j has finished', signalled: false }), EXIT_FINISHED);
  assert.equal(workerExitCode({ reason: 'SIGTERM', signalled: false }), EXIT_JOB_STOPPED);
  assert.equal(workerExitCode({ reason: 'SIGTERM', signalled: true }), EXIT_PREEMPTED);
  assert.equal(workerExitCode({ reason: 'left at a step boundary', signalled: true }), EXIT_PREEMPTED);
  assert.equal(workerExitCode({ reason: 'job j finished-ish', signalled: false }), EXIT_JOB_STOPPED, 'a whole word only');
  assert.deepEqual([...RETRY_EXIT_CODES].sort(), [EXIT_JOB_STOPPED, EXIT_PREEMPTED].sort());
  assert.ok(!RETRY_EXIT_CODES.includes(EXIT_FINISHED));
});

test('Stop.finished crosses the wire with its presence: true, false, and absent from an older coordinator', () => {
  assert.deepEqual(overTheWire({ reason: 'the run is complete', finished: true }), { reason: 'the run is complete', finished: true });
  // false is sent, not dropped as a default: a newer coordinator's "not finished" is never read as absent
  const notDone = overTheWire({ reason: 'all steps done', finished: false });
  assert.equal(notDone.finished, false);
  assert.equal(workerExitCode({ ...notDone, signalled: false }), EXIT_JOB_STOPPED);
  // the bytes of an older coordinator's Stop (no field 2) decode without it: the words decide
  const older = protobuf.parse('syntax = "proto3"; message Stop { string reason = 1; } message Command { oneof kind { Stop stop = 6; } }').root.lookupType('Command');
  const bytes = Buffer.from(older.encode(older.fromObject({ stop: { reason: 'all steps done' } })).finish());
  const decoded = coordinatorService.commands.responseDeserialize(bytes).stop!;
  assert.equal(decoded.finished, undefined);
  assert.equal(workerExitCode({ ...decoded, signalled: false }), EXIT_FINISHED);
});

test('a refused join carries JoinRefusal.finished through the gRPC status; an older coordinator\'s refusal does not', () => {
  const finished = fromGrpcError(toGrpcStatus(new JoinRefusedError('the job is over', { finished: true })), 'coordinator c:7070 join');
  assert.equal(finished.code, 'refused');
  assert.ok(finished instanceof JoinRefusedError);
  assert.deepEqual(finished.refusal, { finished: true });
  assert.equal(finished.message, 'coordinator c:7070 join: the job is over');
  assert.equal(jobFinished({ reason: finished.message, finished: finished.refusal.finished }), true, 'without the old words');
  const notDone = fromGrpcError(toGrpcStatus(new JoinRefusedError('job j has finished', { finished: false })), 'join');
  assert.ok(notDone instanceof JoinRefusedError);
  assert.equal(jobFinished({ reason: notDone.message, finished: notDone.refusal.finished }), false, 'despite the old words');
  // an older coordinator: FAILED_PRECONDITION "refused: job j has finished", no metadata
  const older = fromGrpcError({ code: grpc.status.FAILED_PRECONDITION, details: `${REFUSED_PREFIX}job j has finished`, metadata: new grpc.Metadata() }, 'join');
  assert.equal(older.code, 'refused');
  assert.ok(!(older instanceof JoinRefusedError));
  assert.equal(jobFinished({ reason: older.message }), true);
  // metadata that does not decode is no answer: the words decide
  const garbled = new grpc.Metadata();
  garbled.set(JOIN_REFUSAL_METADATA, Buffer.from([0xff, 0xff, 0xff]));
  const bad = fromGrpcError({ code: grpc.status.FAILED_PRECONDITION, details: `${REFUSED_PREFIX}nope`, metadata: garbled }, 'join');
  assert.ok(!(bad instanceof JoinRefusedError));
  assert.equal(bad.code, 'refused');
});

test('an unreachable coordinator is recognised by the runtime\'s message', () => {
  assert.ok(coordinatorLost('cannot reach the coordinator at c:7070 for 120000 ms: deadline exceeded'));
  assert.ok(!coordinatorLost('coordinator c:7070 join: job j has finished'));
});
