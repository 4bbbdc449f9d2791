import { firstValueFrom, fromEvent, merge, type Subscription } from 'rxjs';
import { filter, map, startWith, takeUntil } from 'rxjs/operators';
import { parseRecord } from '../api/schemas.js';
import type { ActivityRecord, RouteRecord, RouterHeartbeat, SessionRecord, SessionStatus, SessionTemplate } from '../api/types.js';
import { systemClock, type Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { Store } from '../store/store.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import { Admission } from './admission.js';
import { PortAllocator } from './claims.js';
import { DeadlineTimers } from './deadlines.js';
import { reconcileErrors, reconcileSeconds, workQueueWaitSeconds } from '../metrics/metrics.js';
import { ControllerMetrics } from './controller-metrics.js';
import { FencedWriter } from './fenced-writer.js';
import { StoreInformer, WorkloadInformer } from './informer.js';
import type { Keys } from './keys.js';
import { SoleLeader, type Leadership } from './leader.js';
import type { LifecyclePolicy } from './lifecycle.js';
import type { PublicAddressing } from './endpoints.js';
import { ConflictError, SessionReconciler, TermEndedError } from './reconciler.js';
import { RouterLiveness } from './router-liveness.js';
import { WorkQueue } from './workqueue.js';
import type { Exposer } from '../loadbalancer/exposer.js';

/** How often, at most, the waiting sessions' start estimates are recomputed when the running sessions' times change. */
export const estimateRefreshMs = 10_000;

export interface ControllerOptions {
  readonly store: Store;
  readonly scheduler: Scheduler;
  readonly keys: Keys;
  readonly templates: ReadonlyMap<string, SessionTemplate>;
  readonly addressing: PublicAddressing;
  readonly tcpPortRange: { readonly start: number; readonly end: number };
  readonly limits: { readonly maxSessions: number; readonly maxStarting: number; readonly sessionsPerUser: number };
  readonly policy: LifecyclePolicy;
  /** After the scheduler had no room, the waiting list is retried after this long at the latest. */
  readonly capacityRetryMs: number;
  readonly workers: number;
  readonly retryBaseMs: number;
  readonly retryMaxMs: number;
  readonly rateLimitPerSecond: number;
  readonly rateLimitBurst: number;
  readonly routerStaleMs: number;
  readonly orphanSweepMs: number;
  /** How long a running workload whose session record is missing is kept before it is removed (0: at once). */
  readonly orphanGracePeriodMs: number;
  readonly log: Logger;
  /** The clock of the lifecycle deadlines; the system clock unless a test drives time. */
  readonly clock?: Clock;
  /** Who may act: a LeaderElection among replicas; by default this process alone (the embedded store). */
  readonly leadership?: Leadership;
  /** AWS load balancers in front of the TCP ports: ports are handed out with a listener slot, and reconciled while leading. */
  readonly loadBalancers?: Exposer;
}

/**
 * The event plumbing around the reconciler: watch-fed caches → de-duplicating work queue → a bounded pool
 * of workers calling SessionReconciler.reconcile, plus the timers of each session's next deadline and a
 * slow sweep for orphans. Decisions live in the reconciler and the admission; this only decides *when* a
 * session is looked at.
 */
export class Controller {
  readonly sessions: StoreInformer<SessionRecord>;
  readonly statuses: StoreInformer<SessionStatus>;
  readonly routes: StoreInformer<RouteRecord>;
  readonly routers: StoreInformer<RouterHeartbeat>;
  readonly activities: StoreInformer<ActivityRecord>;
  readonly workloads: WorkloadInformer;
  readonly leadership: Leadership;
  readonly admission: Admission;
  private readonly reconciler: SessionReconciler;
  private readonly ports: PortAllocator;
  private readonly deadlines: DeadlineTimers;
  private readonly routerLiveness: RouterLiveness;
  private readonly metrics: ControllerMetrics;
  /** Sessions waiting for routers to apply their routes, with the store index they need applied. */
  private readonly awaitingRouters = new Map<string, number>();
  private readonly subscriptions: Subscription[] = [];
  /** The queue of the current (or next) leadership term; replaced when a term ends. */
  private termQueue: WorkQueue<string>;
  /** Resolves when the workers of every term so far have finished. */
  private workersDone: Promise<void> = Promise.resolve();
  private stopping = false;
  private termActive = false;
  /** Aborted when the current term ends (or the controller stops). */
  private termEnd = new AbortController();
  /**
   * Aborted when this process stops leading: the term's scheduler calls are abandoned or not sent. Not on a
   * stop, which drains the reconciles in flight while it still holds the lock.
   */
  private leadershipLost = new AbortController();
  private synced = false;
  private sweepTimer: unknown;
  private estimateTimer: unknown;
  private readonly clock: Clock;
  private readonly log: Logger;

  constructor(private readonly options: ControllerOptions) {
    const { store, keys, log } = options;
    this.clock = options.clock ?? systemClock;
    this.log = log.child({ component: 'controller' });
    this.sessions = new StoreInformer(store, keys.sessions, (json) => parseRecord<SessionRecord>('session', json), this.log);
    this.statuses = new StoreInformer(store, keys.statuses, (json) => parseRecord<SessionStatus>('session-status', json), this.log);
    this.routes = new StoreInformer(store, keys.routes, (json) => parseRecord<RouteRecord>('route', json), this.log);
    this.routers = new StoreInformer(store, keys.routers, (json) => parseRecord<RouterHeartbeat>('router-heartbeat', json), this.log);
    this.activities = new StoreInformer(store, keys.activities, (json) => parseRecord<ActivityRecord>('activity', json), this.log);
    this.workloads = new WorkloadInformer(options.scheduler, this.log);
    this.ports = new PortAllocator(options.tcpPortRange.start, options.tcpPortRange.end, options.loadBalancers?.pool ?? []);
    options.loadBalancers?.bind(this.ports);
    this.leadership = options.leadership ?? new SoleLeader();
    this.termQueue = this.newQueue();
    this.metrics = new ControllerMetrics({
      keys,
      sessions: this.sessions.cache,
      statuses: this.statuses.cache,
      routes: this.routes.cache,
      leading$: this.leadership.leading$,
      leading: () => this.leadership.leading,
      waitingIds: () => this.admission.waitingIds(),
      queueDepth: () => this.termQueue.length,
      now: () => this.clock.now(),
    });
    this.deadlines = new DeadlineTimers(this.clock, (id) => this.queue.add(id));
    const now = (): number => this.clock.now();
    this.routerLiveness = new RouterLiveness(this.routers.cache, this.routers.synced, now, options.routerStaleMs);
    this.admission = new Admission(
      { sessions: this.sessions.cache, statuses: this.statuses.cache, routes: this.routes.cache, workloads: this.workloads.cache },
      { ...options.limits, capacityRetryMs: options.capacityRetryMs },
      now,
      (id) => this.queue.add(id),
      () => this.refreshEstimatesSoon(),
      () => this.ports.room(),
    );
    const exposer = options.loadBalancers;
    this.reconciler = new SessionReconciler({
      writer: new FencedWriter(
        store,
        () => this.leadership.fence(),
        (keys, sentAt) => this.metrics.written(keys, sentAt),
      ),
      scheduler: options.scheduler,
      keys,
      templates: options.templates,
      ports: this.ports,
      admission: this.admission,
      addressing: exposer ? { ...options.addressing, loadBalancerHost: (name) => exposer.dnsName(name) } : options.addressing,
      ...(exposer ? { listeners: exposer } : {}),
      policy: options.policy,
      sessionsPerUser: options.limits.sessionsPerUser,
      routerStaleMs: options.routerStaleMs,
      orphanGracePeriodMs: options.orphanGracePeriodMs,
      log: this.log,
      now,
      observed: {
        sessions: this.sessions.cache,
        statuses: this.statuses.cache,
        routes: this.routes.cache,
        routers: this.routerLiveness,
        activities: this.activities.cache,
        workloads: this.workloads.cache,
        routesIndex: () => this.routes.index,
      },
    });
  }

  /** The work queue of the current leadership term (standbys collect work they drop when they win). */
  get queue(): WorkQueue<string> {
    return this.termQueue;
  }

  /** Whether every cache has been filled once (readiness). */
  get ready(): boolean {
    return this.synced;
  }

  /**
   * Starts the watches and waits until every cache is synced, then competes for leadership; workers run
   * only while this process leads, so a standby keeps warm caches and starts acting as soon as it wins.
   */
  async start(): Promise<void> {
    // A session's own record is reported in its status; these would otherwise be passed over in silence.
    this.subscriptions.push(
      this.statuses.reportUnreadable(this.log, "unreadable status record: the leader writes it again at its session's next reconcile"),
      this.activities.reportUnreadable(this.log, "unreadable activity record: the session's idle time counts from when it was Ready until the record is written again"),
      this.routers.reportUnreadable(this.log, 'unreadable router heartbeat: the router counts as not alive until it writes its next one'),
    );
    // The allocator and the waiting list must see every claim before the first reconcile admits anyone.
    this.subscriptions.push(this.routes.cache.changes.subscribe((change) => this.ports.observe(change)));
    // A port freed goes to the sessions owed one before the waiting list sees it as room.
    this.subscriptions.push(this.ports.owedRoomChanges.subscribe((id) => this.queue.add(id)));
    // The waiting list follows changes once it has been loaded from the synced caches (below).
    this.subscriptions.push(
      merge(this.sessions.cache.changes, this.statuses.cache.changes, this.routes.cache.changes, this.workloads.cache.changes)
        .pipe(filter(() => this.synced))
        .subscribe((change) => this.admission.refresh(change.id)),
    );
    // A status is the reconciler's output: its own status write coming back needs no second look, unless
    // the session's reconcile was put off until its caches showed its writes.
    const statusInputs = this.statuses.cache.changes.pipe(filter((change) => change.echo !== true || this.reconciler.awaitsOwnWrites(change.id)));
    this.subscriptions.push(
      merge(this.sessions.cache.changes, statusInputs, this.routes.cache.changes, this.activities.cache.changes, this.workloads.cache.changes)
        .pipe(map((change) => change.id))
        .subscribe((id) => this.queue.add(id)),
    );
    // Room in the cluster: a node joined, or a workload that held resources ended.
    this.subscriptions.push(this.options.scheduler.capacityChanges().subscribe(() => this.admission.capacityChanged()));
    this.subscriptions.push(
      this.workloads.cache.changes.subscribe((change) => {
        if (change.current === undefined && change.previous?.allocation !== undefined) this.admission.capacityChanged();
      }),
    );
    this.subscriptions.push(
      this.routers.cache.changes.subscribe((change) => {
        const applied = change.current?.value?.appliedIndex ?? 0;
        for (const [id, index] of this.awaitingRouters) if (index <= applied || change.current === undefined) this.queue.add(id);
      }),
    );
    const exposer = this.options.loadBalancers;
    if (exposer) {
      this.subscriptions.push(this.ports.assignmentChanges.subscribe((loadBalancer) => exposer.claimsChanged(loadBalancer)));
      this.subscriptions.push(
        exposer.changes.subscribe((change) => {
          if (change.kind === 'room') return this.admission.roomChanged();
          const id = this.ports.ownerOf(change.port);
          if (id !== undefined) this.queue.add(id);
        }),
      );
    }
    const informers = [this.sessions, this.statuses, this.routes, this.routers, this.activities, this.workloads];
    for (const informer of informers) informer.start();
    await Promise.all(informers.map((informer) => informer.synced));
    this.admission.load(new Set([...this.sessions.cache.ids(), ...this.statuses.cache.ids(), ...this.routes.cache.ids(), ...this.workloads.cache.ids()]));
    this.synced = true;
    this.log.info(
      { sessions: this.sessions.cache.size, waiting: this.admission.waitingCount, workloads: this.workloads.cache.size, routes: this.routes.cache.size },
      'caches synced; competing for leadership',
    );
    this.metrics.start();
    this.subscriptions.push(this.leadership.leading$.subscribe((leading) => (leading ? this.lead() : this.follow())));
    this.leadership.start();
    this.scheduleSweep();
  }

  /** Stops taking work, lets the reconciles in flight finish, then hands leadership over. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.options.loadBalancers?.pause();
    this.clock.clearTimeout(this.sweepTimer);
    this.clock.clearTimeout(this.estimateTimer);
    this.deadlines.clear();
    this.termQueue.shutDown();
    this.termEnd.abort();
    await this.workersDone;
    await this.leadership.stop();
    this.metrics.stop();
    for (const subscription of this.subscriptions.splice(0)) subscription.unsubscribe();
    for (const informer of [this.sessions, this.statuses, this.routes, this.routers, this.activities, this.workloads]) informer.stop();
  }

  /**
   * Running sessions' expiry times move with their users' activity; the waiting sessions' estimates follow
   * at most once per estimateRefreshMs rather than on every keepalive, and only those whose shown estimate
   * changes are reconciled.
   */
  private refreshEstimatesSoon(): void {
    if (this.estimateTimer !== undefined) return;
    this.estimateTimer = this.clock.setTimeout(() => {
      this.estimateTimer = undefined;
      this.admission.refreshEstimates();
    }, estimateRefreshMs);
  }

  /**
   * Every change already reaches the session it concerns; this slow sweep is the safety net for anything a
   * watch could not report (a resource of ours whose session vanished while no one watched): it queues
   * whatever carries our marker but has no session.
   */
  private scheduleSweep(): void {
    this.sweepTimer = this.clock.setTimeout(() => {
      let orphans = 0;
      for (const cache of [this.workloads.cache, this.routes.cache, this.statuses.cache, this.activities.cache]) {
        for (const id of cache.ids()) {
          if (this.sessions.cache.get(id) !== undefined) continue;
          orphans += 1;
          this.queue.add(id);
        }
      }
      if (orphans > 0) this.log.info({ orphans }, 'orphan sweep queued resources without a session');
      this.scheduleSweep();
    }, this.options.orphanSweepMs);
  }

  /**
   * A term begins: everything known is queued (level-triggered: whatever happened while standing by is
   * seen), and workers start once the previous term's in-flight reconciles have finished, so no session
   * is ever reconciled twice at once, and the new term's memory of orphans is its own.
   */
  private lead(): void {
    if (this.stopping) return;
    this.termActive = true;
    const queue = this.termQueue;
    const termEnd = (this.termEnd = new AbortController()).signal;
    const lost = (this.leadershipLost = new AbortController()).signal;
    for (const cache of [this.sessions.cache, this.workloads.cache, this.routes.cache, this.statuses.cache, this.activities.cache]) {
      for (const id of cache.ids()) queue.add(id);
    }
    this.log.info({ queued: queue.length }, 'leading: reconciling every session');
    this.workersDone = this.workersDone.then(async () => {
      if (!(await this.catchUp(termEnd))) return;
      // AWS follows the claims: a routes cache behind the store would have a port just claimed taken for a stray listener.
      this.options.loadBalancers?.resume();
      this.reconciler.beginTerm(lost);
      await Promise.all(Array.from({ length: this.options.workers }, () => this.work(queue)));
    });
  }

  /**
   * Waits until the store caches show everything the store held when this term began. Each cache follows
   * its prefix through a watch of its own, and one may lag another: just after the previous leader removed
   * a session, a standby can still hold its record but no longer its status or routes, and acting on that
   * brings the session back (its routes claimed, its job registered and its status written again). No other
   * controller writes once this one holds the lock, so the index of each prefix read now is a point to wait
   * for (read without the values: at 10,000 sessions a listing of the statuses is tens of megabytes).
   * Retried until it succeeds; false when the term ended first.
   */
  private async catchUp(termEnd: AbortSignal): Promise<boolean> {
    const startedAt = performance.now();
    const ended = fromEvent(termEnd, 'abort');
    // A read still on its way when the term ends (a stop while the store does not answer) is not waited for.
    const aborted = firstValueFrom(ended, { defaultValue: undefined }).then(() => undefined);
    for (let failures = 0; !termEnd.aborted; failures++) {
      try {
        await Promise.all(
          [this.sessions, this.statuses, this.routes, this.activities].map(async (informer) => {
            const read = await Promise.race([this.options.store.prefixIndex(informer.prefix), aborted]);
            if (read === undefined) return;
            const caughtUp = informer.applied.pipe(startWith(undefined), filter(() => informer.caughtUpWith(read)), takeUntil(ended));
            await firstValueFrom(caughtUp, { defaultValue: undefined });
          }),
        );
        if (termEnd.aborted) break;
        this.log.info({ ms: Math.round(performance.now() - startedAt) }, 'caches caught up with the store; reconciling');
        return true;
      } catch (error) {
        if (termEnd.aborted) break;
        const retryInMs = Math.min(100 * 2 ** failures, 10_000);
        this.log.warn({ err: error, retryInMs }, 'reading the store to begin the term failed; retrying');
        await this.pause(retryInMs, termEnd);
      }
    }
    return false;
  }

  /** Waits `ms` on the controller's clock, or until `signal` aborts. */
  private pause(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const onAbort = (): void => {
        this.clock.clearTimeout(timer);
        resolve();
      };
      const timer = this.clock.setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * A term ends: no new work is taken; in-flight reconciles finish, their fenced writes fail if the lease is
   * gone, and their scheduler calls are abandoned or not sent (leadershipLost). Also while stopping: the
   * reconciles it drains may no longer call the scheduler once another replica can lead.
   */
  private follow(): void {
    if (!this.termActive) return;
    this.termActive = false;
    this.leadershipLost.abort();
    // stop() has already paused the load balancers, ended the term and shut its queue down.
    if (this.stopping) return;
    this.options.loadBalancers?.pause();
    this.termEnd.abort();
    this.termQueue.shutDown();
    this.termQueue = this.newQueue();
    this.log.info('standing by');
  }

  private newQueue(): WorkQueue<string> {
    const { retryBaseMs, retryMaxMs, rateLimitPerSecond, rateLimitBurst } = this.options;
    return new WorkQueue<string>({ retryBaseMs, retryMaxMs, ratePerSecond: rateLimitPerSecond, burst: rateLimitBurst, onWait: (ms) => workQueueWaitSeconds.observe(ms / 1000) });
  }

  private async work(queue: WorkQueue<string>): Promise<void> {
    for (let id = await queue.get(); id !== undefined; id = await queue.get()) {
      const startedAt = performance.now();
      try {
        const result = await this.reconciler.reconcile(id);
        reconcileSeconds.observe((performance.now() - startedAt) / 1000);
        if (result.retryAfterError === undefined) queue.forget(id);
        else this.retry(queue, id, result.retryAfterError);
        // What the session waits for may have arrived while it was being reconciled: look again if so.
        if (result.awaitingRoutersAt !== undefined) {
          this.awaitingRouters.set(id, result.awaitingRoutersAt);
          if (this.reconciler.routersCaughtUp(result.awaitingRoutersAt)) queue.add(id);
        } else {
          this.awaitingRouters.delete(id);
        }
        if (result.requeueAfterMs !== undefined) queue.addAfter(id, result.requeueAfterMs);
        // A session catching up on its own writes keeps its deadline; otherwise the result sets it.
        if (result.wakeAt !== undefined) this.deadlines.set(id, result.wakeAt);
        else if (result.requeueAfterMs === undefined) this.deadlines.cancel(id);
      } catch (error) {
        reconcileSeconds.observe((performance.now() - startedAt) / 1000);
        // The term's queue is shut down and the next leader looks at the session again: nothing to retry or report.
        if (error instanceof TermEndedError) this.log.debug({ err: error, session: id }, 'the leadership term ended before the scheduler call finished; reconcile dropped');
        else this.retry(queue, id, error);
      } finally {
        queue.done(id);
      }
    }
  }

  /** The session is looked at again after its backoff. */
  private retry(queue: WorkQueue<string>, id: string, error: unknown): void {
    // A lost compare-and-set only means the cache had not yet seen our previous write: routine.
    const conflict = error instanceof ConflictError;
    reconcileErrors.inc({ reason: conflict ? 'conflict' : 'error' });
    const level = conflict ? 'debug' : 'warn';
    this.log[level]({ err: error, session: id, retries: queue.retries(id) }, 'reconcile failed; will retry');
    queue.addRateLimited(id);
  }
}
