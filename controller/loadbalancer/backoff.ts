import type { Clock } from '../util/clock.js';

/**
 * How much of a wait is drawn at random: `half` keeps at least half of it (a factor in [0.5, 1)); `full`
 * draws all of it (a factor in [0, 1)), which spreads callers that failed together the most.
 */
export type Jitter = 'half' | 'full';

/**
 * Per-operation exponential backoff with jitter: an operation that AWS throttled or refused waits on its
 * own (base doubling to a cap, times a random factor), while every other operation goes on.
 */
export class OperationBackoff {
  private readonly failures = new Map<string, { count: number; until: number }>();

  constructor(
    private readonly clock: Clock,
    private readonly baseMs: number,
    private readonly maxMs: number,
    private readonly random: () => number = Math.random,
    private readonly jitter: Jitter = 'half',
  ) {}

  /** Whether the operation may run now. */
  ready(key: string): boolean {
    const entry = this.failures.get(key);
    return entry === undefined || entry.until <= this.clock.now();
  }

  /** Records a failure; returns how long the operation now waits. `factor` lengthens waits for errors that clear slowly (quotas). */
  failed(key: string, factor = 1): number {
    const count = (this.failures.get(key)?.count ?? 0) + 1;
    const draw = this.jitter === 'full' ? this.random() : 0.5 + this.random() / 2;
    const delay = Math.round(Math.min(this.baseMs * factor * 2 ** (count - 1), this.maxMs) * draw);
    this.failures.set(key, { count, until: this.clock.now() + delay });
    return delay;
  }

  succeeded(key: string): void {
    this.failures.delete(key);
  }

  /** The earliest time a waiting operation may run again, if any waits. */
  nextAt(): number | undefined {
    let next: number | undefined;
    const now = this.clock.now();
    for (const { until } of this.failures.values()) if (until > now && (next === undefined || until < next)) next = until;
    return next;
  }

  /** Forgets operations that are no longer planned (their key did not come up in the last plan). */
  retain(keys: ReadonlySet<string>): void {
    for (const key of [...this.failures.keys()]) if (!keys.has(key)) this.failures.delete(key);
  }
}
