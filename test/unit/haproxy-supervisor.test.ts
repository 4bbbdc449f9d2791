import assert from 'node:assert/strict';
import sinon from 'sinon';
import type { HaproxyDataPlane } from '../../controller/router/data-plane.js';
import type { HaproxyProcess } from '../../controller/router/haproxy-process.js';
import { HaproxySupervisor } from '../../controller/router/haproxy-supervisor.js';
import { silentLogger } from '../../controller/util/log.js';

/** Starts as HaproxyProcess does: running once started, and a second start while it runs throws. */
class FakeHaproxy {
  running = false;
  starts = 0;
  /** Start-ups that fail before any succeeds. */
  constructor(private failing = 0) {}

  async start(): Promise<void> {
    this.starts += 1;
    if (this.running) throw new Error('HAProxy is already running (master 1234)');
    if (this.failing-- > 0) throw new Error('HAProxy exited during start-up');
    this.running = true;
  }
}

describe('HAProxy supervisor: restarting a HAProxy that died', () => {
  let clock: sinon.SinonFakeTimers;
  beforeEach(() => (clock = sinon.useFakeTimers()));
  afterEach(() => clock.restore());

  it('retries only what failed: the start while HAProxy does not run, then the resync alone', async () => {
    const haproxy = new FakeHaproxy(1);
    // The data plane runs the restart, then resyncs: the first resync fails.
    const resync = sinon.stub().onFirstCall().rejects(new Error('HAProxy runtime command "show map" failed: no complete reply within 10000 ms')).resolves();
    const replaceWorker = async (restart: () => Promise<void>): Promise<void> => {
      await restart();
      await resync();
    };
    const supervisor = new HaproxySupervisor(haproxy as unknown as HaproxyProcess, { replaceWorker } as unknown as HaproxyDataPlane, silentLogger());
    supervisor.restartSoon();
    // Attempts after 500 ms, then 1 s and 2 s later (the backoff).
    const attempts: Array<[number, number]> = [];
    for (const delay of [500, 1_000, 2_000]) {
      await clock.tickAsync(delay);
      attempts.push([haproxy.starts, resync.callCount]);
    }
    assert.deepEqual(attempts, [[1, 0], [2, 1], [2, 2]], '[starts, resyncs] after each attempt');
    assert.equal(clock.countTimers(), 0, 'nothing left to retry');
    supervisor.stop();
  });
});
