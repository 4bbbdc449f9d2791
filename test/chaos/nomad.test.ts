import { ChaosCluster, chaosSessions } from '../support/chaos-cluster.js';

/**
 * Nomad misbehaving under the controllers: answering errors and leaving calls unanswered (some of those
 * writes applied all the same) during a burst of creates and its deletion, then an agent restart and an
 * outage of a few seconds in the middle of a burst. Each scenario ends with the invariants checked, and
 * with one allocation per session, never replaced.
 */
describe('chaos: Nomad errors, timeouts and restarts', function () {
  this.timeout(300_000);
  // A short bound on Nomad calls, so that unanswered ones are given up (and retried) within the test; the
  // double, one event loop for the whole cluster, answers big bursts slower, so they get more.
  const cluster = new ChaosCluster({ nomadSettings: [`requestTimeoutSeconds: ${chaosSessions > 50 ? 2 : 1}`] });
  const report = (line: string): void => void process.stdout.write(`      ${line}\n`);

  before(() => cluster.start());
  after(() => cluster.stop());

  /** Creates `count` sessions and waits until all are Ready; `midway` runs when half are written. */
  async function burst(count: number, tag: string, midway?: () => void): Promise<{ ids: string[]; ms: number; readyAt: number }> {
    const started = Date.now();
    const ids = await cluster.createMany(count, tag, midway);
    await cluster.untilReady(ids);
    const readyAt = Date.now();
    return { ids, ms: readyAt - started, readyAt };
  }

  function faults(errorRate: number, timeoutRate: number): void {
    Object.assign(cluster.nomad.faults, { errorRate, timeoutRate });
  }

  it(`makes ${chaosSessions} sessions Ready once each and deletes them cleanly while Nomad answers 500 on 30% and never answers 10% of calls`, async () => {
    const reference = await burst(chaosSessions, 'ref');
    await cluster.assertHealthy(reference.ids);
    await cluster.deleteAndAssertClean(reference.ids);

    const before = { ...cluster.nomad.injected };
    faults(0.3, 0.1);
    const faulty = await burst(chaosSessions, 'err');
    faults(0, 0);
    await cluster.assertHealthy(faulty.ids);
    report(`all ${chaosSessions} Ready in ${faulty.ms} ms with faults, ${reference.ms} ms without`);

    faults(0.3, 0.1);
    const deleting = Date.now();
    await cluster.requestDeletion(faulty.ids);
    await cluster.untilRecordsGone();
    faults(0, 0);
    await cluster.assertClean();
    const { errors, timeouts, appliedWrites } = cluster.nomad.injected;
    report(`deleted in ${Date.now() - deleting} ms with faults; ${errors - before.errors} errors and ${timeouts - before.timeouts} timeouts injected (${appliedWrites - before.appliedWrites} timed-out writes applied)`);
  });

  it(`recovers its Nomad watches after an agent restart and a 3 s outage in the middle of ${chaosSessions} creates each`, async () => {
    let restarted: Promise<void> = Promise.resolve();
    const restart = await burst(chaosSessions, 'rst', () => {
      restarted = cluster.nomad.restart();
    });
    await restarted;
    await cluster.assertHealthy(restart.ids);
    report(`agent restart mid-burst: all ${chaosSessions} Ready in ${restart.ms} ms`);
    await cluster.deleteAndAssertClean(restart.ids);

    let back = 0;
    let outage: Promise<void> = Promise.resolve();
    const down = await burst(chaosSessions, 'out', () => {
      outage = (async () => {
        await cluster.nomad.outage(true);
        await new Promise((resolve) => setTimeout(resolve, 3_000));
        await cluster.nomad.outage(false);
        back = Date.now();
      })();
    });
    await outage;
    await cluster.assertHealthy(down.ids);
    report(`3 s outage mid-burst: all ${chaosSessions} Ready in ${down.ms} ms, ${down.readyAt - back} ms after Nomad was back`);
    await cluster.deleteAndAssertClean(down.ids);
  });
});
