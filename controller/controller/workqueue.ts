/**
 * A de-duplicating, rate-limited work queue in the manner of client-go's workqueue:
 * - a key waiting in the queue is held once however often it is added;
 * - a key being processed is never handed to a second worker; adds during processing mark it dirty and it
 *   is queued again when the worker calls done();
 * - addRateLimited() backs off per key (base doubling to a cap) and also respects an overall token bucket;
 * - addAfter() schedules a key for later (requeue-after for timers).
 * Timers use the global setTimeout so fake clocks drive them in tests.
 */
const maxTimerDelayMs = 2 ** 31 - 1;

export interface WorkQueueOptions {
  readonly retryBaseMs: number;
  readonly retryMaxMs: number;
  readonly ratePerSecond: number;
  readonly burst: number;
  readonly now?: () => number;
  /** Told how long each key waited in the queue before a worker took it (for metrics). */
  readonly onWait?: (waitedMs: number) => void;
}

export class WorkQueue<K> {
  private readonly queue: K[] = [];
  private readonly dirty = new Set<K>();
  private readonly processing = new Set<K>();
  private readonly failures = new Map<K, number>();
  private readonly delayed = new Map<K, { at: number; timer: NodeJS.Timeout }>();
  private readonly waiters: Array<(key: K | undefined) => void> = [];
  /** When each queued key was queued (performance.now(), only for onWait). */
  private readonly queuedAt = new Map<K, number>();
  private tokens: number;
  private tokensAt: number;
  private shuttingDown = false;
  private readonly now: () => number;

  constructor(private readonly options: WorkQueueOptions) {
    this.now = options.now ?? Date.now;
    this.tokens = options.burst;
    this.tokensAt = this.now();
  }

  /** Keys waiting to be processed (not counting delayed ones or those in progress). */
  get length(): number {
    return this.queue.length;
  }

  /** Keys being processed right now. */
  get inFlight(): number {
    return this.processing.size;
  }

  get idle(): boolean {
    return this.queue.length === 0 && this.processing.size === 0 && this.delayed.size === 0;
  }

  add(key: K): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return;
    const waiter = this.waiters.shift();
    if (waiter) {
      this.dirty.delete(key);
      this.processing.add(key);
      this.options.onWait?.(0);
      waiter(key);
    } else {
      this.queue.push(key);
      if (this.options.onWait) this.queuedAt.set(key, performance.now());
    }
  }

  /** Adds the key after `delayMs`; an earlier pending schedule for the same key wins. */
  addAfter(key: K, delayMs: number): void {
    if (this.shuttingDown) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    const at = this.now() + delayMs;
    const existing = this.delayed.get(key);
    if (existing && existing.at <= at) return;
    if (existing) clearTimeout(existing.timer);
    // setTimeout holds at most 2^31−1 ms; waking early only means looking at the key sooner.
    const timer = setTimeout(() => {
      this.delayed.delete(key);
      this.add(key);
    }, Math.min(delayMs, maxTimerDelayMs));
    timer.unref?.();
    this.delayed.set(key, { at, timer });
  }

  /** Re-adds a key that failed, after its per-key backoff or the overall rate limit, whichever is longer. */
  addRateLimited(key: K): void {
    const failures = this.failures.get(key) ?? 0;
    this.failures.set(key, failures + 1);
    const backoff = Math.min(this.options.retryBaseMs * 2 ** failures, this.options.retryMaxMs);
    this.addAfter(key, Math.max(backoff, this.takeToken()));
  }

  /** How many times in a row this key has failed. */
  retries(key: K): number {
    return this.failures.get(key) ?? 0;
  }

  /** Clears the key's failure history (call after a successful reconcile). */
  forget(key: K): void {
    this.failures.delete(key);
  }

  /** Resolves with the next key to process, or undefined once the queue is shut down. */
  get(): Promise<K | undefined> {
    if (this.shuttingDown) return Promise.resolve(undefined);
    const key = this.queue.shift();
    if (key !== undefined) {
      this.dirty.delete(key);
      this.processing.add(key);
      const queuedAt = this.queuedAt.get(key);
      if (queuedAt !== undefined) {
        this.queuedAt.delete(key);
        this.options.onWait?.(performance.now() - queuedAt);
      }
      return Promise.resolve(key);
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Marks a key's processing finished; if it was added meanwhile it goes back in the queue. */
  done(key: K): void {
    this.processing.delete(key);
    if (this.dirty.has(key)) {
      this.dirty.delete(key);
      this.add(key);
    }
  }

  shutDown(): void {
    this.shuttingDown = true;
    for (const { timer } of this.delayed.values()) clearTimeout(timer);
    this.delayed.clear();
    this.queue.length = 0;
    this.queuedAt.clear();
    this.dirty.clear();
    for (const waiter of this.waiters.splice(0)) waiter(undefined);
  }

  /** Takes one token from the overall bucket; returns how long to wait for it (0 when one is available). */
  private takeToken(): number {
    const now = this.now();
    const { ratePerSecond, burst } = this.options;
    this.tokens = Math.min(burst, this.tokens + ((now - this.tokensAt) / 1000) * ratePerSecond);
    this.tokensAt = now;
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens / ratePerSecond) * 1000);
  }
}
