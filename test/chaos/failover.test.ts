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
import { keys, RecordingDataPlane, testLog } from '../support/controller-harness.js';
import { waitFor } from '../support/wait.js';

const repoRoot = path.resolve(__dirname, '../../..');
const cli = path.join(repoRoot, 'dist/controller/cli/main.js');
/** CHAOS_SESSIONS scales the load: `make chaos` runs 200 creates (or more), `make test` a short version. */
const sessions = Number(process.env.CHAOS_SESSIONS ?? 50);
const ttlSeconds = 10;
const lockDelaySeconds = 1;

interface LeaderValue {
  host: string;
  pid: number;
  since: string;
}

/**
 * Controller replicas as separate processes against the Consul and Nomad doubles, with one router agent:
 * the leader is killed (kill -9) in the middle of a burst of creates, and stopped (SIGTERM) for a planned
 * handover. Each scenario ends by checking the invariants: every session Ready exactly once, one job and
 * one set of routes per session, no token or port given twice, and nothing left after deletion.
 */
describe('chaos: controller failover', function () {
  this.timeout(180_000);
  let consul: ConsulDouble;
  let nomad: NomadDouble;
  let store: ConsulStore;
  let router: RouterAgent;
  let dir: string;
  let config: string;
  const replicas = new Map<number, ChildProcess>();

  const startReplica = (): ChildProcess => {
    const child = spawn(process.execPath, [cli, 'controller', '--config', config], { cwd: repoRoot, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, MANTICORE_LOG_LEVEL: 'warn' } });
    let errors = '';
    child.stderr!.on('data', (chunk: Buffer) => (errors += chunk.toString()));
    child.once('exit', (code, signal) => {
      replicas.delete(child.pid!);
      if (code !== 0 && signal === null) process.stderr.write(`controller ${child.pid} exited with ${code}: ${errors}\n`);
    });
    replicas.set(child.pid!, child);
    return child;
  };

  const leader = async (): Promise<LeaderValue | undefined> => {
    const entry = await store.get(keys.prefix + 'leader');
    return entry?.session ? (JSON.parse(entry.value) as LeaderValue) : undefined;
  };

  const newLeaderThan = (previous: LeaderValue, timeoutMs: number): Promise<LeaderValue> =>
    waitFor(
      'a new leader',
      async () => {
        const current = await leader();
        return current !== undefined && current.pid !== previous.pid ? current : undefined;
      },
      timeoutMs,
      10,
    );

  const records = async <T>(prefix: string): Promise<T[]> => (await store.list(prefix)).entries.map((entry) => JSON.parse(entry.value) as T);

  const jobs = async (): Promise<string[]> => {
    const response = await fetch(`${nomad.address}/v1/jobs?prefix=manticore-`);
    return ((await response.json()) as Array<{ ID: string; Status: string }>).filter((job) => job.Status !== 'dead').map((job) => job.ID);
  };

  const createMany = async (count: number, tag: string, midway?: () => void): Promise<string[]> => {
    const ids = Array.from({ length: count }, (_, n) => `${tag}chaos${String(n).padStart(5, '0')}`);
    let created = 0;
    await Promise.all(
      ids.map(async (id, n) => {
        const record: SessionRecord = {
          metadata: { id, owner: `user-${id}`, createdAt: new Date(Date.now() + n).toISOString(), generation: 1 },
          spec: { template: 'light', parameters: {} },
        };
        assert.equal(await store.put(keys.session(id), JSON.stringify(record), { cas: 0 }), true);
        created += 1;
        if (created === Math.floor(count / 2)) midway?.();
      }),
    );
    return ids;
  };

  /** Every session Ready once, with its own job, routes, token and port. */
  const assertHealthy = async (ids: string[]): Promise<void> => {
    let last: SessionStatus[] = [];
    await waitFor(
      `all ${ids.length} sessions Ready`,
      async () => {
        last = await records<SessionStatus>(keys.statuses);
        return last.filter((status) => status.phase === 'Ready').length === ids.length;
      },
      60_000 + ids.length * 200,
      200,
    ).catch((error: Error) => {
      const phases = last.map((status) => `${status.phase}/${status.conditions.find((c) => c.type === 'Ready')?.reason}`);
      const counts = Object.entries(phases.reduce<Record<string, number>>((all, phase) => ({ ...all, [phase]: (all[phase] ?? 0) + 1 }), {}));
      throw new Error(`${error.message}: ${last.length} statuses, ${JSON.stringify(counts)}; e.g. ${JSON.stringify(last.find((status) => status.phase !== 'Ready'))}`);
    });
    for (const status of await records<SessionStatus>(keys.statuses)) {
      assert.equal(status.events.filter((event) => event.reason === 'PhaseReady').length, 1, `Ready exactly once: ${JSON.stringify(status.events)}`);
    }
    const running = await jobs();
    assert.equal(running.length, ids.length, 'one job per session');
    assert.deepEqual(new Set(running), new Set(ids.map((id) => `manticore-${id}`)));
    const routes = await records<RouteRecord>(keys.routes);
    assert.equal(routes.length, ids.length);
    const tokens = routes.flatMap((route) => route.hosts.map((host) => host.token));
    const ports = routes.flatMap((route) => route.ports.map((port) => port.port));
    assert.equal(new Set(tokens).size, tokens.length, 'no token given twice');
    assert.equal(new Set(ports).size, ports.length, 'no port given twice');
  };

  /** Deletes the sessions and checks that nothing of them is left anywhere. */
  const deleteAndAssertClean = async (ids: string[]): Promise<void> => {
    await Promise.all(
      ids.map(async (id) => {
        const entry = (await store.get(keys.session(id)))!;
        const record = JSON.parse(entry.value) as SessionRecord;
        record.metadata.deletionRequestedAt = new Date().toISOString();
        await store.put(keys.session(id), JSON.stringify(record), { cas: entry.modifyIndex });
      }),
    );
    await waitFor(
      'no records, routes, jobs or ports left',
      async () =>
        (await store.list(keys.sessions)).entries.length === 0 &&
        (await store.list(keys.statuses)).entries.length === 0 &&
        (await store.list(keys.routes)).entries.length === 0 &&
        (await jobs()).length === 0,
      60_000,
      200,
    );
  };

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-chaos-'));
    consul = await ConsulDouble.start({ log: testLog });
    nomad = await NomadDouble.start({ workDir: repoRoot, log: testLog, nodes: [{ name: 'big', cpu: 1_000_000, memoryMB: 1_000_000, diskMB: 10_000_000 }] });
    store = new ConsulStore({ address: consul.address, log: testLog });
    config = path.join(dir, 'manticore.yaml');
    fs.writeFileSync(
      config,
      [
        'store: { backend: consul, consul: { address: "' + consul.address + '" } }',
        'scheduler:',
        '  backend: nomad',
        '  nomad: { address: "' + nomad.address + '", datacenters: [dc1], healthyDeadlineSeconds: 60, checkIntervalSeconds: 1 }',
        'templates: { dir: test/fixtures/templates }',
        'router: { tcp: { portRangeStart: 20000, portRangeEnd: 24999 } }',
        `limits: { maxSessions: 5000, maxStarting: 5000, sessionsPerUser: 1 }`,
        `controller: { workers: 32, rateLimitPerSecond: 10000, rateLimitBurst: 10000, leaderElection: { ttlSeconds: ${ttlSeconds}, lockDelaySeconds: ${lockDelaySeconds} } }`,
        '',
      ].join('\n'),
    );
    router = new RouterAgent({ store, keys, name: 'edge-1', dataPlane: new RecordingDataPlane(), heartbeatMs: 1_000, log: testLog });
    await router.start();
    for (let n = 0; n < 3; n++) startReplica();
    await waitFor('a leader', () => leader(), 30_000);
  });

  after(async () => {
    for (const child of replicas.values()) child.kill('SIGKILL');
    await router?.stop();
    await store?.close();
    await nomad?.stop();
    await consul?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it(`loses nothing when the leader is killed (kill -9) in the middle of ${sessions} creates, and fails over within TTL + lock-delay + 1 s`, async () => {
    const first = (await leader())!;
    let killedAt = 0;
    const ids = await createMany(sessions, 'k', () => {
      killedAt = Date.now();
      replicas.get(first.pid)!.kill('SIGKILL');
    });
    const next = await newLeaderThan(first, 30_000);
    const failoverMs = Date.now() - killedAt;
    process.stdout.write(`      failover after kill -9: ${failoverMs} ms (bound ${(ttlSeconds + lockDelaySeconds + 1) * 1000} ms), new leader pid ${next.pid}\n`);
    assert.ok(failoverMs <= (ttlSeconds + lockDelaySeconds + 1) * 1000, `failover took ${failoverMs} ms`);
    startReplica();
    await assertHealthy(ids);
    await deleteAndAssertClean(ids);
  });

  it('hands over within a second when the leader is stopped (SIGTERM), and keeps serving', async () => {
    const first = (await leader())!;
    const stoppedAt = Date.now();
    replicas.get(first.pid)!.kill('SIGTERM');
    const next = await newLeaderThan(first, 10_000);
    const handoverMs = Date.now() - stoppedAt;
    process.stdout.write(`      handover after SIGTERM: ${handoverMs} ms, new leader pid ${next.pid}\n`);
    assert.ok(handoverMs < 1_000, `handover took ${handoverMs} ms`);
    startReplica();
    const ids = await createMany(20, 't');
    await assertHealthy(ids);
    await deleteAndAssertClean(ids);
  });
});
