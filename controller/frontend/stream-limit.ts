import { ApiError } from './errors.js';

/**
 * Long-lived responses (log streams, status streams) each user holds open in this process, within a
 * per-user limit: each holds a socket, a subscription and timers for as long as the client keeps it.
 */
export class StreamCounts {
  private readonly byUser = new Map<string, number>();

  /** `what` names the streams in refusals ("log streams"). */
  constructor(
    readonly limit: number,
    private readonly what: string,
  ) {}

  /** Counts one more stream of `user`; the function returned (once is enough) counts it no more. ApiError 429 at the limit. */
  acquire(user: string): () => void {
    const release = this.tryAcquire(user);
    if (release === undefined) {
      throw new ApiError(429, `user ${user} already has ${this.limit} ${this.what} open, the most allowed; close one first`, [`at most ${this.limit} open ${this.what} per user`]);
    }
    return release;
  }

  /** As acquire(), but undefined at the limit, for protocols that refuse otherwise than with an HTTP answer. */
  tryAcquire(user: string): (() => void) | undefined {
    const count = this.byUser.get(user) ?? 0;
    if (count >= this.limit) return undefined;
    this.byUser.set(user, count + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.byUser.get(user) ?? 1) - 1;
      if (left === 0) this.byUser.delete(user);
      else this.byUser.set(user, left);
    };
  }
}
