import type { Subscription } from 'rxjs';
import { encodeRecord, parseRecord } from '../api/schemas.js';
import type { RouteRecord, RouterHeartbeat } from '../api/types.js';
import { routerApplySeconds, routerSources, type RouterProgress } from '../metrics/metrics.js';
import type { Logger } from '../util/log.js';
import type { Store } from '../store/store.js';
import { StoreInformer, type Cache, type CachedRecord } from '../controller/informer.js';
import type { Keys } from '../controller/keys.js';
import type { DataPlane, RouteTable } from './data-plane.js';

export interface RouterAgentOptions {
  readonly store: Store;
  readonly keys: Keys;
  readonly name: string;
  readonly dataPlane: DataPlane;
  readonly heartbeatMs: number;
  readonly log: Logger;
}

/**
 * Applies the routes in the store to one data plane (a local HAProxy) and reports, in its heartbeat,
 * the store index it has applied, so the controller can tell when a session's routes are live everywhere.
 * Changes arriving while an apply runs are coalesced into the next apply of the whole table.
 */
export class RouterAgent {
  private readonly routes: StoreInformer<RouteRecord>;
  private readonly log: Logger;
  private subscription: Subscription | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private applying: Promise<void> | undefined;
  private pending = false;
  private appliedIndex = 0;
  private stopped = false;
  private removeMetricsSource: (() => void) | undefined;

  constructor(private readonly options: RouterAgentOptions) {
    this.log = options.log.child({ component: 'router', router: options.name });
    this.routes = new StoreInformer(options.store, options.keys.routes, (json) => parseRecord<RouteRecord>('route', json), this.log);
  }

  /** What the router has applied: its status and metrics. */
  get progress(): RouterProgress {
    return { router: this.options.name, appliedIndex: this.appliedIndex, lag: Math.max(0, this.routes.index - this.appliedIndex), routes: this.routes.cache.size };
  }

  /** Starts watching; resolves once the first complete table is live. */
  async start(): Promise<void> {
    this.removeMetricsSource = routerSources.add(() => this.progress);
    this.subscription = this.routes.applied.subscribe(() => this.schedule());
    this.routes.start();
    await this.routes.synced;
    this.schedule();
    await this.applying;
    this.heartbeatTimer = setInterval(() => void this.heartbeat(), this.options.heartbeatMs);
    this.heartbeatTimer.unref?.();
  }

  /** Stops applying and withdraws the heartbeat, so controllers stop waiting for this router at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.removeMetricsSource?.();
    this.subscription?.unsubscribe();
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.routes.stop();
    await this.applying?.catch(() => undefined);
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
      const table = routeTable(this.routes.cache);
      try {
        const startedAt = performance.now();
        await this.options.dataPlane.apply(table);
        routerApplySeconds.observe((performance.now() - startedAt) / 1000);
        this.appliedIndex = index;
        await this.heartbeat();
      } catch (error) {
        this.log.error({ err: error }, 'applying routes failed; retrying');
        await new Promise((resolve) => setTimeout(resolve, 1000));
        this.pending = true;
      }
    } while (this.pending && !this.stopped);
  }

  private async heartbeat(): Promise<void> {
    if (this.stopped) return;
    const heartbeat: RouterHeartbeat = {
      name: this.options.name,
      appliedIndex: this.appliedIndex,
      heartbeatAt: new Date().toISOString(),
    };
    try {
      await this.options.store.put(this.options.keys.router(this.options.name), encodeRecord('router-heartbeat', heartbeat));
    } catch (error) {
      this.log.warn({ err: error }, 'heartbeat write failed');
    }
  }
}

/** The table a data plane should serve: every route whose workload address is known. */
export function routeTable(routes: Cache<CachedRecord<RouteRecord>>): RouteTable {
  const hosts = new Map<string, string>();
  const ports = new Map<number, string>();
  for (const record of routes.values()) {
    for (const route of record.value?.hosts ?? []) if (route.backend) hosts.set(route.token, route.backend);
    for (const route of record.value?.ports ?? []) if (route.backend) ports.set(route.port, route.backend);
  }
  return { hosts, ports };
}
