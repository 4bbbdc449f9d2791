import assert from 'node:assert/strict';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { SessionStatus } from '../../controller/api/types.js';
import { runPaths } from '../../controller/router/haproxy-config.js';
import { ChaosCluster, chaosOutageSeconds, chaosSessions } from '../support/chaos-cluster.js';
import { keys } from '../support/controller-harness.js';
import { unreachable, type TrafficLoop } from '../support/traffic.js';
import { waitFor } from '../support/wait.js';

/**
 * Consul misbehaving under a running cluster (three controllers, two routers with their own HAProxy,
 * sessions that really listen): unreachable for a while, cutting blocking queries, losing all its state.
 * Each scenario ends with the invariants checked.
 */
describe('chaos: Consul unavailable, cutting watches, losing its state', function () {
  this.timeout(600_000);
  // Long enough to restore the backup of every session in; short enough to wait out.
  const graceSeconds = 8 + Math.round(chaosSessions / 20);
  const cluster = new ChaosCluster({
    routers: 2,
    tcpPorts: chaosSessions + 100,
    routerSettings: ['heartbeatSeconds: 1', `storeLossGracePeriodSeconds: ${graceSeconds}`],
    controllerSettings: ['routerStaleSeconds: 3', `orphanGracePeriodSeconds: ${graceSeconds}`],
  });

  before(() => cluster.start());
  after(() => cluster.stop());

  /** `echo` sessions, Ready, with traffic flowing to them through both routers. */
  async function servedSessions(tag: string): Promise<{ ids: string[]; ports: number[]; traffic: TrafficLoop[] }> {
    const ids = await cluster.createMany(chaosSessions, tag, undefined, 'echo');
    await cluster.assertHealthy(ids);
    const ports = [...(await cluster.sessionPorts()).values()];
    const traffic = cluster.traffic(() => ports);
    await waitFor('traffic through both routers', () => traffic.every((loop) => loop.counts.ok > 0), 10_000);
    return { ids, ports, traffic };
  }

  async function ready(id: string): Promise<boolean> {
    const entry = await cluster.store.get(keys.status(id));
    return entry !== undefined && (JSON.parse(entry.value) as SessionStatus).phase === 'Ready';
  }

  it(`keeps serving through a ${chaosOutageSeconds} s Consul outage and resumes work within seconds of its end`, async () => {
    const bound = (cluster.ttlSeconds + cluster.lockDelaySeconds + 10) * 1000;
    const { ids, traffic } = await servedSessions('o');
    await cluster.consul.outage(true);
    const okBefore = traffic.map((loop) => loop.counts.ok);
    await sleep(chaosOutageSeconds * 1000);
    const servedDuring = traffic.map((loop, n) => loop.counts.ok - okBefore[n]!);
    await cluster.consul.outage(false);
    const backAt = Date.now();
    await waitFor('a leader', () => cluster.leader(), bound, 10);
    const leaderMs = Date.now() - backAt;
    const probe = 'outageprobe';
    await waitFor('the store accepting writes', () => cluster.create(probe, 'echo').then(() => true), bound, 50);
    await waitFor('a session created after the outage Ready', () => ready(probe), bound, 20);
    const readyMs = Date.now() - backAt;
    process.stdout.write(
      `      after a ${chaosOutageSeconds} s outage: a leader ${leaderMs} ms after Consul returned, a new session Ready after ${readyMs} ms (bound ${bound} ms); ` +
        `round trips during the outage: ${servedDuring.join(' and ')}\n`,
    );
    assert.ok(servedDuring.every((count) => count > 0), 'both routers served during the outage');
    await cluster.assertTrafficUnbroken(traffic, 'through the outage');
    assert.ok(readyMs <= bound, `work resumed after ${readyMs} ms`);
    assert.ok(cluster.processesRunning, 'every controller and router still running');
    await cluster.assertHealthy([...ids, probe]);
    await cluster.deleteAndAssertClean([...ids, probe]);
  });

  it(`misses no update when blocking queries are cut every 100–300 ms during ${chaosSessions} creates and their deletion`, async () => {
    let aborting = true;
    let aborts = 0;
    let dropped = 0;
    const abort = (): void => {
      dropped += cluster.consul.heldQueries;
      cluster.consul.abortBlockingQueries();
      aborts += 1;
    };
    const aborter = (async () => {
      while (aborting) {
        await sleep(100 + Math.random() * 200);
        abort();
      }
    })();
    const ids = await cluster.createMany(chaosSessions, 'q');
    // Each written in the same tick as a cut, so it lands while every watch is reconnecting.
    for (let n = 0; n < 10; n++) {
      await sleep(150);
      const id = `qafter${String(n).padStart(5, '0')}`;
      abort();
      await cluster.create(id);
      ids.push(id);
    }
    await cluster.assertHealthy(ids);
    await cluster.deleteAndAssertClean(ids);
    aborting = false;
    await aborter;
    process.stdout.write(`      ${aborts} cuts dropped ${dropped} blocking queries; all ${ids.length} sessions Ready once and cleanly deleted\n`);
    assert.ok(cluster.processesRunning, 'every controller and router still running');
  });

  /** Loses Consul's state and waits for the loud messages and a new leader; returns when the loss happened. */
  async function loseTheStore(): Promise<number> {
    const logged = cluster.logs.length;
    cluster.consul.reset();
    const resetAt = Date.now();
    await waitFor('a leader again', () => cluster.leader(), 30_000, 10);
    process.stdout.write(`      store lost: a leader again after ${Date.now() - resetAt} ms\n`);
    await waitFor('the controller and both routers saying loudly that the store was lost', () => {
      const since = cluster.logs.slice(logged);
      return since.includes('the store looks lost') && since.split('the store lost its state').length - 1 >= cluster.routers.size;
    }, 30_000);
    return resetAt;
  }

  it('adopts every session, registering no job again, when the store is restored from a backup within the grace period', async () => {
    const { ids, traffic } = await servedSessions('s');
    const backup = await cluster.snapshot();
    const registrations = await cluster.registrations();
    const resetAt = await loseTheStore();
    assert.equal((await cluster.jobs()).length, ids.length, 'no workload removed during the grace period');
    await cluster.restore(backup);
    process.stdout.write(`      ${backup.length} keys restored ${Date.now() - resetAt} ms after the loss (grace ${graceSeconds} s)\n`);
    await cluster.assertHealthy(ids);
    // Past the end of the grace period, nothing adopted is removed.
    await sleep(Math.max(0, resetAt + graceSeconds * 1000 + 3_000 - Date.now()));
    await cluster.assertHealthy(ids);
    assert.equal(await cluster.registrations(), registrations, 'no job registered again');
    await cluster.assertTrafficUnbroken(traffic, 'through the loss and the restore');
    assert.ok(cluster.processesRunning, 'every controller and router still running');
    await cluster.deleteAndAssertClean(ids);
  });

  it('removes every job and route when the grace period ends without a restore, and leaves nothing', async () => {
    const { ports, traffic } = await servedSessions('n');
    const resetAt = await loseTheStore();
    await sleep(Math.max(0, resetAt + graceSeconds * 1000 - 3_000 - Date.now()));
    assert.equal((await cluster.jobs()).length, ports.length, 'no workload removed during the grace period');
    await cluster.assertTrafficUnbroken(traffic, 'during the grace period');
    await cluster.assertClean();
    for (const router of cluster.routers.values()) {
      await waitFor(`${router.name} serving none of the lost sessions`, async () => (await unreachable(router.host, ports)).length === ports.length, 30_000);
      // The map files follow the live maps within about a second (the router writes them in the background).
      const entries = (): string[] => fs.readFileSync(runPaths(router.runDir).tcpMap, 'utf8').split('\n').filter((line) => line.trim() !== '' && !line.startsWith('#'));
      await waitFor(`${router.name}'s TCP map file holding no route`, () => entries().length === 0, 5_000);
    }
    process.stdout.write(`      no restore: everything removed ${Date.now() - resetAt} ms after the loss (grace ${graceSeconds} s)\n`);
    assert.ok(cluster.processesRunning, 'every controller and router still running');
  });
});
