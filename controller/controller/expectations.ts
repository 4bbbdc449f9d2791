/**
 * Write expectations, as Kubernetes controllers keep them: after the reconciler changes something, the
 * caches show the change only when its watch delivers it. Until then a session's cached view is older than
 * what the reconciler itself did, and acting on it could repeat a registration or undo a decision. So each
 * write records what the cache will show once it has caught up, and the session is not reconciled again
 * until every expectation holds (the watch event that satisfies it requeues the session) or times out.
 */
export class Expectations {
  private readonly pending = new Map<string, Array<{ holds: () => boolean; deadline: number }>>();
  /** Sessions whose last reconcile was put off by waitFor() until their caches catch up. */
  private readonly deferred = new Set<string>();

  constructor(
    private readonly timeoutMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  expect(id: string, holds: () => boolean): void {
    const list = this.pending.get(id) ?? [];
    list.push({ holds, deadline: this.now() + this.timeoutMs });
    this.pending.set(id, list);
  }

  /**
   * Drops what holds or has timed out; returns how long until the earliest remaining deadline,
   * or undefined when the session's caches have caught up with every write.
   */
  waitFor(id: string): number | undefined {
    const list = this.pending.get(id);
    if (list === undefined) return undefined;
    const now = this.now();
    const remaining = list.filter((expectation) => !expectation.holds() && expectation.deadline > now);
    if (remaining.length === 0) {
      this.pending.delete(id);
      this.deferred.delete(id);
      return undefined;
    }
    this.pending.set(id, remaining);
    this.deferred.add(id);
    return Math.min(...remaining.map((expectation) => expectation.deadline)) - now;
  }

  /** Whether the session's last reconcile was put off until its caches show its writes (the echo must requeue it). */
  isDeferred(id: string): boolean {
    return this.deferred.has(id);
  }

  forget(id: string): void {
    this.pending.delete(id);
    this.deferred.delete(id);
  }
}
