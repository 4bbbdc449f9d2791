import assert from 'node:assert/strict';
import { ChaosCluster, chaosSessions } from '../support/chaos-cluster.js';

/**
 * The leader is killed (kill -9) in the middle of a burst of creates, and stopped (SIGTERM) for a planned
 * handover; each scenario ends with the invariants checked.
 */
describe('chaos: controller failover', function () {
  this.timeout(180_000);
  const cluster = new ChaosCluster();

  before(() => cluster.start());
  after(() => cluster.stop());

  it(`loses nothing when the leader is killed (kill -9) in the middle of ${chaosSessions} creates, and fails over within TTL + lock-delay + 1 s`, async () => {
    const bound = (cluster.ttlSeconds + cluster.lockDelaySeconds + 1) * 1000;
    const first = (await cluster.leader())!;
    let killedAt = 0;
    const ids = await cluster.createMany(chaosSessions, 'k', () => {
      killedAt = Date.now();
      cluster.replicas.get(first.pid)!.kill('SIGKILL');
    });
    const next = await cluster.newLeaderThan(first, 30_000);
    const failoverMs = Date.now() - killedAt;
    process.stdout.write(`      failover after kill -9: ${failoverMs} ms (bound ${bound} ms), new leader pid ${next.pid}\n`);
    assert.ok(failoverMs <= bound, `failover took ${failoverMs} ms`);
    cluster.startReplica();
    await cluster.assertHealthy(ids);
    await cluster.deleteAndAssertClean(ids);
  });

  it('hands over within a second when the leader is stopped (SIGTERM), and keeps serving', async () => {
    const first = (await cluster.leader())!;
    const stoppedAt = Date.now();
    cluster.replicas.get(first.pid)!.kill('SIGTERM');
    const next = await cluster.newLeaderThan(first, 10_000);
    const handoverMs = Date.now() - stoppedAt;
    process.stdout.write(`      handover after SIGTERM: ${handoverMs} ms, new leader pid ${next.pid}\n`);
    assert.ok(handoverMs < 1_000, `handover took ${handoverMs} ms`);
    cluster.startReplica();
    const ids = await cluster.createMany(20, 't');
    await cluster.assertHealthy(ids);
    await cluster.deleteAndAssertClean(ids);
  });
});
