import { merge, type Subscription } from 'rxjs';
import { map } from 'rxjs/operators';
import { parseRecord } from '../api/schemas.js';
import type { RouteRecord, RouterHeartbeat, SessionRecord, SessionStatus, SessionTemplate } from '../api/types.js';
import type { Logger } from '../util/log.js';
import type { Store } from '../store/store.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import { PortAllocator } from './claims.js';
import { StoreInformer, WorkloadInformer } from './informer.js';
import type { Keys } from './keys.js';
import type { PublicAddressing } from './endpoints.js';
import { ConflictError, SessionReconciler } from './reconciler.js';
import { WorkQueue } from './workqueue.js';

export interface ControllerOptions {
  readonly store: Store;
  readonly scheduler: Scheduler;
  readonly keys: Keys;
  readonly templates: ReadonlyMap<string, SessionTemplate>;
  readonly addressing: PublicAddressing;
  readonly tcpPortRange: { readonly start: number; readonly end: number };
  readonly workers: number;
  readonly retryBaseMs: number;
  readonly retryMaxMs: number;
  readonly rateLimitPerSecond: number;
  readonly rateLimitBurst: number;
  readonly routerStaleMs: number;
  readonly log: Logger;
}

/**
 * The event plumbing around the reconciler: watch-fed caches → de-duplicating work queue → a bounded pool
 * of workers calling SessionReconciler.reconcile. Decisions live in the reconciler; this only decides
 * *when* a session is looked at.
 */
export class Controller {
  readonly sessions: StoreInformer<SessionRecord>;
  readonly statuses: StoreInformer<SessionStatus>;
  readonly routes: StoreInformer<RouteRecord>;
  readonly routers: StoreInformer<RouterHeartbeat>;
  readonly workloads: WorkloadInformer;
  readonly queue: WorkQueue<string>;
  private readonly reconciler: SessionReconciler;
  private readonly ports: PortAllocator;
  /** Sessions waiting for routers to apply their routes, with the store index they need applied. */
  private readonly awaitingRouters = new Map<string, number>();
  /** Sessions waiting for a free TCP port; looked at again whenever a routes record goes away. */
  private readonly awaitingPort = new Set<string>();
  private readonly subscriptions: Subscription[] = [];
  private workers: Promise<void>[] = [];
  private readonly log: Logger;

  constructor(private readonly options: ControllerOptions) {
    const { store, keys, log } = options;
    this.log = log.child({ component: 'controller' });
    this.sessions = new StoreInformer(store, keys.sessions, (json) => parseRecord<SessionRecord>('session', json), this.log);
    this.statuses = new StoreInformer(store, keys.statuses, (json) => parseRecord<SessionStatus>('session-status', json), this.log);
    this.routes = new StoreInformer(store, keys.routes, (json) => parseRecord<RouteRecord>('route', json), this.log);
    this.routers = new StoreInformer(store, keys.routers, (json) => parseRecord<RouterHeartbeat>('router-heartbeat', json), this.log);
    this.workloads = new WorkloadInformer(options.scheduler, this.log);
    this.ports = new PortAllocator(options.tcpPortRange.start, options.tcpPortRange.end);
    this.queue = new WorkQueue<string>({
      retryBaseMs: options.retryBaseMs,
      retryMaxMs: options.retryMaxMs,
      ratePerSecond: options.rateLimitPerSecond,
      burst: options.rateLimitBurst,
    });
    this.reconciler = new SessionReconciler({
      store,
      scheduler: options.scheduler,
      keys,
      templates: options.templates,
      ports: this.ports,
      addressing: options.addressing,
      routerStaleMs: options.routerStaleMs,
      log: this.log,
      observed: {
        sessions: this.sessions.cache,
        statuses: this.statuses.cache,
        routes: this.routes.cache,
        routers: this.routers.cache,
        workloads: this.workloads.cache,
        routesIndex: () => this.routes.index,
      },
    });
  }

  /** Starts the watches, waits until every cache is synced, then starts the workers. */
  async start(): Promise<void> {
    // The allocator must see every claim before the first reconcile hands out a port.
    this.subscriptions.push(this.routes.cache.changes.subscribe((change) => this.ports.observe(change)));
    this.subscriptions.push(
      merge(this.sessions.cache.changes, this.statuses.cache.changes, this.routes.cache.changes, this.workloads.cache.changes)
        .pipe(map((change) => change.id))
        .subscribe((id) => this.queue.add(id)),
    );
    this.subscriptions.push(
      this.routes.cache.changes.subscribe((change) => {
        if (change.current === undefined) for (const id of this.awaitingPort) this.queue.add(id);
      }),
    );
    this.subscriptions.push(
      this.routers.cache.changes.subscribe((change) => {
        const applied = change.current?.value?.appliedIndex ?? 0;
        for (const [id, index] of this.awaitingRouters) if (index <= applied || change.current === undefined) this.queue.add(id);
      }),
    );
    for (const informer of [this.sessions, this.statuses, this.routes, this.routers, this.workloads]) informer.start();
    await Promise.all([this.sessions.synced, this.statuses.synced, this.routes.synced, this.routers.synced, this.workloads.synced]);
    this.log.info(
      { sessions: this.sessions.cache.size, workloads: this.workloads.cache.size, routes: this.routes.cache.size },
      'caches synced; reconciling',
    );
    this.workers = Array.from({ length: this.options.workers }, () => this.work());
  }

  async stop(): Promise<void> {
    this.queue.shutDown();
    await Promise.all(this.workers);
    for (const subscription of this.subscriptions.splice(0)) subscription.unsubscribe();
    for (const informer of [this.sessions, this.statuses, this.routes, this.routers, this.workloads]) informer.stop();
  }

  private async work(): Promise<void> {
    for (let id = await this.queue.get(); id !== undefined; id = await this.queue.get()) {
      try {
        const result = await this.reconciler.reconcile(id);
        this.queue.forget(id);
        // What the session waits for may have arrived while it was being reconciled: look again if so.
        if (result.awaitingRoutersAt !== undefined) {
          this.awaitingRouters.set(id, result.awaitingRoutersAt);
          if (this.reconciler.routersCaughtUp(result.awaitingRoutersAt)) this.queue.add(id);
        } else {
          this.awaitingRouters.delete(id);
        }
        if (result.awaitingPort) {
          this.awaitingPort.add(id);
          if (this.ports.used < this.ports.capacity) this.queue.add(id);
        } else {
          this.awaitingPort.delete(id);
        }
        if (result.requeueAfterMs !== undefined) this.queue.addAfter(id, result.requeueAfterMs);
      } catch (error) {
        // A lost compare-and-set only means the cache had not yet seen our previous write: routine.
        const level = error instanceof ConflictError ? 'debug' : 'warn';
        this.log[level]({ err: error, session: id, retries: this.queue.retries(id) }, 'reconcile failed; will retry');
        this.queue.addRateLimited(id);
      } finally {
        this.queue.done(id);
      }
    }
  }
}
