import fs from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { tap, type Observable } from 'rxjs';
import { encodeRecord } from '../../controller/api/schemas.js';
import type { RouteRecord, SessionTemplate } from '../../controller/api/types.js';
import { newSessionId } from '../../controller/controller/claims.js';
import { newClaim, publicEndpoints, type PublicAddressing } from '../../controller/controller/endpoints.js';
import { Keys } from '../../controller/controller/keys.js';
import { RouterAgent } from '../../controller/router/agent.js';
import { HaproxyDataPlane } from '../../controller/router/data-plane.js';
import { HaproxyProcess, HaproxyProcessError } from '../../controller/router/haproxy-process.js';
import { HaproxyRuntime } from '../../controller/router/haproxy-runtime.js';
import { ConsulStore } from '../../controller/store/consul-store.js';
import { MAX_TXN_OPS, type KvEntry, type KvEntryMeta, type KvListing, type PrefixIndex, type Store, type TxnOperation, type WatchStep, type WriteOptions } from '../../controller/store/store.js';
import type { Logger } from '../../controller/util/log.js';
import { freePort, freePortRange } from '../../test/support/ports.js';
import { startConsulDouble, Teardown } from './routing-peers.js';

/**
 * Manticore's routing path as an edge host runs it: the router agent watching the store (Consul, here its
 * API double in a process of its own) and a real HAProxy changed through its Runtime API by the HAProxy
 * data plane. Routes are written to the store as the controller writes them (one routes record per
 * session, with a fresh secret hostname under the public domain), never to HAProxy or its files directly.
 *
 * Why Consul and not the embedded store: the embedded store commits synchronously (an SQLite fsync on the
 * event loop), so the benchmark's own writes, made in this process, would stall the router agent beside
 * them and the figures would measure the writer. On an edge host the router has its process to itself
 * and its writer, the controller, is elsewhere, as here.
 */

const TEMPLATE_FILE = path.resolve(__dirname, '../../../manifests/haproxy/haproxy.cfg');
const PORT_ATTEMPTS = 3;
const KEYS = new Keys('manticore/');

/** A session template with one HTTP service, enough for the controller's claim and endpoint code. */
const TEMPLATE: SessionTemplate = {
  apiVersion: 'manticore/v1',
  kind: 'SessionTemplate',
  metadata: { name: 'routing-bench' },
  spec: { parameters: [], services: [{ name: 'hmi', port: 'http', expose: 'http' }], backends: {} },
};

const ADDRESSING: PublicAddressing = { domain: 'sessions.manticore.test', httpScheme: 'http', httpPort: 80, tcpHost: 'sessions.manticore.test' };

/** One session's routes record and the public hostname it serves. */
export interface SessionRoute {
  readonly key: string;
  /** The session's public hostname, `<secret token>.<domain>`. */
  readonly host: string;
  readonly record: RouteRecord;
}

/**
 * The store as the router agent sees it, noting when each key's first put reaches the agent's watch.
 * The watch is the agent's only input, so the moment a step is handed to its informer is exactly when the
 * router sees a change: measured here without a hook in product code that only a benchmark would use.
 * `tap` runs in the same turn as, and just before, the informer's own handling of the step.
 */
class WatchTap implements Store {
  private readonly firstSeen = new Map<string, number>();
  private readonly waiters = new Map<string, Array<(seenAt: number) => void>>();

  constructor(private readonly inner: Store) {}

  /** performance.now() when the agent's watch delivered the key's first put; undefined if not within `timeoutMs`. */
  seen(key: string, timeoutMs: number): Promise<number | undefined> {
    const seenAt = this.firstSeen.get(key);
    if (seenAt !== undefined) return Promise.resolve(seenAt);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(undefined), timeoutMs);
      const waiting = this.waiters.get(key) ?? [];
      waiting.push((at) => {
        clearTimeout(timer);
        resolve(at);
      });
      this.waiters.set(key, waiting);
    });
  }

  get(key: string): Promise<KvEntry | undefined> {
    return this.inner.get(key);
  }

  list(prefix: string): Promise<KvListing> {
    return this.inner.list(prefix);
  }

  prefixIndex(prefix: string): Promise<PrefixIndex> {
    return this.inner.prefixIndex(prefix);
  }

  put(key: string, value: string, options?: WriteOptions): Promise<boolean> {
    return this.inner.put(key, value, options);
  }

  delete(key: string, options?: WriteOptions): Promise<boolean> {
    return this.inner.delete(key, options);
  }

  transaction(operations: readonly TxnOperation[]): Promise<boolean> {
    return this.inner.transaction(operations);
  }

  commit(operations: readonly TxnOperation[]): Promise<readonly KvEntryMeta[] | undefined> {
    return this.inner.commit(operations);
  }

  watch(prefix: string, fromIndex?: number): Observable<WatchStep> {
    return this.inner.watch(prefix, fromIndex).pipe(tap((step) => this.note(step)));
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private note(step: WatchStep): void {
    const now = performance.now();
    const entries = step.kind === 'reset' ? step.entries : step.changes.flatMap((change) => (change.type === 'put' ? [change.entry] : []));
    for (const { key } of entries) {
      if (this.firstSeen.has(key)) continue;
      this.firstSeen.set(key, now);
      for (const wake of this.waiters.get(key) ?? []) wake(now);
      this.waiters.delete(key);
    }
  }
}

export class RouterStack {
  private constructor(
    /** The controller's side: writes routes records. */
    private readonly writer: ConsulStore,
    private readonly tap: WatchTap,
    private readonly agent: RouterAgent,
    /** HAProxy's HTTP listener on 127.0.0.1. */
    readonly httpPort: number,
    private readonly teardown: Teardown,
  ) {}

  /** Starts store, HAProxy and agent under `workDir`; on failure stops whatever had started. */
  static async start(workDir: string, log: Logger): Promise<RouterStack> {
    const teardown = new Teardown(log);
    try {
      const consul = await startConsulDouble();
      teardown.add('Consul double', () => consul.child.stop());
      const writer = new ConsulStore({ address: consul.address, log });
      teardown.add('writer store client', () => writer.close());
      const routerStore = new ConsulStore({ address: consul.address, log });
      teardown.add('router store client', () => routerStore.close());
      const { haproxy, httpPort } = await startHaproxy(path.join(workDir, 'haproxy'), log);
      teardown.add('haproxy', () => haproxy.stop());
      const dataPlane = new HaproxyDataPlane({ runtime: new HaproxyRuntime(haproxy.adminSocket), runDir: haproxy.runDir, log: log.child({ component: 'data-plane' }) });
      const tap = new WatchTap(routerStore);
      const agent = new RouterAgent({ store: tap, keys: KEYS, name: 'bench-edge', dataPlane, heartbeatMs: 5_000, storeLossGraceMs: 0, log });
      await agent.start();
      teardown.add('router agent', () => agent.stop());
      return new RouterStack(writer, tap, agent, httpPort, teardown);
    } catch (error) {
      await teardown.run();
      throw error;
    }
  }

  /** A new session's routes record as the controller makes it: a fresh secret hostname, served by `backend`. */
  newRoute(backend: string): SessionRoute {
    const sessionId = newSessionId();
    const claim = newClaim(sessionId, TEMPLATE, () => undefined);
    if (claim === undefined) throw new Error('the benchmark template claims no TCP port, yet the claim failed');
    const record: RouteRecord = { ...claim, hosts: claim.hosts.map((route) => ({ ...route, backend })) };
    const host = publicEndpoints(TEMPLATE, claim, ADDRESSING).hmi?.host;
    if (host === undefined) throw new Error('the benchmark template has no hmi endpoint');
    return { key: KEYS.route(sessionId), host, record };
  }

  put(route: SessionRoute): Promise<boolean> {
    return this.writer.put(route.key, encodeRecord('route', route.record));
  }

  delete(route: SessionRoute): Promise<boolean> {
    return this.writer.delete(route.key);
  }

  /** Writes many routes in transactions (set-up, not measured) and waits until the agent has applied them all. */
  async putAll(routes: readonly SessionRoute[], timeoutMs = 60_000): Promise<void> {
    for (let at = 0; at < routes.length; at += MAX_TXN_OPS) {
      const operations = routes.slice(at, at + MAX_TXN_OPS).map((route): TxnOperation => ({ verb: 'put', key: route.key, value: encodeRecord('route', route.record) }));
      if (!(await this.writer.transaction(operations))) throw new Error(`writing routes ${at}-${at + operations.length - 1} failed`);
    }
    const { index } = await this.writer.list(KEYS.routes);
    const deadline = Date.now() + timeoutMs;
    while (this.agent.progress.appliedIndex < index) {
      if (Date.now() > deadline) throw new Error(`the router agent applied index ${this.agent.progress.appliedIndex}, not ${index}, within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** performance.now() when the router agent saw the route's record; undefined if it did not within `timeoutMs`. */
  seen(route: SessionRoute, timeoutMs: number): Promise<number | undefined> {
    return this.tap.seen(route.key, timeoutMs);
  }

  stop(): Promise<void> {
    return this.teardown.run();
  }
}

/** HAProxy on OS-chosen loopback ports; a port taken between choosing and binding it is chosen again. */
async function startHaproxy(runDir: string, log: Logger): Promise<{ haproxy: HaproxyProcess; httpPort: number }> {
  const template = await fs.readFile(TEMPLATE_FILE, 'utf8');
  for (let attempt = 1; ; attempt++) {
    const httpPort = await freePort();
    // The template needs a TCP range; HTTP routes use none of it.
    const tcp = await freePortRange(1);
    const haproxy = new HaproxyProcess({
      runDir,
      template,
      values: { httpBind: `127.0.0.1:${httpPort}`, tcpBind: `127.0.0.1:${tcp.start}-${tcp.end}` },
      log: log.child({ component: 'haproxy' }),
      gracefulStopMs: 1_000,
    });
    try {
      await haproxy.start();
      return { haproxy, httpPort };
    } catch (error) {
      if (attempt >= PORT_ATTEMPTS || !(error instanceof HaproxyProcessError) || !/Address already in use/.test(error.output)) throw error;
    }
  }
}
