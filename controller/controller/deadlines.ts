import type { Clock } from '../util/clock.js';

/** setTimeout holds at most 2^31−1 ms; a later deadline wakes early and is simply set again. */
const maxDelayMs = 2 ** 31 - 1;

/**
 * One timer per session for its next deadline (idle warning, expiry, start timeout, restart, retention):
 * the controller-runtime "requeue after", keyed so that a newer deadline replaces the older one. Nothing
 * walks every session on a timer.
 */
export class DeadlineTimers {
  private readonly timers = new Map<string, { at: number; timer: unknown }>();

  constructor(
    private readonly clock: Clock,
    private readonly fire: (id: string) => void,
  ) {}

  get size(): number {
    return this.timers.size;
  }

  set(id: string, at: number): void {
    const existing = this.timers.get(id);
    if (existing?.at === at) return;
    this.cancel(id);
    // Already due (the reconcile ran late): no timer, straight back to the queue.
    if (at <= this.clock.now()) {
      this.fire(id);
      return;
    }
    const delay = Math.min(at - this.clock.now(), maxDelayMs);
    const timer = this.clock.setTimeout(() => {
      this.timers.delete(id);
      this.fire(id);
    }, delay);
    this.timers.set(id, { at, timer });
  }

  cancel(id: string): void {
    const existing = this.timers.get(id);
    if (!existing) return;
    this.clock.clearTimeout(existing.timer);
    this.timers.delete(id);
  }

  clear(): void {
    for (const { timer } of this.timers.values()) this.clock.clearTimeout(timer);
    this.timers.clear();
  }
}
