import type { RouteRecord } from '../api/types.js';
import type { RouteTable, RouteTableChanges } from './data-plane.js';

/** Where a record's routes come from: the store, or kept through a store loss (stored ones win). */
export type RouteSource = 'stored' | 'kept';

/**
 * The table a data plane should serve, kept up to date record by record: a change costs in proportion to
 * the routes of the records it touches, never to the whole table, and the tokens and ports it changed are
 * collected for the data plane, which then compares only those with HAProxy. Only routes whose workload
 * address is known are served. Two records claiming one token or port should not happen (the controller
 * hands each out once); if they do, a stored record wins over a kept one, and among records of one source
 * the one that claimed it last.
 */
export class LiveRouteTable {
  private readonly hosts = new ClaimedMap<string>();
  private readonly ports = new ClaimedMap<number>();
  /** What each record claims now, by source and id. */
  private readonly claimed = new Map<string, RouteRecord>();

  /** The table as it stands; changed in place (a data plane is told which routes changed, see takeChanges). */
  readonly table: RouteTable = { hosts: this.hosts.served, ports: this.ports.served };

  /** Sets what one record claims, or with undefined withdraws its claims. */
  set(source: RouteSource, id: string, routes: RouteRecord | undefined): void {
    const claimant = `${source}/${id}`;
    const before = this.claimed.get(claimant);
    if (before === routes) return;
    // Released and claimed again before any key is settled: a route that stays as it was is no change.
    for (const route of servedRoutes(before?.hosts)) this.hosts.release(route.token, claimant);
    for (const route of servedRoutes(before?.ports)) this.ports.release(route.port, claimant);
    for (const route of servedRoutes(routes?.hosts)) this.hosts.claim(route.token, claimant, route.backend);
    for (const route of servedRoutes(routes?.ports)) this.ports.claim(route.port, claimant, route.backend);
    if (routes === undefined) this.claimed.delete(claimant);
    else this.claimed.set(claimant, routes);
    this.hosts.settle();
    this.ports.settle();
  }

  /** The tokens and ports whose route may have changed since the last call. */
  takeChanges(): RouteTableChanges {
    return { hosts: this.hosts.takeChanged(), ports: this.ports.takeChanged() };
  }

  /** Changes taken whose apply failed: they go out again with the next. */
  restore(changes: RouteTableChanges): void {
    this.hosts.markChanged(changes.hosts);
    this.ports.markChanged(changes.ports);
  }
}

/** The routes of a list whose workload address is known. */
function servedRoutes<R extends { readonly backend?: string }>(routes: readonly R[] | undefined): Array<R & { readonly backend: string }> {
  return (routes ?? []).filter((route): route is R & { readonly backend: string } => Boolean(route.backend));
}

/** One map of the table (tokens or ports): who claims each key, and the backend served for it. */
class ClaimedMap<K> {
  readonly served = new Map<K, string>();
  /** Claimant → backend for each key, in the order claimed. */
  private readonly claims = new Map<K, Map<string, string>>();
  /** Keys claimed or released since the last settle(). */
  private readonly touched = new Set<K>();
  private changed = new Set<K>();

  claim(key: K, claimant: string, backend: string): void {
    const claimants = this.claims.get(key) ?? new Map<string, string>();
    claimants.delete(claimant);
    claimants.set(claimant, backend);
    this.claims.set(key, claimants);
    this.touched.add(key);
  }

  release(key: K, claimant: string): void {
    const claimants = this.claims.get(key);
    if (!claimants?.delete(claimant)) return;
    if (claimants.size === 0) this.claims.delete(key);
    this.touched.add(key);
  }

  /** Serves the winner of each key touched since the last call; a key whose backend moved is changed. */
  settle(): void {
    for (const key of this.touched) {
      const backend = winner(this.claims.get(key));
      if (this.served.get(key) === backend) continue;
      if (backend === undefined) this.served.delete(key);
      else this.served.set(key, backend);
      this.changed.add(key);
    }
    this.touched.clear();
  }

  takeChanged(): Set<K> {
    const changed = this.changed;
    this.changed = new Set();
    return changed;
  }

  markChanged(keys: Iterable<K>): void {
    for (const key of keys) this.changed.add(key);
  }
}

/** The backend of the last stored claimant, else of the last kept one. */
function winner(claimants: ReadonlyMap<string, string> | undefined): string | undefined {
  let last: string | undefined;
  let stored: string | undefined;
  for (const [claimant, backend] of claimants ?? []) {
    last = backend;
    if (claimant.startsWith('stored/')) stored = backend;
  }
  return stored ?? last;
}
