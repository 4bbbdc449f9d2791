import type { Subscription } from 'rxjs';
import { encodeRecord, parseRecord } from '../api/schemas.js';
import type { RouteRecord, RouterHeartbeat } from '../api/types.js';
import { routerApplySeconds, routerSources, type RouterProgress } from '../metrics/metrics.js';
import { systemClock, type Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { Store } from '../store/store.js';
import { StoreInformer, type StoreRewind } from '../controller/informer.js';
import type { Keys } from '../controller/keys.js';
import type { DataPlane } from './data-plane.js';
import { LiveRouteTable } from './route-table.js';

export interface RouterAgentOptions {
  readonly store: Store;
  readonly keys: Keys;
  readonly name: string;
  readonly dataPlane: DataPlane;
  readonly heartbeatMs: number;
  /**
   * How long routes that vanished with a store rewind (its state lost or rolled back) keep being served,
   * so that the store can be restored without cutting the users off; 0 removes them at once.
   */
  readonly storeLossGraceMs: number;
  readonly log: Logger;
  /** Times the grace period, the heartbeats and the retries of a failed apply (default: the system clock). */
  readonly clock?: Clock;
}

/** A failed apply (HAProxy down, its admin socket refusing) is tried again after this long. */
const APPLY_RETRY_MS = 1_000;
/** Of consecutive failed applies, the first and then one in this many are logged as errors. */
const APPLY_FAILURES_PER_ERROR_LOG = 60;

/** Routes served on after they vanished with a store rewind, until `until` or until their record is back. */
interface KeptRoutes {
  readonly routes: RouteRecord;
  readonly until: number;
}

/**
 * Applies the routes in the store to one data plane (a local HAProxy) and reports, in its heartbeat,
 * the store index it has applied, so the controller can tell when a session's routes are live everywhere.
 * The table is kept up to date record by record and the data plane is told which routes changed, so
 * applying a change costs the same with 10 routes or 10,000 (the store's listing, which the watch reads
 * again after each change, still grows with them). Changes arriving while an apply runs go out together
 * in the next.
 *
 * A store that loses its state (or is rolled back) makes every route vanish at once, as if every session
 * had ended. The controller keeps the workloads through its orphan grace period; the router keeps serving
 * their routes just as long, with a loud warning, so restoring the store in time ends no user's session.
 * A route whose record comes back is adopted; one still missing when the grace ends is removed. Deletions
 * seen as changes (no rewind) apply at once, as always.
 */
export class RouterAgent {
  private readonly routes: StoreInformer<RouteRecord>;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly kept = new Map<string, KeptRoutes>();
  /** What the data plane should serve: the stored records' routes, and the kept ones they do not claim. */
  private readonly served = new LiveRouteTable();
  private keptTimer: unknown;
  private readonly subscriptions: Subscription[] = [];
  private heartbeatTimer: unknown;
  private heartbeating: Promise<void> | undefined;
  private heartbeatAgain = false;
  private verifying: Promise<void> | undefined;
  private applying: Promise<void> | undefined;
  /** Consecutive failed applies (HAProxy down or its admin socket wedged). */
  private applyFailures = 0;
  /** The pause before the next attempt after a failed apply, and how to end it early (a stop). */
  private retryTimer: unknown;
  private endRetryPause: (() => void) | undefined;
  private pending = false;
  private appliedIndex = 0;
  private stopped = false;
  private removeMetricsSource: (() => void) | undefined;

  constructor(private readonly options: RouterAgentOptions) {
    this.log = options.log.child({ component: 'router', router: options.name });
    this.clock = options.clock ?? systemClock;
    this.routes = new StoreInformer(options.store, options.keys.routes, (json) => parseRecord<RouteRecord>('route', json), this.log);
  }

  /** What the router has applied: its status and metrics. */
  get progress(): RouterProgress {
    return { router: this.options.name, appliedIndex: this.appliedIndex, lag: Math.max(0, this.routes.index - this.appliedIndex), routes: this.routes.cache.size };
  }

  /**
   * Whether the data plane took the latest apply. While it refuses (HAProxy down, its admin socket wedged)
   * the router is not ready and writes no heartbeat: once its record is stale, controllers stop holding new
   * sessions back for an edge that does not serve them, and `manticore status` shows it down.
   */
  get serving(): boolean {
    return this.applyFailures === 0;
  }

  /** Starts watching; resolves once the first complete table is live. */
  async start(): Promise<void> {
    this.removeMetricsSource = routerSources.add(() => this.progress);
    this.subscriptions.push(
      this.routes.rewinds.subscribe((rewind) => this.keep(rewind)),
      // Its routes stop being served here: say so, or an operator chasing the 404s finds nothing in this log.
      this.routes.reportUnreadable(this.log, 'unreadable routes record: its routes are not served until it is fixed'),
      this.routes.cache.changes.subscribe((change) => {
        this.served.set('stored', change.id, change.current?.value);
        if (change.current !== undefined && this.kept.delete(change.id)) {
          this.served.set('kept', change.id, undefined);
          this.log.info({ session: change.id }, 'the routes record is back after a store loss; serving it from the store again');
        }
      }),
      this.routes.applied.subscribe(() => this.schedule()),
    );
    this.routes.start();
    await this.routes.synced;
    this.schedule();
    await this.applying;
    // Stopped while applying the first table (a signal during start-up): no heartbeat after its withdrawal.
    if (this.stopped) return;
    this.scheduleHeartbeat();
  }

  /** Stops applying and withdraws the heartbeat, so controllers stop waiting for this router at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.removeMetricsSource?.();
    for (const subscription of this.subscriptions.splice(0)) subscription.unsubscribe();
    this.clock.clearTimeout(this.heartbeatTimer);
    this.clock.clearTimeout(this.keptTimer);
    this.clock.clearTimeout(this.retryTimer);
    this.endRetryPause?.();
    this.routes.stop();
    await this.applying?.catch(() => undefined);
    await this.verifying;
    // A heartbeat still on its way could land after the delete and bring the record back.
    await this.heartbeating;
    await this.options.store.delete(this.options.keys.router(this.options.name)).catch((error: unknown) => {
      this.log.warn({ err: error }, 'could not withdraw the router heartbeat');
    });
  }

  private schedule(): void {
    if (this.stopped) return;
    if (this.applying) {
      this.pending = true;
      return;
    }
    this.applying = this.applyLoop().finally(() => (this.applying = undefined));
  }

  private async applyLoop(): Promise<void> {
    do {
      this.pending = false;
      const index = this.routes.index;
      const changes = this.served.takeChanges();
      try {
        const startedAt = performance.now();
        await this.options.dataPlane.apply(this.served.table, changes);
        routerApplySeconds.observe((performance.now() - startedAt) / 1000);
        this.appliedIndex = index;
        if (this.applyFailures > 0) this.log.info({ failures: this.applyFailures }, 'applying routes works again');
        this.applyFailures = 0;
        this.reportProgress();
      } catch (error) {
        this.served.restore(changes);
        this.applyFailures += 1;
        // Once a minute at the retry pace: an HAProxy down for an hour is 60 lines, not 3,600.
        const level = this.applyFailures % APPLY_FAILURES_PER_ERROR_LOG === 1 ? 'error' : 'debug';
        this.log[level]({ err: error, failures: this.applyFailures }, 'applying routes failed; retrying every second');
        await this.retryPause();
        this.pending = true;
      }
    } while (this.pending && !this.stopped);
  }

  /** Keeps serving the routes a store rewind took away, for the grace period. */
  private keep(rewind: StoreRewind<RouteRecord>): void {
    const vanished = rewind.vanished.filter((record) => record.value !== undefined);
    if (vanished.length === 0) return;
    if (this.options.storeLossGraceMs <= 0) {
      this.log.error({ was: rewind.previousIndex, now: rewind.index, routes: vanished.length }, 'the store lost its state: removing the routes that vanished with it (no grace period)');
      return;
    }
    const until = this.clock.now() + this.options.storeLossGraceMs;
    for (const record of vanished) {
      if (this.kept.has(record.id)) continue;
      this.kept.set(record.id, { routes: record.value!, until });
      this.served.set('kept', record.id, record.value);
    }
    const removeAt = new Date(until).toISOString();
    this.log.error(
      { was: rewind.previousIndex, now: rewind.index, routes: vanished.length, removeAt },
      `the store lost its state (index ${rewind.previousIndex} went back to ${rewind.index}): ${vanished.length} sessions' routes vanished; ` +
        `they are still served until about ${removeAt} and removed then unless their records are restored (see "Recovering from a store loss" in docs/lifecycle.md)`,
    );
    this.armKeptTimer();
  }

  /** Wakes at the earliest end of a grace period, drops what has expired and applies the smaller table. */
  private armKeptTimer(): void {
    this.clock.clearTimeout(this.keptTimer);
    if (this.kept.size === 0 || this.stopped) return;
    const next = Math.min(...[...this.kept.values()].map((kept) => kept.until));
    this.keptTimer = this.clock.setTimeout(() => {
      const now = this.clock.now();
      const expired = [...this.kept].filter(([, kept]) => kept.until <= now).map(([id]) => id);
      for (const id of expired) {
        this.kept.delete(id);
        this.served.set('kept', id, undefined);
      }
      if (expired.length > 0) {
        this.log.warn({ routes: expired.length, sessions: expired.slice(0, 20) }, 'grace period over: removing the routes of sessions whose records were not restored');
        this.schedule();
      }
      this.armKeptTimer();
    }, Math.max(0, next - this.clock.now()));
  }

  /**
   * Writes the heartbeat now, or once the one in flight is done, without waiting for it: a store write (tens
   * of ms, more on a busy host) must not delay the next change going live. While one is in flight, further
   * calls only mark that another is due, and that one carries the latest applied index.
   */
  private reportProgress(): void {
    if (this.heartbeating) {
      this.heartbeatAgain = true;
      return;
    }
    this.heartbeating = this.heartbeat().finally(() => {
      this.heartbeating = undefined;
      if (!this.heartbeatAgain) return;
      this.heartbeatAgain = false;
      this.reportProgress();
    });
  }

  private retryPause(): Promise<void> {
    return new Promise((resolve) => {
      this.endRetryPause = resolve;
      this.retryTimer = this.clock.setTimeout(resolve, APPLY_RETRY_MS);
    });
  }

  private scheduleHeartbeat(): void {
    this.heartbeatTimer = this.clock.setTimeout(() => {
      this.reportProgress();
      this.verifyDataPlane();
      this.scheduleHeartbeat();
    }, this.options.heartbeatMs);
  }

  /**
   * Has the data plane check that it still serves the routes (HAProxy reloaded or restarted by someone else
   * loads the map files, which may lag). Skipped while applies fail: the retries re-read everything anyway.
   */
  private verifyDataPlane(): void {
    if (this.stopped || !this.serving || this.verifying) return;
    this.verifying = this.options.dataPlane
      .verify()
      .catch((error: unknown) => this.log.warn({ err: error }, 'could not check that HAProxy still serves the routes; checking again at the next heartbeat'))
      .finally(() => (this.verifying = undefined));
  }

  private async heartbeat(): Promise<void> {
    if (this.stopped || !this.serving) return;
    const heartbeat: RouterHeartbeat = {
      name: this.options.name,
      appliedIndex: this.appliedIndex,
      heartbeatAt: new Date(this.clock.now()).toISOString(),
    };
    try {
      await this.options.store.put(this.options.keys.router(this.options.name), encodeRecord('router-heartbeat', heartbeat));
    } catch (error) {
      this.log.warn({ err: error }, 'heartbeat write failed');
    }
  }
}
