import { performance } from 'node:perf_hooks';
import type { Logger } from '../util/log.js';
import { runPaths, validateRouteTable, type PortRange } from './haproxy-config.js';
import { HaproxyRuntimeError, type HaproxyRuntime } from './haproxy-runtime.js';
import { MapFileWriter } from './map-files.js';

/** The routes a data plane serves. */
export interface RouteTable {
  /** Session token (first label of the hostname) → workload `ip:port`. */
  readonly hosts: ReadonlyMap<string, string>;
  /** Public TCP port → workload `ip:port`. */
  readonly ports: ReadonlyMap<number, string>;
}

/** What the router agent drives: make the served routes equal a table. */
export interface DataPlane {
  apply(table: RouteTable): Promise<void>;
}

export interface HaproxyDataPlaneOptions {
  readonly runtime: HaproxyRuntime;
  /** HAProxy's run directory; the map files live here under the names the config template uses. */
  readonly runDir: string;
  readonly log: Logger;
  /** If given, public ports outside this range are rejected. */
  readonly tcpPorts?: PortRange;
  /** `set map` commands in flight at once while applying a large diff (default 8); adds and deletes go in batches. */
  readonly concurrency?: number;
}

interface LiveMap {
  /** Key → value as HAProxy holds it (first entry of a duplicated key). */
  readonly entries: ReadonlyMap<string, string>;
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

interface Queued {
  table: RouteTable;
  /** Forget the cached view of HAProxy's maps and read them again first. */
  refresh: boolean;
  readonly waiters: Array<{ resolve: () => void; reject: (error: unknown) => void }>;
}

/** Payload bytes per `add map` command, well under the runtime client's MAX_REQUEST_BYTES (HAProxy's 16 KB buffer). */
const MAX_PAYLOAD_BYTES = 8_000;

/**
 * Applies route tables to a running HAProxy through its Runtime API, with no reload: the live maps are
 * diffed against the table (read with `show map` on first use, so a restarted agent syncs with an
 * HAProxy that kept running) and changed entry by entry, so routes that do not change are never touched.
 * An apply resolves once the routes are live. Both map files then follow in the background (MapFileWriter),
 * so a restart or reload loads the same routes without their durable write delaying the next change.
 * One apply runs at a time; a table passed while one runs replaces any table still waiting.
 */
export class HaproxyDataPlane implements DataPlane {
  private readonly runtime: HaproxyRuntime;
  private readonly log: Logger;
  private readonly hostsMap: string;
  private readonly tcpMap: string;
  private readonly tcpPorts: PortRange | undefined;
  private readonly concurrency: number;
  private readonly files: MapFileWriter;
  private live: { hosts: LiveMap; ports: LiveMap } | undefined;
  private lastTable: RouteTable | undefined;
  /** The last table that passed validation: its routes need no second check. */
  private checked: RouteTable | undefined;
  private running = false;
  private queued: Queued | undefined;

  constructor(options: HaproxyDataPlaneOptions) {
    this.runtime = options.runtime;
    this.log = options.log;
    const paths = runPaths(options.runDir);
    this.hostsMap = paths.hostsMap;
    this.tcpMap = paths.tcpMap;
    this.tcpPorts = options.tcpPorts;
    this.concurrency = Math.max(1, options.concurrency ?? 8);
    this.files = new MapFileWriter({ hosts: paths.hostsMap, ports: paths.tcpMap }, options.log);
  }

  /** Makes HAProxy's live maps equal `table` (the map files follow). Rejects invalid tables before touching anything. */
  apply(table: RouteTable): Promise<void> {
    try {
      validateRouteTable(table, this.tcpPorts, this.checked);
    } catch (error) {
      return Promise.reject(error);
    }
    // A copy: the caller may keep mutating its maps while this waits in the queue.
    this.checked = { hosts: new Map(table.hosts), ports: new Map(table.ports) };
    return this.enqueue(this.checked, false);
  }

  /** Resolves once the map files hold the last table applied; rejects if writing them failed (it is retried). */
  flush(): Promise<void> {
    return this.files.flush();
  }

  /**
   * Re-reads HAProxy's live maps and re-applies the last table. Call after HAProxy reloaded or restarted:
   * the new worker loaded the map files, and a change sent during the switch may have reached the old one.
   */
  resync(): Promise<void> {
    if (!this.lastTable && !this.queued) {
      this.live = undefined;
      return Promise.resolve();
    }
    return this.enqueue(this.queued?.table ?? this.lastTable!, true);
  }

  private enqueue(table: RouteTable, refresh: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.queued) {
        this.queued.table = table;
        this.queued.refresh ||= refresh;
      } else {
        this.queued = { table, refresh, waiters: [] };
      }
      this.queued.waiters.push({ resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    if (this.running || !this.queued) return;
    const job = this.queued;
    this.queued = undefined;
    this.running = true;
    // Free the slot before waking the callers, so an apply they make next starts at once instead of queueing.
    const settle = (notify: (waiter: Queued['waiters'][number]) => void): void => {
      this.running = false;
      this.pump();
      job.waiters.forEach(notify);
    };
    this.applyNow(job.table, job.refresh).then(
      () => settle((w) => w.resolve()),
      (error: unknown) => settle((w) => w.reject(error)),
    );
  }

  private async applyNow(table: RouteTable, refresh: boolean): Promise<void> {
    const started = performance.now();
    // Never mutated: the queued tables are this class's own copies.
    const hosts = table.hosts;
    const ports = new Map([...table.ports].map(([port, backend]) => [String(port), backend] as [string, string]));
    if (refresh) this.live = undefined;
    try {
      if (!this.live) {
        this.live = { hosts: await this.readLive(this.hostsMap), ports: await this.readLive(this.tcpMap) };
        this.log.info({ hosts: this.live.hosts.entries.size, ports: this.live.ports.entries.size }, 'read live HAProxy maps');
      }
      const hostDiff = diffMap(this.live.hosts, hosts);
      const portDiff = diffMap(this.live.ports, ports);
      await this.applyDiff(this.hostsMap, hostDiff);
      await this.applyDiff(this.tcpMap, portDiff);
      this.live = { hosts: { entries: hosts, duplicates: new Set() }, ports: { entries: ports, duplicates: new Set() } };
      this.lastTable = table;
      const changes = {
        hosts: { added: hostDiff.adds.length, changed: hostDiff.sets.length, removed: hostDiff.dels.length, repaired: hostDiff.resets.length },
        ports: { added: portDiff.adds.length, changed: portDiff.sets.length, removed: portDiff.dels.length, repaired: portDiff.resets.length },
        ms: Math.round((performance.now() - started) * 10) / 10,
      };
      const changed = [changes.hosts, changes.ports].some((c) => c.added + c.changed + c.removed + c.repaired > 0);
      if (changed) this.log.info(changes, 'routes applied');
      else this.log.debug(changes, 'routes unchanged');
    } catch (error) {
      // Part of the diff may have landed: read the live maps again next time instead of guessing.
      this.live = undefined;
      throw error;
    } finally {
      // Also when HAProxy did not take the table: restarted, it loads the table we are converging to. After the
      // runtime changes, so that rendering the files never delays them. A refresh (HAProxy restarted or
      // reloaded) rewrites the files even if unchanged since our last write.
      this.files.write({ hosts, ports }, refresh);
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

function diffMap(live: LiveMap, desired: ReadonlyMap<string, string>): MapDiff {
  const diff: MapDiff = { adds: [], sets: [], dels: [], resets: [] };
  for (const key of live.entries.keys()) if (!desired.has(key)) diff.dels.push(key);
  for (const [key, value] of desired) {
    if (live.duplicates.has(key)) {
      diff.resets.push(key);
      diff.adds.push([key, value]);
    } else if (!live.entries.has(key)) diff.adds.push([key, value]);
    else if (live.entries.get(key) !== value) diff.sets.push([key, value]);
  }
  return diff;
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
