import { PartiError } from '../errors.ts';

/** Why a request was not admitted. */
export class QueueFullError extends Error {
  constructor(readonly queued: number) {
    super(`the server is busy: ${queued} requests already wait`);
    this.name = 'QueueFullError';
  }
}

interface Waiter {
  grant: (release: () => void) => void;
}

/**
 * At most `concurrency` holders at once and at most `queueLimit` waiting; a request beyond both is
 * refused at once (QueueFullError, answered 429). A waiter whose signal aborts (its request timed
 * out or the client went away) leaves the queue. Waiters are served first come, first served.
 */
export class AdmissionQueue {
  private active = 0;
  private readonly waiting: Waiter[] = [];

  constructor(
    readonly concurrency: number,
    readonly queueLimit: number,
  ) {
    if (!(concurrency >= 1)) throw new PartiError('internal', `AdmissionQueue: concurrency must be >= 1, got ${concurrency}`);
    if (!(queueLimit >= 0)) throw new PartiError('internal', `AdmissionQueue: queueLimit must be >= 0, got ${queueLimit}`);
  }

  /** Requests running now. */
  get running(): number {
    return this.active;
  }

  /** Requests waiting for a slot. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Resolves to a release function once a slot is free; rejects when the queue is full or `signal` aborts. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(new PartiError('deadline', 'request timed out before it was admitted'));
    if (this.active < this.concurrency) {
      this.active++;
      return Promise.resolve(this.releaser());
    }
    if (this.waiting.length >= this.queueLimit) return Promise.reject(new QueueFullError(this.waiting.length));
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiting.indexOf(w);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new PartiError('deadline', 'request timed out while queued'));
      };
      const w: Waiter = {
        grant: (release) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
      };
      this.waiting.push(w);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.waiting.shift();
      // The slot passes straight to the next waiter (active stays the same).
      if (next) next.grant(this.releaser());
      else this.active--;
    };
  }
}
