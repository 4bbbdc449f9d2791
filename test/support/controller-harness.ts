import assert from 'node:assert/strict';
import path from 'node:path';
import * as FakeTimers from '@sinonjs/fake-timers';
import { pino } from 'pino';
import { BehaviorSubject, concatMap, filter, map, take } from 'rxjs';
import { loadTemplates } from '../../controller/api/templates.js';
import type { RouteRecord, SessionRecord, SessionStatus, SessionTemplate } from '../../controller/api/types.js';
import { Controller } from '../../controller/controller/controller.js';
import { Keys } from '../../controller/controller/keys.js';
import type { PublicAddressing } from '../../controller/controller/endpoints.js';
import type { Leadership } from '../../controller/controller/leader.js';
import type { LifecyclePolicy } from '../../controller/controller/lifecycle.js';
import type { Exposer } from '../../controller/loadbalancer/exposer.js';
import { RouterAgent } from '../../controller/router/agent.js';
import type { DataPlane, RouteTable, RouteTableChanges } from '../../controller/router/data-plane.js';
import type { Scheduler } from '../../controller/scheduler/scheduler.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import type { Store, TxnOperation } from '../../controller/store/store.js';
import type { Clock } from '../../controller/util/clock.js';
import { createLogger, silentLogger, type Logger } from '../../controller/util/log.js';
import { FakeScheduler } from './fake-scheduler.js';
import { waitFor } from './wait.js';

/**
 * A controller over a store, a scheduler and a router agent in this process, with the lifecycle clock
 * in the test's hands: deadlines (idle warning, expiry, start timeout, restart backoff) move only when
 * the test ticks the fake clock, while the store and the scheduler run on real time.
 */
const repoRoot = path.resolve(__dirname, '../../..');
export const templates = loadTemplates(path.join(repoRoot, 'manifests/templates'));
export const keys = new Keys('manticore/');
export const testLog: Logger = process.env.TEST_LOG ? createLogger('debug') : silentLogger();

export const defaultPolicy: LifecyclePolicy = {
  startTimeoutMs: 600_000,
  maxLifetimeMs: 0,
  maxRestarts: 3,
  restartWindowMs: 600_000,
  restartBackoffMs: 5_000,
  failedRetentionMs: 3_600_000,
  idleTimeoutMs: 1_800_000,
  idleMaxTimeoutMs: 1_800_000,
  idleWarningMs: 300_000,
};

/** A logger whose every line is kept, parsed, for tests that look at what was said. */
export function capturingLogger(): { log: Logger; lines: Array<{ level: number; msg: string; [field: string]: unknown }> } {
  const lines: Array<{ level: number; msg: string }> = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) });
  return { log, lines };
}

/**
 * A data plane that only holds the routes it was given, standing in for HAProxy. Like HAProxy's, it takes
 * from a table passed with its changes only the routes named there, so a caller that changes a route
 * without saying so is caught serving the old one.
 */
export class RecordingDataPlane implements DataPlane {
  private readonly hosts = new Map<string, string>();
  private readonly ports = new Map<number, string>();
  private applied = false;
  readonly table: RouteTable = { hosts: this.hosts, ports: this.ports };

  async apply(table: RouteTable, changes?: RouteTableChanges): Promise<void> {
    if (changes === undefined || !this.applied) {
      copyInto(table.hosts, this.hosts, table.hosts.keys());
      copyInto(table.ports, this.ports, table.ports.keys());
      for (const token of this.hosts.keys()) if (!table.hosts.has(token)) this.hosts.delete(token);
      for (const port of this.ports.keys()) if (!table.ports.has(port)) this.ports.delete(port);
    } else {
      copyInto(table.hosts, this.hosts, changes.hosts);
      copyInto(table.ports, this.ports, changes.ports);
    }
    this.applied = true;
  }

  /** What it was given, it keeps: nothing to check. */
  async verify(): Promise<void> {}
}

function copyInto<K>(from: ReadonlyMap<K, string>, to: Map<K, string>, keys: Iterable<K>): void {
  for (const key of keys) {
    const value = from.get(key);
    if (value === undefined) to.delete(key);
    else to.set(key, value);
  }
}

/**
 * A store whose watch of `prefix` holds its steps back while the gate is shut (`hold()`), then lets them
 * through in order (`release()`): one cache lagging the others, as separate watches may.
 */
export function laggingWatch(inner: Store, prefix: string): { store: Store; hold(): void; release(): void } {
  const open = new BehaviorSubject(true);
  const store: Store = {
    ...delegatingStore(inner),
    watch: (watched, index) =>
      inner.watch(watched, index).pipe(concatMap((step) => (watched === prefix ? open.pipe(filter(Boolean), take(1), map(() => step)) : [step]))),
  };
  return { store, hold: () => open.next(false), release: () => open.next(true) };
}

/** A leadership the test hands to a standby controller when it chooses (`lead()`), and takes back (`lose()`). */
export function standbyLeadership(): { leadership: Leadership; lead(): void; lose(): void } {
  const leading = new BehaviorSubject(false);
  const leadership: Leadership = {
    leading$: leading.asObservable(),
    get leading() {
      return leading.value;
    },
    identity: { host: 'standby', pid: 2 },
    start: () => undefined,
    stop: async () => leading.next(false),
    fence: () => undefined,
    leader: () => undefined,
  };
  return { leadership, lead: () => leading.next(true), lose: () => leading.next(false) };
}

/** A Store whose every method calls `inner` (as itself), for tests to replace or spy on some of them. */
export function delegatingStore(inner: Store): Store {
  return {
    get: (key) => inner.get(key),
    list: (prefix) => inner.list(prefix),
    prefixIndex: (prefix) => inner.prefixIndex(prefix),
    put: (key, value, options) => inner.put(key, value, options),
    delete: (key, options) => inner.delete(key, options),
    transaction: (operations) => inner.transaction(operations),
    commit: (operations) => inner.commit(operations),
    watch: (prefix, fromIndex) => inner.watch(prefix, fromIndex),
    close: () => inner.close(),
  };
}

/** A store that counts writes, to prove a restart writes nothing. */
export function countingStore(inner: Store): Store & { writes: string[] } {
  const writes: string[] = [];
  return {
    ...delegatingStore(inner),
    writes,
    put: (key: string, value: string, options?: { cas?: number }) => {
      writes.push(`put ${key}`);
      return inner.put(key, value, options);
    },
    delete: (key: string, options?: { cas?: number }) => {
      writes.push(`delete ${key}`);
      return inner.delete(key, options);
    },
    transaction: (operations: readonly TxnOperation[]) => {
      writes.push(...operations.map((operation) => `${operation.verb} ${operation.key}`));
      return inner.transaction(operations);
    },
    commit: (operations: readonly TxnOperation[]) => {
      writes.push(...operations.map((operation) => `${operation.verb} ${operation.key}`));
      return inner.commit(operations);
    },
  };
}

export interface HarnessOptions {
  readonly ports?: { start: number; end: number };
  readonly limits?: Partial<{ maxSessions: number; maxStarting: number; sessionsPerUser: number }>;
  readonly policy?: Partial<LifecyclePolicy>;
  readonly capacityRetryMs?: number;
  readonly workers?: number;
  readonly templates?: ReadonlyMap<string, SessionTemplate>;
  /** The production default (15 min) unless a test needs running orphans removed at once. */
  readonly orphanGracePeriodMs?: number;
  /** How users reach sessions (default: plain HTTP on localhost:8080). */
  readonly addressing?: PublicAddressing;
  /** For tests that look at what the controller logs. */
  readonly log?: Logger;
  /** AWS load balancers (over the AWS model) in front of the TCP ports. */
  readonly loadBalancers?: Exposer;
  /** For tests that write routers' heartbeats on the fake clock; by default no router is ever stale. */
  readonly routerStaleMs?: number;
}

/** The fake clock as the controller's Clock. */
export function controllerClock(clock: FakeTimers.Clock): Clock {
  return {
    now: () => clock.now,
    setTimeout: (callback, delayMs) => clock.setTimeout(callback, delayMs),
    clearTimeout: (timer) => clock.clearTimeout(timer as FakeTimers.TimerId),
  };
}

export class ControllerHarness<S extends Scheduler = FakeScheduler> {
  /** Starts at the real time, so stored times look ordinary; moves only on tick(). */
  readonly clock: FakeTimers.Clock = FakeTimers.createClock(Date.now());
  controller!: Controller;
  router!: RouterAgent;
  readonly dataPlane = new RecordingDataPlane();
  /** The templates the next controller started loads (an operator edits them between restarts). */
  templates: ReadonlyMap<string, SessionTemplate>;
  /** The public TCP port range of the next controller started (likewise). */
  ports: { start: number; end: number };

  constructor(
    readonly store: Store,
    readonly scheduler: S,
    private readonly options: HarnessOptions = {},
  ) {
    this.templates = options.templates ?? templates;
    this.ports = options.ports ?? { start: 20000, end: 20009 };
  }

  static async embedded(options: HarnessOptions = {}): Promise<ControllerHarness> {
    const harness = new ControllerHarness(EmbeddedStore.open(':memory:'), new FakeScheduler(), options);
    await harness.start();
    return harness;
  }

  async start(): Promise<void> {
    this.router = new RouterAgent({ store: this.store, keys, name: 'edge-1', dataPlane: this.dataPlane, heartbeatMs: 60_000, storeLossGraceMs: 0, log: testLog });
    await this.router.start();
    this.controller = await this.startController();
  }

  /** A controller over `store`; a standby of its own passes its leadership and its own exposer (each replica has one). */
  async startController(store: Store = this.store, leadership?: Leadership, loadBalancers: Exposer | undefined = this.options.loadBalancers): Promise<Controller> {
    const { limits = {}, policy = {} } = this.options;
    const controller = new Controller({
      store,
      scheduler: this.scheduler,
      keys,
      templates: this.templates,
      addressing: this.options.addressing ?? { domain: 'localhost', httpScheme: 'http', httpPort: 8080, tcpHost: 'localhost' },
      tcpPortRange: this.ports,
      limits: { maxSessions: 100, maxStarting: 100, sessionsPerUser: 100, ...limits },
      policy: { ...defaultPolicy, ...policy },
      capacityRetryMs: this.options.capacityRetryMs ?? 300_000,
      workers: this.options.workers ?? 4,
      retryBaseMs: 5,
      retryMaxMs: 200,
      rateLimitPerSecond: 1000,
      rateLimitBurst: 1000,
      // The router heartbeats on real time while the lifecycle clock jumps ahead: never call it stale here.
      routerStaleMs: this.options.routerStaleMs ?? 20 * 24 * 3_600_000,
      orphanSweepMs: 600_000,
      orphanGracePeriodMs: this.options.orphanGracePeriodMs ?? 900_000,
      log: this.options.log ?? testLog,
      clock: controllerClock(this.clock),
      leadership,
      ...(loadBalancers ? { loadBalancers } : {}),
    });
    await controller.start();
    return controller;
  }

  /** Stops the controller and starts a new one on the same store and scheduler (a restart or failover). */
  async restartController(store: Store = this.store): Promise<void> {
    await this.controller.stop();
    this.controller = await this.startController(store);
  }

  /** Moves the lifecycle clock; the deadlines that fall due fire. */
  tick(ms: number): void {
    this.clock.tick(ms);
  }

  async stop(): Promise<void> {
    await this.controller.stop();
    await this.router.stop();
    await this.scheduler.close();
    await this.store.close();
  }
}

let sessionCounter = 0;

export interface NewSession {
  readonly owner?: string;
  /** Creation time; the waiting list is ordered by it. */
  readonly createdAt?: number;
  readonly spec?: Partial<SessionRecord['spec']>;
}

export async function createSession(store: Store, options: NewSession = {}): Promise<string> {
  const id = `session${String(++sessionCounter).padStart(4, '0')}`;
  const record: SessionRecord = {
    metadata: { id, owner: options.owner ?? 'alice', createdAt: new Date(options.createdAt ?? Date.now()).toISOString(), generation: 1 },
    spec: { template: 'demo', parameters: { coreVersion: '8.2.0', hmiType: 'generic' }, ...options.spec },
  };
  assert.equal(await store.put(keys.session(id), JSON.stringify(record), { cas: 0 }), true);
  return id;
}

export async function statusOf(store: Store, id: string): Promise<SessionStatus | undefined> {
  const entry = await store.get(keys.status(id));
  return entry ? (JSON.parse(entry.value) as SessionStatus) : undefined;
}

export async function routesOf(store: Store, id: string): Promise<RouteRecord | undefined> {
  const entry = await store.get(keys.route(id));
  return entry ? (JSON.parse(entry.value) as RouteRecord) : undefined;
}

export function condition(status: SessionStatus | undefined, type: string): string | undefined {
  const found = status?.conditions.find((c) => c.type === type);
  return found ? `${found.status}/${found.reason}` : undefined;
}

export async function requestDeletion(store: Store, id: string): Promise<void> {
  // The controller may write the record meanwhile (it requests deletion itself at expiry): read it again then.
  for (let attempt = 0; attempt < 5; attempt++) {
    const entry = await store.get(keys.session(id));
    if (entry === undefined) return;
    const record = JSON.parse(entry.value) as SessionRecord;
    if (record.metadata.deletionRequestedAt !== undefined) return;
    record.metadata.deletionRequestedAt = new Date().toISOString();
    if (await store.put(keys.session(id), JSON.stringify(record), { cas: entry.modifyIndex })) return;
  }
  assert.fail(`could not request the deletion of ${id}: its record kept changing`);
}

/** Waits until the session's stored status satisfies `test` (a phase name or a predicate) and returns it. */
export async function statusWhen(store: Store, id: string, test: string | ((status: SessionStatus) => boolean), timeoutMs?: number): Promise<SessionStatus> {
  const holds = typeof test === 'string' ? (status: SessionStatus) => status.phase === test : test;
  let last: SessionStatus | undefined;
  return waitFor(
    `status of ${id} ${typeof test === 'string' ? test : 'to match'}`,
    async () => {
      last = await statusOf(store, id);
      return last !== undefined && holds(last) ? last : undefined;
    },
    timeoutMs,
  ).catch((error: Error) => {
    throw new Error(`${error.message}; last status: ${JSON.stringify(last)}`);
  });
}

/** Brings a session to Ready on the fake scheduler: it runs and passes health checks on made-up addresses. */
export async function makeReady(h: ControllerHarness, id: string, base = 31000): Promise<SessionStatus> {
  await waitFor('job registration', () => h.scheduler.workload(id));
  h.scheduler.run(id, { http: `127.0.0.1:${base}`, broker: `127.0.0.1:${base + 1}`, tcp: `127.0.0.1:${base + 2}` });
  return statusWhen(h.store, id, 'Ready');
}
