import { filter, map, merge, pairwise, startWith, type Observable, type Subscription } from 'rxjs';
import type { RouteRecord, SessionRecord, SessionStatus } from '../api/types.js';
import { createToReadySeconds, leaderTransitions, leadingSources, sessionSources, watchLagSeconds, workQueueSources, type SessionCounts } from '../metrics/metrics.js';
import type { Cache, CacheChange, CachedRecord, RecordCache } from './informer.js';
import type { Keys } from './keys.js';

/** What the controller's metrics read. */
export interface ControllerView {
  readonly keys: Keys;
  readonly sessions: Cache<CachedRecord<SessionRecord>>;
  readonly statuses: RecordCache<SessionStatus>;
  readonly routes: RecordCache<RouteRecord>;
  readonly leading$: Observable<boolean>;
  leading(): boolean;
  waitingIds(): readonly string[];
  queueDepth(): number;
  now(): number;
}

/**
 * Feeds the controller's metrics: sessions by phase are counted as the caches change (a scrape walks no
 * sessions); the waiting list, queue depth and leadership are read at scrape time; create→Ready times and
 * leader changes are recorded as they happen. Only the leader reports sessions, so summing over replicas
 * counts each session once.
 */
export class ControllerMetrics {
  /** When this process sent each of its own writes (performance.now()), until the watch brings it back. */
  private readonly sentAt = new Map<string, number>();
  /** Each session's phase as counted (Pending until it has a status), and the sessions in each phase. */
  private readonly phases = new Map<string, string>();
  private readonly byPhase = new Map<string, number>();
  private readonly subscriptions: Subscription[] = [];
  private readonly removeSources: Array<() => void> = [];

  constructor(private readonly view: ControllerView) {}

  start(): void {
    const { view } = this;
    this.removeSources.push(
      sessionSources.add(() => this.sessionCounts()),
      workQueueSources.add(() => (view.leading() ? view.queueDepth() : 0)),
      leadingSources.add(() => view.leading()),
    );
    for (const id of view.sessions.ids()) this.count(id);
    this.subscriptions.push(
      merge(view.sessions.changes, view.statuses.changes).subscribe(({ id }) => this.count(id)),
      view.leading$.pipe(startWith(false), pairwise()).subscribe(([before, after]) => {
        if (before !== after) leaderTransitions.inc();
      }),
      view.statuses.changes.subscribe((change) => this.statusChanged(change)),
      this.watchLag('status', view.statuses, (id) => view.keys.status(id)),
      this.watchLag('routes', view.routes, (id) => view.keys.route(id)),
    );
  }

  stop(): void {
    for (const remove of this.removeSources.splice(0)) remove();
    for (const subscription of this.subscriptions.splice(0)) subscription.unsubscribe();
    this.sentAt.clear();
    this.phases.clear();
    this.byPhase.clear();
  }

  /** The reconciler's writer reports the keys it wrote, so the watch lag can be measured when they come back. */
  written(keys: readonly string[], sentAt: number): void {
    // Writes that are never seen again (a key deleted straight after) must not pile up.
    if (this.sentAt.size > 100_000) this.sentAt.clear();
    for (const key of keys) this.sentAt.set(key, sentAt);
  }

  /** Observes the lag of each of this process's writes under a prefix when the watch brings it, not when the cache showed it ahead of the watch. */
  private watchLag<T>(resource: 'status' | 'routes', cache: RecordCache<T>, keyOf: (id: string) => string): Subscription {
    const fromWatch = cache.changes.pipe(
      filter((change) => cache.aheadOf(change.id) === undefined),
      map((change) => change.id),
    );
    return merge(fromWatch, cache.broughtBack).subscribe((id) => {
      const key = keyOf(id);
      const sentAt = this.sentAt.get(key);
      if (sentAt === undefined) return;
      this.sentAt.delete(key);
      watchLagSeconds.observe({ resource }, (performance.now() - sentAt) / 1000);
    });
  }

  private statusChanged({ id, previous, current }: CacheChange<CachedRecord<SessionStatus>>): void {
    const readyAt = current?.value?.readyAt;
    if (!this.view.leading() || readyAt === undefined || previous?.value?.readyAt !== undefined) return;
    const createdAt = this.view.sessions.get(id)?.value?.metadata.createdAt;
    if (createdAt !== undefined) createToReadySeconds.observe(Math.max(0, (Date.parse(readyAt) - Date.parse(createdAt)) / 1000));
  }

  /** Moves the session to the count of its phase now (out of every count once its record is gone). */
  private count(id: string): void {
    const { view } = this;
    const phase = view.sessions.get(id) === undefined ? undefined : (view.statuses.get(id)?.value?.phase ?? 'Pending');
    const before = this.phases.get(id);
    if (phase === before) return;
    if (before !== undefined) {
      const left = (this.byPhase.get(before) ?? 1) - 1;
      if (left > 0) this.byPhase.set(before, left);
      else this.byPhase.delete(before);
    }
    if (phase === undefined) {
      this.phases.delete(id);
    } else {
      this.phases.set(id, phase);
      this.byPhase.set(phase, (this.byPhase.get(phase) ?? 0) + 1);
    }
  }

  private sessionCounts(): SessionCounts {
    const { view } = this;
    if (!view.leading()) return { byPhase: {}, waiting: 0, oldestWaitSeconds: 0 };
    const byPhase = Object.fromEntries(this.byPhase);
    const waiting = view.waitingIds();
    const head = waiting[0] === undefined ? undefined : view.sessions.get(waiting[0])?.value?.metadata.createdAt;
    return { byPhase, waiting: waiting.length, oldestWaitSeconds: head === undefined ? 0 : Math.max(0, (view.now() - Date.parse(head)) / 1000) };
  }
}
