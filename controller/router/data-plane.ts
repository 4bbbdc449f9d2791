import { performance } from 'node:perf_hooks';
import type { Logger } from '../util/log.js';
import { runPaths, validateRouteTable, type PortRange } from './haproxy-config.js';
import { HaproxyRuntimeError, MAX_CONNECTIONS_PER_SOCKET, type HaproxyRuntime } from './haproxy-runtime.js';
import { MapFileWriter } from './map-files.js';

/** The routes a data plane serves. */
export interface RouteTable {
  /** Session token (first label of the hostname) → workload `ip:port`. */
  readonly hosts: ReadonlyMap<string, string>;
  /** Public TCP port → workload `ip:port`. */
  readonly ports: ReadonlyMap<number, string>;
}

/** The tokens and ports whose route may differ from the table passed before (added, changed or removed). */
export interface RouteTableChanges {
  readonly hosts: ReadonlySet<string>;
  readonly ports: ReadonlySet<number>;
}

/** What the router agent drives: make the served routes equal a table. */
export interface DataPlane {
  /**
   * Makes the served routes equal `table`. With `changes`, the caller says that only those routes differ
   * from the table it passed before (it keeps one table and changes it in place), so that the work is in
   * proportion to the change rather than to the table; the first apply takes the whole table regardless.
   */
  apply(table: RouteTable, changes?: RouteTableChanges): Promise<void>;
  /**
   * Checks that the routes applied are still served, and applies the whole table again if they may not be
   * (HAProxy reloaded or restarted by something other than the router). The router calls it on its heartbeat.
   */
  verify(): Promise<void>;
}

export interface HaproxyDataPlaneOptions {
  readonly runtime: HaproxyRuntime;
  /** HAProxy's run directory; the map files live here under the names the config template uses. */
  readonly runDir: string;
  readonly log: Logger;
  /** If given, public ports outside this range are rejected. */
  readonly tcpPorts?: PortRange;
  /**
   * `set map` commands in flight at once while applying a large diff (default: as many as the runtime client
   * opens to one socket at once, MAX_CONNECTIONS_PER_SOCKET); adds and deletes go in batches.
   */
  readonly concurrency?: number;
}

interface LiveMap {
  /** Key → value as HAProxy holds it (first entry of a duplicated key). */
  readonly entries: Map<string, string>;
  /** Keys HAProxy holds more than once; they are deleted and re-added so exactly one entry remains. */
  readonly duplicates: Set<string>;
}

interface MapDiff {
  readonly adds: Array<[string, string]>;
  readonly sets: Array<[string, string]>;
  readonly dels: string[];
  /** Keys to delete before they are re-added (duplicates). */
  readonly resets: string[];
}

/** The two maps as HAProxy keys them (ports as text). */
interface Maps<T> {
  readonly hosts: T;
  readonly ports: T;
}

/** Keys to compare with HAProxy at the next apply: all of them, or those changed since the last. */
type Pending = Maps<Set<string>> | 'all';

interface Waiter {
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

/** Payload bytes per `add map` command, well under the runtime client's MAX_REQUEST_BYTES (HAProxy's 16 KB buffer). */
const MAX_PAYLOAD_BYTES = 8_000;

/**
 * Applies route tables to a running HAProxy through its Runtime API, with no reload: the live maps are
 * compared with the table (read with `show map` on first use, so a restarted agent syncs with an HAProxy
 * that kept running) and changed entry by entry, so routes that do not change are never touched. Told
 * which routes changed, it checks and compares only those. An apply resolves once the routes are live.
 * Both map files then follow in the background (MapFileWriter), so a restart or reload loads the same
 * routes without their durable write delaying the next change. One apply runs at a time; tables passed
 * while one runs go out together in the next, the latest value of each route winning.
 */
export class HaproxyDataPlane implements DataPlane {
  private readonly runtime: HaproxyRuntime;
  private readonly log: Logger;
  private readonly hostsMap: string;
  private readonly tcpMap: string;
  private readonly tcpPorts: PortRange | undefined;
  private readonly concurrency: number;
  private readonly files: MapFileWriter;
  /** What HAProxy holds, as far as this process knows; undefined until read, and after a failure or a restart. */
  private live: Maps<LiveMap> | undefined;
  /** The routes to serve: this class's own copy of every table passed, checked before it got here. */
  private desired: Maps<Map<string, string>> | undefined;
  private pending: Pending = 'all';
  /**
   * The HAProxy worker the live maps were read from (`show info` Pid and Start_time_sec): another one answering
   * loaded the map files instead. Undefined until read, and after a failure.
   */
  private worker: string | undefined;
  /** Read HAProxy's maps again before the next apply (it restarted or reloaded). */
  private refresh = false;
  /** The router's own reloads and restarts under way (replaceWorker), and how many have begun. */
  private replacing = 0;
  private replacementsBegun = 0;
  private running = false;
  /** Callers whose tables are in `desired` and not yet applied. */
  private waiting: Waiter[] = [];

  constructor(options: HaproxyDataPlaneOptions) {
    this.runtime = options.runtime;
    this.log = options.log;
    const paths = runPaths(options.runDir);
    this.hostsMap = paths.hostsMap;
    this.tcpMap = paths.tcpMap;
    this.tcpPorts = options.tcpPorts;
    this.concurrency = Math.max(1, options.concurrency ?? MAX_CONNECTIONS_PER_SOCKET);
    this.files = new MapFileWriter({ hosts: paths.hostsMap, ports: paths.tcpMap }, options.log);
  }

  /** Makes HAProxy's live maps equal `table` (the map files follow). Rejects invalid routes before touching anything. */
  apply(table: RouteTable, changes?: RouteTableChanges): Promise<void> {
    try {
      if (changes === undefined || this.desired === undefined) this.takeWhole(table);
      else this.takeChanges(table, changes);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.schedule();
  }

  /** Resolves once the map files hold the last table applied; rejects if writing them failed (it is retried). */
  flush(): Promise<void> {
    return this.files.flush();
  }

  /**
   * Runs `replace`, the router's own reload or restart of HAProxy, then re-reads the live maps and re-applies
   * the last table: the new worker loaded the map files, and a change sent during the switch may have reached
   * the old one. The files are brought up to date first (they may lag the live maps by a second), so the new
   * worker does not serve the routes of a second ago (404 for sessions just made Ready) until the resync.
   * Until the new worker is read, verify() does not take it for a reload behind the router's back. A failure
   * of either is thrown; the next verify() then re-applies every route.
   */
  async replaceWorker(replace: () => Promise<void>): Promise<void> {
    this.replacing++;
    this.replacementsBegun++;
    try {
      // A file that cannot be written must not keep HAProxy down or on an old certificate: the resync covers it.
      await this.files.flush().catch((error: unknown) => {
        this.log.warn({ err: error }, 'could not bring the map files up to date before replacing HAProxy; its new worker serves older routes until they are re-applied');
      });
      await replace();
      await this.resync();
    } finally {
      this.replacing--;
    }
  }

  /**
   * Re-applies every route if the HAProxy worker answering is not the one whose maps this process read: a
   * reload or restart it was not told of (an operator's, a service manager's) loaded the map files, which may
   * lag the live maps, and left the changes sent since to the old worker. A failed apply or resync is retried.
   */
  async verify(): Promise<void> {
    if (this.desired === undefined || this.replacing > 0) return;
    const begun = this.replacementsBegun;
    const current = await this.currentWorker();
    // The router's own reload or restart began while HAProxy answered: its resync reads the new worker.
    if (this.replacing > 0 || this.replacementsBegun !== begun) return;
    const known = this.worker;
    if (current === known) return;
    if (known !== undefined) this.log.warn({ was: known, now: current }, 'HAProxy was reloaded or restarted without the router: re-applying every route');
    await this.resync();
  }

  /**
   * Re-reads HAProxy's live maps and re-applies the last table, e.g. after something else changed them. After
   * the router's own reload or restart, use replaceWorker.
   */
  resync(): Promise<void> {
    this.refresh = true;
    if (this.desired === undefined) return Promise.resolve();
    this.pending = 'all';
    return this.schedule();
  }

  private async currentWorker(): Promise<string> {
    const info = await this.runtime.showInfo();
    // The start time tells a reused pid apart.
    return `pid ${info.Pid} started ${info.Start_time_sec}`;
  }

  private takeWhole(table: RouteTable): void {
    validateRouteTable(table, this.tcpPorts);
    this.desired = { hosts: new Map(table.hosts), ports: new Map([...table.ports].map(([port, backend]) => [String(port), backend])) };
    this.pending = 'all';
  }

  private takeChanges(table: RouteTable, changes: RouteTableChanges): void {
    const hosts = new Map<string, string>();
    const ports = new Map<number, string>();
    for (const token of changes.hosts) copyEntry(table.hosts, token, hosts);
    for (const port of changes.ports) copyEntry(table.ports, port, ports);
    validateRouteTable({ hosts, ports }, this.tcpPorts);
    const desired = this.desired!;
    for (const token of changes.hosts) setOrDelete(desired.hosts, token, hosts.get(token));
    for (const port of changes.ports) setOrDelete(desired.ports, String(port), ports.get(port));
    if (this.pending === 'all') return;
    for (const token of changes.hosts) this.pending.hosts.add(token);
    for (const port of changes.ports) this.pending.ports.add(String(port));
  }

  private schedule(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    if (this.running || this.waiting.length === 0) return;
    const waiters = this.waiting.splice(0);
    this.running = true;
    // Free the slot before waking the callers, so an apply they make next starts at once instead of queueing.
    const settle = (notify: (waiter: Waiter) => void): void => {
      this.running = false;
      this.pump();
      waiters.forEach(notify);
    };
    this.applyNow().then(
      () => settle((w) => w.resolve()),
      (error: unknown) => settle((w) => w.reject(error)),
    );
  }

  private async applyNow(): Promise<void> {
    const started = performance.now();
    const desired = this.desired!;
    let pending = this.pending;
    this.pending = { hosts: new Set(), ports: new Set() };
    const refresh = this.refresh;
    this.refresh = false;
    if (refresh) this.live = undefined;
    try {
      if (!this.live) {
        // Before the maps: a reload in between then shows as a change of worker at the next verify.
        this.worker = await this.currentWorker();
        this.live = { hosts: await this.readLive(this.hostsMap), ports: await this.readLive(this.tcpMap) };
        pending = 'all';
        this.log.info({ hosts: this.live.hosts.entries.size, ports: this.live.ports.entries.size }, 'read live HAProxy maps');
      }
      const live = this.live;
      const hostDiff = diffMap(live.hosts, desired.hosts, pending === 'all' ? undefined : pending.hosts);
      const portDiff = diffMap(live.ports, desired.ports, pending === 'all' ? undefined : pending.ports);
      await this.applyDiff(this.hostsMap, hostDiff);
      record(live.hosts, hostDiff);
      await this.applyDiff(this.tcpMap, portDiff);
      record(live.ports, portDiff);
      const changes = {
        hosts: { added: hostDiff.adds.length, changed: hostDiff.sets.length, removed: hostDiff.dels.length, repaired: hostDiff.resets.length },
        ports: { added: portDiff.adds.length, changed: portDiff.sets.length, removed: portDiff.dels.length, repaired: portDiff.resets.length },
        ms: Math.round((performance.now() - started) * 10) / 10,
      };
      const changed = [changes.hosts, changes.ports].some((c) => c.added + c.changed + c.removed + c.repaired > 0);
      if (changed) this.log.info(changes, 'routes applied');
      else this.log.debug(changes, 'routes unchanged');
    } catch (error) {
      // Part of the diff may have landed: read the live maps again and compare every route next time.
      this.live = undefined;
      this.worker = undefined;
      this.pending = 'all';
      throw error;
    } finally {
      // Also when HAProxy did not take the table: restarted, it loads the table we are converging to. After the
      // runtime changes, so that rendering the files never delays them. A refresh (HAProxy restarted or
      // reloaded) rewrites the files even if unchanged since our last write.
      this.files.write(desired, refresh);
    }
  }

  private async readLive(file: string): Promise<LiveMap> {
    const entries = new Map<string, string>();
    const duplicates = new Set<string>();
    for (const entry of await this.runtime.showMap(file)) {
      if (entries.has(entry.key)) duplicates.add(entry.key);
      else entries.set(entry.key, entry.value);
    }
    return { entries, duplicates };
  }

  private async applyDiff(file: string, diff: MapDiff): Promise<void> {
    // Repairs first (a re-add must follow its delete), then new routes (sessions waiting for them), then the rest.
    // Deletions go several per request: one round trip, not one connection per route.
    await this.runtime.delMapEntries(file, diff.resets);
    for (const batch of payloadBatches(diff.adds)) await this.runtime.addMapEntries(file, batch);
    await this.forEachLimited(diff.sets, async ([key, value]) => {
      try {
        await this.runtime.setMap(file, key, value);
      } catch (error) {
        // Someone removed it behind our back: add it instead.
        if (!isNotFound(error)) throw error;
        await this.runtime.addMap(file, key, value);
      }
    });
    await this.runtime.delMapEntries(file, diff.dels);
  }

  private async forEachLimited<T>(items: readonly T[], work: (item: T) => Promise<void>): Promise<void> {
    let next = 0;
    const errors: unknown[] = [];
    const worker = async (): Promise<void> => {
      while (next < items.length && errors.length === 0) {
        const item = items[next++]!;
        try {
          await work(item);
        } catch (error) {
          errors.push(error);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, items.length) }, worker));
    if (errors.length > 0) throw errors[0];
  }
}

/** What turns `live` into `desired`: for every key, or (given `keys`) for those keys only. */
function diffMap(live: LiveMap, desired: ReadonlyMap<string, string>, keys?: Iterable<string>): MapDiff {
  const diff: MapDiff = { adds: [], sets: [], dels: [], resets: [] };
  if (keys === undefined) {
    for (const key of live.entries.keys()) if (!desired.has(key)) diff.dels.push(key);
  }
  for (const key of keys ?? desired.keys()) {
    const value = desired.get(key);
    if (value === undefined) {
      if (live.entries.has(key)) diff.dels.push(key);
    } else if (live.duplicates.has(key)) {
      diff.resets.push(key);
      diff.adds.push([key, value]);
    } else if (!live.entries.has(key)) diff.adds.push([key, value]);
    else if (live.entries.get(key) !== value) diff.sets.push([key, value]);
  }
  return diff;
}

/** Notes in `live` what an applied diff changed. */
function record(live: LiveMap, diff: MapDiff): void {
  for (const key of diff.resets) live.duplicates.delete(key);
  for (const [key, value] of diff.adds) live.entries.set(key, value);
  for (const [key, value] of diff.sets) live.entries.set(key, value);
  for (const key of diff.dels) {
    live.entries.delete(key);
    live.duplicates.delete(key);
  }
}

function copyEntry<K>(from: ReadonlyMap<K, string>, key: K, to: Map<K, string>): void {
  const value = from.get(key);
  if (value !== undefined) to.set(key, value);
}

function setOrDelete(map: Map<string, string>, key: string, value: string | undefined): void {
  if (value === undefined) map.delete(key);
  else map.set(key, value);
}

function* payloadBatches(entries: ReadonlyArray<[string, string]>): Generator<Array<[string, string]>> {
  let batch: Array<[string, string]> = [];
  let bytes = 0;
  for (const entry of entries) {
    const size = entry[0].length + entry[1].length + 2;
    if (batch.length > 0 && bytes + size > MAX_PAYLOAD_BYTES) {
      yield batch;
      batch = [];
      bytes = 0;
    }
    batch.push(entry);
    bytes += size;
  }
  if (batch.length > 0) yield batch;
}

function isNotFound(error: unknown): boolean {
  return error instanceof HaproxyRuntimeError && /not found/i.test(error.reply);
}
