import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { RouteRecord, SessionRecord, SessionStatus } from '../../controller/api/types.js';
import { RouterAgent } from '../../controller/router/agent.js';
import { ConsulStore } from '../../controller/store/consul-store.js';
import { ConsulDouble } from '../fakes/consul.js';
import { NomadDouble } from '../fakes/nomad.js';
import { keys, RecordingDataPlane, testLog } from './controller-harness.js';
import { waitFor } from './wait.js';

const repoRoot = path.resolve(__dirname, '../../..');
const cli = path.join(repoRoot, 'dist/controller/cli/main.js');

/** CHAOS_SESSIONS scales the load: `make chaos` runs 200 creates (or more), `make test` a short version. */
export const chaosSessions = Number(process.env.CHAOS_SESSIONS ?? 50);

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
  /** Starts an in-process router agent with a recording data plane (default true). */
  readonly recordingRouter?: boolean;
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
  /** Everything the controller processes wrote to stderr (their structured logs), for checks on loud messages. */
  logs = '';
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
        '  nomad: { address: "' + this.nomad.address + '", datacenters: [dc1], healthyDeadlineSeconds: 60, checkIntervalSeconds: 1 }',
        'templates: { dir: test/fixtures/templates }',
        'router: { tcp: { portRangeStart: 20000, portRangeEnd: 24999 } }',
        'limits: { maxSessions: 5000, maxStarting: 5000, sessionsPerUser: 1 }',
        `controller: { ${controller.join(', ')} }`,
        ...(this.options.extraConfig ?? []),
        '',
      ].join('\n'),
    );
    if (this.options.recordingRouter ?? true) {
      this.router = new RouterAgent({ store: this.store, keys, name: 'edge-1', dataPlane: new RecordingDataPlane(), heartbeatMs: 1_000, storeLossGraceMs: 900_000, log: testLog });
      await this.router.start();
    }
    for (let n = 0; n < (this.options.replicas ?? 3); n++) this.startReplica();
    await waitFor('a leader', () => this.leader(), 30_000);
  }

  async stop(): Promise<void> {
    for (const child of this.replicas.values()) child.kill('SIGKILL');
    await this.router?.stop();
    await this.store?.close();
    await this.nomad?.stop();
    await this.consul?.stop();
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  startReplica(): ChildProcess {
    const child = spawn(process.execPath, [cli, 'controller', '--config', this.config], {
      cwd: repoRoot,
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, MANTICORE_LOG_LEVEL: 'warn' },
    });
    let errors = '';
    child.stderr!.on('data', (chunk: Buffer) => {
      errors += chunk.toString();
      this.logs += chunk.toString();
    });
    child.once('exit', (code, signal) => {
      this.replicas.delete(child.pid!);
      if (code !== 0 && signal === null) process.stderr.write(`controller ${child.pid} exited with ${code}: ${errors}\n`);
    });
    this.replicas.set(child.pid!, child);
    return child;
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
    const response = await fetch(`${this.nomad.address}/v1/jobs?prefix=manticore-`);
    return ((await response.json()) as Array<{ ID: string; Status: string }>).filter((job) => job.Status !== 'dead').map((job) => job.ID);
  }

  /** Writes `count` session records at once; `midway` runs when half of them are written. */
  async createMany(count: number, tag: string, midway?: () => void): Promise<string[]> {
    const ids = Array.from({ length: count }, (_, n) => `${tag}chaos${String(n).padStart(5, '0')}`);
    let created = 0;
    await Promise.all(
      ids.map(async (id, n) => {
        const record: SessionRecord = {
          metadata: { id, owner: `user-${id}`, createdAt: new Date(Date.now() + n).toISOString(), generation: 1 },
          spec: { template: 'light', parameters: {} },
        };
        assert.equal(await this.store.put(keys.session(id), JSON.stringify(record), { cas: 0 }), true);
        created += 1;
        if (created === Math.floor(count / 2)) midway?.();
      }),
    );
    return ids;
  }

  /** Waits until every one of `ids` is Ready, then checks each was Ready once with its own job, routes, token and port. */
  async assertHealthy(ids: string[], timeoutMs = 60_000 + ids.length * 200): Promise<void> {
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
    for (const status of await this.records<SessionStatus>(keys.statuses)) {
      assert.equal(status.events.filter((event) => event.reason === 'PhaseReady').length, 1, `Ready exactly once: ${JSON.stringify(status.events)}`);
    }
    const running = await this.jobs();
    assert.equal(running.length, ids.length, 'one job per session');
    assert.deepEqual(new Set(running), new Set(ids.map((id) => `manticore-${id}`)));
    const routes = await this.records<RouteRecord>(keys.routes);
    assert.equal(routes.length, ids.length);
    const tokens = routes.flatMap((route) => route.hosts.map((host) => host.token));
    const ports = routes.flatMap((route) => route.ports.map((port) => port.port));
    assert.equal(new Set(tokens).size, tokens.length, 'no token given twice');
    assert.equal(new Set(ports).size, ports.length, 'no port given twice');
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
    await waitFor(
      'no records, routes, jobs or ports left',
      async () =>
        (await this.store.list(keys.sessions)).entries.length === 0 &&
        (await this.store.list(keys.statuses)).entries.length === 0 &&
        (await this.store.list(keys.routes)).entries.length === 0 &&
        (await this.jobs()).length === 0,
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
