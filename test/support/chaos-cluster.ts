import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { RouteRecord, RouterHeartbeat, SessionRecord, SessionStatus } from '../../controller/api/types.js';
import { RouterAgent } from '../../controller/router/agent.js';
import { runPaths } from '../../controller/router/haproxy-config.js';
import { ConsulStore } from '../../controller/store/consul-store.js';
import type { KvEntry } from '../../controller/store/store.js';
import { ConsulDouble } from '../fakes/consul.js';
import { NomadDouble } from '../fakes/nomad.js';
import { keys, RecordingDataPlane, testLog } from './controller-harness.js';
import { freePort, freePortRange } from './ports.js';
import { alive, childPids } from './processes.js';
import { TrafficLoop, type TrafficCounts } from './traffic.js';
import { waitFor } from './wait.js';

const repoRoot = path.resolve(__dirname, '../../..');
const cli = path.join(repoRoot, 'dist/controller/cli/main.js');

/** CHAOS_SESSIONS scales the load: `make chaos` runs 200 creates (or more), `make test` a short version. */
export const chaosSessions = Number(process.env.CHAOS_SESSIONS ?? 50);
/** CHAOS_OUTAGE_SECONDS: how long Consul stays unreachable in the outage scenario (`make chaos`: 30). */
export const chaosOutageSeconds = Number(process.env.CHAOS_OUTAGE_SECONDS ?? 5);

export interface LeaderValue {
  host: string;
  pid: number;
  since: string;
}

export interface ChaosClusterOptions {
  readonly replicas?: number;
  readonly ttlSeconds?: number;
  readonly lockDelaySeconds?: number;
  /** Extra YAML lines appended to the controllers' configuration (e.g. `lifecycle: {...}`). */
  readonly extraConfig?: readonly string[];
  /** Extra `controller:` settings, merged into the controller section (YAML flow-map entries). */
  readonly controllerSettings?: readonly string[];
  /** Extra `scheduler.nomad:` settings (YAML flow-map entries, e.g. `requestTimeoutSeconds: 1`). */
  readonly nomadSettings?: readonly string[];
  /** Starts an in-process router agent with a recording data plane (default: when `routers` is 0). */
  readonly recordingRouter?: boolean;
  /**
   * `manticore router` processes to run, each with its own HAProxy on its own loopback address
   * (127.0.0.1, 127.0.0.2, …) and the same TCP port range, as edge hosts have (default 0).
   */
  readonly routers?: number;
  /** Ports in the routers' TCP range, that is sessions with a TCP port at once (default 5000 without routers). */
  readonly tcpPorts?: number;
  /** Extra `router:` settings, merged into the router section (YAML flow-map entries). */
  readonly routerSettings?: readonly string[];
}

/** A `manticore router` process and what it serves on. */
export interface RouterProcess {
  readonly name: string;
  /** The loopback address its HAProxy binds (HTTP port and the TCP range). */
  readonly host: string;
  readonly httpPort: number;
  readonly runDir: string;
  child: ChildProcess;
}

/**
 * Controller replicas as separate `manticore controller` processes against the Consul and Nomad doubles,
 * with helpers to create and delete sessions straight in the store and to check the invariants every
 * chaos scenario ends with: every session Ready exactly once, one job and one set of routes per session,
 * no token or port given twice, and nothing left after deletion.
 */
export class ChaosCluster {
  readonly ttlSeconds: number;
  readonly lockDelaySeconds: number;
  readonly replicas = new Map<number, ChildProcess>();
  readonly routers = new Map<string, RouterProcess>();
  /** Everything the controller and router processes wrote (their structured logs), for checks on loud messages. */
  logs = '';
  tcpRange = { start: 20000, end: 24999 };
  consul!: ConsulDouble;
  nomad!: NomadDouble;
  store!: ConsulStore;
  router: RouterAgent | undefined;
  dir!: string;
  config!: string;

  constructor(private readonly options: ChaosClusterOptions = {}) {
    this.ttlSeconds = options.ttlSeconds ?? 10;
    this.lockDelaySeconds = options.lockDelaySeconds ?? 1;
  }

  async start(): Promise<void> {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-chaos-'));
    this.consul = await ConsulDouble.start({ log: testLog });
    this.nomad = await NomadDouble.start({ workDir: repoRoot, log: testLog, nodes: [{ name: 'big', cpu: 1_000_000, memoryMB: 1_000_000, diskMB: 10_000_000 }] });
    this.store = new ConsulStore({ address: this.consul.address, log: testLog });
    this.config = path.join(this.dir, 'manticore.yaml');
    const nomad = [`address: "${this.nomad.address}"`, 'datacenters: [dc1]', 'healthyDeadlineSeconds: 60', 'checkIntervalSeconds: 1', ...(this.options.nomadSettings ?? [])];
    const routerHosts = Array.from({ length: this.options.routers ?? 0 }, (_, n) => `127.0.0.${n + 1}`);
    if (routerHosts.length > 0) this.tcpRange = await freePortRange(this.options.tcpPorts ?? 1000, routerHosts);
    const router = [`tcp: { portRangeStart: ${this.tcpRange.start}, portRangeEnd: ${this.tcpRange.end} }`, ...(this.options.routerSettings ?? [])];
    const controller = [
      'workers: 32',
      'rateLimitPerSecond: 10000',
      'rateLimitBurst: 10000',
      `leaderElection: { ttlSeconds: ${this.ttlSeconds}, lockDelaySeconds: ${this.lockDelaySeconds} }`,
      ...(this.options.controllerSettings ?? []),
    ];
    fs.writeFileSync(
      this.config,
      [
        'store: { backend: consul, consul: { address: "' + this.consul.address + '" } }',
        'scheduler:',
        '  backend: nomad',
        `  nomad: { ${nomad.join(', ')} }`,
        'templates: { dir: test/fixtures/templates }',
        `router: { ${router.join(', ')} }`,
        'limits: { maxSessions: 5000, maxStarting: 5000, sessionsPerUser: 1 }',
        `controller: { ${controller.join(', ')} }`,
        ...(this.options.extraConfig ?? []),
        '',
      ].join('\n'),
    );
    if (this.options.recordingRouter ?? routerHosts.length === 0) {
      this.router = new RouterAgent({ store: this.store, keys, name: 'edge-1', dataPlane: new RecordingDataPlane(), heartbeatMs: 1_000, storeLossGraceMs: 900_000, log: testLog });
      await this.router.start();
    }
    for (const [n, host] of routerHosts.entries()) {
      const name = `edge-${n + 1}`;
      const router = { name, host, httpPort: await freePort(host), runDir: path.join(this.dir, name) };
      this.routers.set(name, { ...router, child: this.spawn('router', this.routerEnvironment(router)) });
    }
    await Promise.all([...this.routers.keys()].map((name) => this.routerServing(name, 0)));
    for (let n = 0; n < (this.options.replicas ?? 3); n++) this.startReplica();
    await waitFor('a leader', () => this.leader(), 30_000);
  }

  async stop(): Promise<void> {
    for (const child of this.replicas.values()) child.kill('SIGKILL');
    // SIGTERM: each router stops its HAProxy on the way out (SIGKILL if it takes too long).
    await Promise.all(
      [...this.routers.values()].map(async ({ child }) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
        await exited;
        clearTimeout(timer);
      }),
    );
    await this.router?.stop();
    await this.store?.close();
    await this.nomad?.stop();
    await this.consul?.stop();
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  startReplica(): ChildProcess {
    const child = this.spawn('controller');
    child.once('exit', () => this.replicas.delete(child.pid!));
    this.replicas.set(child.pid!, child);
    return child;
  }

  /** Runs `manticore <role>` with warnings and errors logged (kept in `logs`); an unexpected exit is reported. */
  private spawn(role: 'controller' | 'router', env: NodeJS.ProcessEnv = {}): ChildProcess {
    const child = spawn(process.execPath, [cli, role, '--config', this.config], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, MANTICORE_LOG_LEVEL: 'warn', ...env },
    });
    let output = '';
    const keep = (chunk: Buffer): void => {
      output += chunk.toString();
      this.logs += chunk.toString();
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    child.once('exit', (code, signal) => {
      if (code !== 0 && signal === null) process.stderr.write(`${role} ${child.pid} exited with ${code}: ${output}\n`);
    });
    return child;
  }

  private routerEnvironment(router: Omit<RouterProcess, 'child'>): NodeJS.ProcessEnv {
    return {
      MANTICORE_ROUTER_NAME: router.name,
      MANTICORE_ROUTER_RUN_DIR: router.runDir,
      MANTICORE_HTTP_HOST: router.host,
      MANTICORE_HTTP_PORT: String(router.httpPort),
      MANTICORE_TCP_HOST: router.host,
    };
  }

  /** Kills (kill -9) a router process and its HAProxy (master and workers), as a crashed edge host would lose them. */
  async killRouter(name: string): Promise<void> {
    const router = this.routers.get(name)!;
    const master = Number(fs.readFileSync(runPaths(router.runDir).pidFile, 'utf8'));
    const pids = [router.child.pid!, master, ...childPids(master)];
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // a worker that went with its master
      }
    }
    await waitFor(`${name} and its HAProxy gone`, () => pids.every((pid) => !alive(pid)), 10_000);
  }

  /** Starts a router again on the same address, ports and run directory (its map files hold the routes it served). */
  restartRouter(name: string): void {
    const router = this.routers.get(name)!;
    router.child = this.spawn('router', this.routerEnvironment(router));
  }

  /** Every router process and controller replica started is still running. */
  get processesRunning(): boolean {
    return (
      this.replicas.size === (this.options.replicas ?? 3) &&
      [...this.replicas.values(), ...[...this.routers.values()].map((router) => router.child)].every((child) => child.exitCode === null && child.signalCode === null)
    );
  }

  async heartbeat(name: string): Promise<RouterHeartbeat | undefined> {
    const entry = await this.store.get(keys.router(name));
    return entry ? (JSON.parse(entry.value) as RouterHeartbeat) : undefined;
  }

  /** Waits until the router has heartbeat, since `since` (ms epoch), an applied index covering every stored route record. */
  routerServing(name: string, since: number, timeoutMs = 30_000): Promise<RouterHeartbeat> {
    return waitFor(
      `${name} serving the store's routes`,
      async () => {
        const routesIndex = Math.max(0, ...(await this.store.list(keys.routes)).entries.map((entry) => entry.modifyIndex));
        const heartbeat = await this.heartbeat(name);
        return heartbeat && Date.parse(heartbeat.heartbeatAt) >= since && heartbeat.appliedIndex >= routesIndex ? heartbeat : undefined;
      },
      timeoutMs,
      10,
    );
  }

  /** The public TCP port of each session that has one. */
  async sessionPorts(): Promise<Map<string, number>> {
    const routes = await this.records<RouteRecord>(keys.routes);
    return new Map(routes.flatMap((route) => route.ports.slice(0, 1).map((port): [string, number] => [route.sessionId, port.port])));
  }

  /** Echo traffic through every router to the ports `ports` returns (read again on each pass). */
  traffic(ports: () => readonly number[]): TrafficLoop[] {
    return [...this.routers.values()].map((router) => new TrafficLoop(router.host, ports));
  }

  /** Stops the loops, prints their counts and checks that no round trip failed. */
  async assertTrafficUnbroken(loops: readonly TrafficLoop[], during: string): Promise<TrafficCounts[]> {
    const counts = await Promise.all(loops.map((loop) => loop.stop()));
    process.stdout.write(`      traffic ${during}: ${loops.map((loop, n) => `${counts[n]!.ok} round trips via ${loop.host}, ${counts[n]!.failed} failed`).join('; ')}\n`);
    for (const [n, count] of counts.entries()) {
      assert.ok(count.ok > 0, `traffic through ${loops[n]!.host} ${during}`);
      assert.equal(count.failed, 0, `failed round trips through ${loops[n]!.host} ${during}: ${count.failures.join('; ')}`);
    }
    return counts;
  }

  /** Every key under the prefix, as `consul kv export` would save it. */
  async snapshot(): Promise<KvEntry[]> {
    return (await this.store.list(keys.prefix)).entries;
  }

  /**
   * Writes the saved keys back in key order, as `consul kv import` of an export does, leaving out the
   * leader key as docs/lifecycle.md says ("Recovering from a store loss").
   */
  async restore(entries: readonly KvEntry[]): Promise<void> {
    const keep = entries.filter((entry) => entry.key !== keys.leader).sort((a, b) => (a.key < b.key ? -1 : 1));
    for (const entry of keep) await this.store.put(entry.key, entry.value);
  }

  /** Nomad job registrations so far (each creates a `job-register` evaluation, even when the job is unchanged). */
  async registrations(): Promise<number> {
    const response = await fetch(`${this.nomad.address}/v1/evaluations`);
    return ((await response.json()) as Array<{ TriggeredBy: string }>).filter((evaluation) => evaluation.TriggeredBy === 'job-register').length;
  }

  async leader(): Promise<LeaderValue | undefined> {
    const entry = await this.store.get(keys.prefix + 'leader');
    return entry?.session ? (JSON.parse(entry.value) as LeaderValue) : undefined;
  }

  newLeaderThan(previous: LeaderValue, timeoutMs: number): Promise<LeaderValue> {
    return waitFor(
      'a new leader',
      async () => {
        const current = await this.leader();
        return current !== undefined && current.pid !== previous.pid ? current : undefined;
      },
      timeoutMs,
      10,
    );
  }

  async records<T>(prefix: string): Promise<T[]> {
    return (await this.store.list(prefix)).entries.map((entry) => JSON.parse(entry.value) as T);
  }

  /** IDs of the Nomad jobs that are not dead. */
  async jobs(): Promise<string[]> {
    return (await this.nomadList<{ ID: string; Status: string }>('/v1/jobs?prefix=manticore-')).filter((job) => job.Status !== 'dead').map((job) => job.ID);
  }

  /** A list from the Nomad double's API, bounded in time (a fault may leave a request unanswered). */
  private async nomadList<T>(pathAndQuery: string): Promise<T[]> {
    const response = await fetch(`${this.nomad.address}${pathAndQuery}`, { signal: AbortSignal.timeout(5_000) });
    if (!response.ok) throw new Error(`GET ${pathAndQuery}: HTTP ${response.status}`);
    return (await response.json()) as T[];
  }

  /** Writes `count` session records at once; `midway` runs when half of them are written. */
  async createMany(count: number, tag: string, midway?: () => void, template = 'light'): Promise<string[]> {
    const ids = Array.from({ length: count }, (_, n) => `${tag}chaos${String(n).padStart(5, '0')}`);
    let created = 0;
    await Promise.all(
      ids.map(async (id, n) => {
        await this.create(id, template, n);
        created += 1;
        if (created === Math.floor(count / 2)) midway?.();
      }),
    );
    return ids;
  }

  /** Writes one session record (`order` spaces the creation times of a burst, keeping the queue's order). */
  async create(id: string, template = 'light', order = 0): Promise<void> {
    const record: SessionRecord = {
      metadata: { id, owner: `user-${id}`, createdAt: new Date(Date.now() + order).toISOString(), generation: 1 },
      spec: { template, parameters: {} },
    };
    assert.equal(await this.store.put(keys.session(id), JSON.stringify(record), { cas: 0 }), true);
  }

  /**
   * Waits until every one of `ids` is Ready, then checks each was Ready once and stayed Ready, with its own
   * job, routes, token and port, and one allocation (never replaced, of the job's first version) that is the
   * one its status names.
   */
  async assertHealthy(ids: string[], timeoutMs = 60_000 + ids.length * 200): Promise<void> {
    await this.untilReady(ids, timeoutMs);
    const statuses = await this.records<SessionStatus>(keys.statuses);
    for (const status of statuses) {
      assert.equal(status.events.filter((event) => event.reason === 'PhaseReady').length, 1, `Ready exactly once: ${JSON.stringify(status.events)}`);
      const phases = status.events.filter((event) => event.reason.startsWith('Phase'));
      assert.equal(phases.at(-1)?.reason, 'PhaseReady', `Ready ever since: ${JSON.stringify(status.events)}`);
    }
    const running = await this.jobs();
    assert.equal(running.length, ids.length, 'one job per session');
    assert.deepEqual(new Set(running), new Set(ids.map((id) => `manticore-${id}`)));
    const allocations = new Map<string, Array<{ ID: string; JobVersion: number; ClientStatus: string }>>();
    for (const alloc of await this.nomadList<{ ID: string; JobID: string; JobVersion: number; ClientStatus: string }>('/v1/allocations')) {
      allocations.set(alloc.JobID, [...(allocations.get(alloc.JobID) ?? []), alloc]);
    }
    for (const status of statuses) {
      const of = allocations.get(status.jobId ?? '') ?? [];
      assert.equal(of.length, 1, `${status.jobId}: one allocation, never replaced: ${JSON.stringify(of)}`);
      assert.deepEqual([of[0]!.ID, of[0]!.JobVersion, of[0]!.ClientStatus], [status.allocationId, 0, 'running'], `${status.jobId}: the allocation Ready named, of version 0`);
    }
    const routes = await this.records<RouteRecord>(keys.routes);
    assert.equal(routes.length, ids.length);
    const tokens = routes.flatMap((route) => route.hosts.map((host) => host.token));
    const ports = routes.flatMap((route) => route.ports.map((port) => port.port));
    assert.equal(new Set(tokens).size, tokens.length, 'no token given twice');
    assert.equal(new Set(ports).size, ports.length, 'no port given twice');
  }

  /** Waits until every one of `ids` is Ready, reading only the store (Nomad may be faulty meanwhile). */
  async untilReady(ids: string[], timeoutMs = 60_000 + ids.length * 200): Promise<void> {
    let last: SessionStatus[] = [];
    await waitFor(
      `all ${ids.length} sessions Ready`,
      async () => {
        last = await this.records<SessionStatus>(keys.statuses);
        return last.filter((status) => status.phase === 'Ready').length === ids.length;
      },
      timeoutMs,
      200,
    ).catch((error: Error) => {
      const phases = last.map((status) => `${status.phase}/${status.conditions.find((c) => c.type === 'Ready')?.reason}`);
      const counts = Object.entries(phases.reduce<Record<string, number>>((all, phase) => ({ ...all, [phase]: (all[phase] ?? 0) + 1 }), {}));
      throw new Error(`${error.message}: ${last.length} statuses, ${JSON.stringify(counts)}; e.g. ${JSON.stringify(last.find((status) => status.phase !== 'Ready'))}`);
    });
  }

  /** Requests deletion of `ids` (one CAS write each). */
  async requestDeletion(ids: string[]): Promise<void> {
    await Promise.all(
      ids.map(async (id) => {
        for (;;) {
          const entry = (await this.store.get(keys.session(id)))!;
          const record = JSON.parse(entry.value) as SessionRecord;
          record.metadata.deletionRequestedAt = new Date().toISOString();
          if (await this.store.put(keys.session(id), JSON.stringify(record), { cas: entry.modifyIndex })) return;
        }
      }),
    );
  }

  /** Waits until no session record, status, route or job is left. */
  async assertClean(timeoutMs = 60_000): Promise<void> {
    await this.untilRecordsGone(timeoutMs);
    await waitFor('no jobs left', async () => (await this.jobs()).length === 0, timeoutMs, 200);
  }

  /** Waits until no session record, status or route is left, reading only the store. */
  async untilRecordsGone(timeoutMs = 60_000): Promise<void> {
    await waitFor(
      'no records, routes or ports left',
      async () =>
        (await this.store.list(keys.sessions)).entries.length === 0 &&
        (await this.store.list(keys.statuses)).entries.length === 0 &&
        (await this.store.list(keys.routes)).entries.length === 0,
      timeoutMs,
      200,
    );
  }

  /** Deletes the sessions and checks that nothing of them is left anywhere. */
  async deleteAndAssertClean(ids: string[]): Promise<void> {
    await this.requestDeletion(ids);
    await this.assertClean();
  }
}
