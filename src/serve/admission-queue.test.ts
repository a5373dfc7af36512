import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AdmissionQueue, QueueFullError } from './admission-queue.ts';

test('admits up to the concurrency, queues up to the limit, refuses the rest', async () => {
  const q = new AdmissionQueue(2, 1);
  const r1 = await q.acquire();
  const r2 = await q.acquire();
  assert.equal(q.running, 2);
  const order: string[] = [];
  const third = q.acquire().then((r) => {
    order.push('third');
    return r;
  });
  assert.equal(q.queued, 1);
  await assert.rejects(q.acquire(), QueueFullError);
  r1();
  r1(); // a second call is a no-op, not a second slot
  const r3 = await third;
  assert.deepEqual(order, ['third']);
  assert.equal(q.running, 2);
  assert.equal(q.queued, 0);
  r2();
  r3();
  assert.equal(q.running, 0);
});

test('waiters are served in arrival order', async () => {
  const q = new AdmissionQueue(1, 3);
  const first = await q.acquire();
  const order: number[] = [];
  const waits = [1, 2, 3].map((i) =>
    q.acquire().then((release) => {
      order.push(i);
      release();
    }),
  );
  first();
  await Promise.all(waits);
  assert.deepEqual(order, [1, 2, 3]);
  assert.equal(q.running, 0);
});

test('a waiter whose signal aborts leaves the queue with a deadline error', async () => {
  const q = new AdmissionQueue(1, 2);
  const held = await q.acquire();
  const c = new AbortController();
  const waiting = q.acquire(c.signal);
  assert.equal(q.queued, 1);
  c.abort();
  await assert.rejects(waiting, (e: Error & { code?: string }) => e.code === 'deadline');
  assert.equal(q.queued, 0);
  held();
  assert.equal(q.running, 0);
  // An already aborted signal is refused at once.
  await assert.rejects(q.acquire(AbortSignal.abort()), (e: Error & { code?: string }) => e.code === 'deadline');
  assert.equal(q.running, 0);
});

test('queue limit 0 refuses whenever all slots are busy', async () => {
  const q = new AdmissionQueue(1, 0);
  const r = await q.acquire();
  await assert.rejects(q.acquire(), QueueFullError);
  r();
  (await q.acquire())();
});
