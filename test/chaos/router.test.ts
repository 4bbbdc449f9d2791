import assert from 'node:assert/strict';
import { ChaosCluster, chaosSessions } from '../support/chaos-cluster.js';
import { TrafficLoop, unreachable } from '../support/traffic.js';
import { waitFor } from '../support/wait.js';

/**
 * Two routers, each a `manticore router` process with its own HAProxy, serve sessions that really listen
 * (the `echo` template). One router and its HAProxy are killed (kill -9) under traffic, sessions are
 * created while it is down, and it is started again.
 */
describe('chaos: a router and its HAProxy killed under traffic', function () {
  this.timeout(300_000);
  const staleSeconds = 3;
  const cluster = new ChaosCluster({
    routers: 2,
    tcpPorts: chaosSessions + 100,
    routerSettings: ['heartbeatSeconds: 1'],
    controllerSettings: [`routerStaleSeconds: ${staleSeconds}`],
  });

  before(() => cluster.start());
  after(() => cluster.stop());

  it(`keeps the other router serving, starts sessions without the dead one, and catches up when it returns (${chaosSessions} sessions)`, async () => {
    const [edge1, edge2] = [cluster.routers.get('edge-1')!, cluster.routers.get('edge-2')!];
    const before = await cluster.createMany(chaosSessions, 'r', undefined, 'echo');
    await cluster.assertHealthy(before);
    const oldPorts = [...(await cluster.sessionPorts()).values()];
    let ports = oldPorts;
    const survivor = new TrafficLoop(edge1.host, () => ports);
    const victim = new TrafficLoop(edge2.host, () => ports);
    await waitFor('traffic through both routers', () => survivor.counts.ok > 0 && victim.counts.ok > 0, 10_000);
    const served = await victim.stop();
    assert.equal(served.failed, 0, `traffic through ${edge2.name} before the kill: ${served.failures.join('; ')}`);

    await cluster.killRouter(edge2.name);
    const downAt = Date.now();
    const during = await cluster.createMany(Math.max(5, Math.floor(chaosSessions / 5)), 'd', undefined, 'echo');
    await cluster.assertHealthy([...before, ...during]);
    process.stdout.write(`      ${during.length} sessions created with ${edge2.name} down: all Ready ${Date.now() - downAt} ms after the kill (stale after ${staleSeconds} s)\n`);
    ports = [...(await cluster.sessionPorts()).values()];
    await waitFor(`traffic through ${edge1.name} to the new sessions`, async () => (await unreachable(edge1.host, ports)).length === 0, 10_000);

    const restartedAt = Date.now();
    cluster.restartRouter(edge2.name);
    await waitFor(`${edge2.name} serving the routes it had`, async () => (await unreachable(edge2.host, oldPorts)).length === 0, 30_000, 10);
    const oldRoutesMs = Date.now() - restartedAt;
    const heartbeat = await cluster.routerServing(edge2.name, restartedAt);
    const appliedMs = Date.now() - restartedAt;
    await waitFor(`${edge2.name} serving every session`, async () => (await unreachable(edge2.host, ports)).length === 0, 30_000, 10);
    const catchUpMs = Date.now() - restartedAt;
    process.stdout.write(
      `      ${edge2.name} restarted: its old routes served after ${oldRoutesMs} ms, applied index ${heartbeat.appliedIndex} reported after ${appliedMs} ms, ` +
        `every session (${ports.length}) reachable through it after ${catchUpMs} ms (catch-up)\n`,
    );

    const back = new TrafficLoop(edge2.host, () => ports);
    await waitFor(`a round of traffic through ${edge2.name}`, () => back.counts.ok >= ports.length, 60_000);
    const [through1, through2] = [await survivor.stop(), await back.stop()];
    process.stdout.write(`      traffic: ${through1.ok} round trips through ${edge1.name}, ${through2.ok} through ${edge2.name} after its restart\n`);
    assert.equal(through1.failed, 0, `traffic through ${edge1.name}: ${through1.failures.join('; ')}`);
    assert.equal(through2.failed, 0, `traffic through ${edge2.name} after its restart: ${through2.failures.join('; ')}`);
    assert.ok(cluster.processesRunning, 'every controller and router still running');
    await cluster.deleteAndAssertClean([...before, ...during]);
  });
});
