import assert from 'node:assert/strict';
import * as FakeTimers from '@sinonjs/fake-timers';
import { SoleLeader } from '../../controller/controller/leader.js';
import { ReplicaHeartbeat } from '../../controller/controller/replica-heartbeat.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import type { Store } from '../../controller/store/store.js';
import { capturingLogger, delegatingStore, keys, testLog } from '../support/controller-harness.js';
import { waitFor } from '../support/wait.js';

describe('controller replica heartbeats', () => {
  it('are written at once, withdrawn on stop, and the leader removes records dead for an hour or unreadable', async () => {
    const store = EmbeddedStore.open(':memory:');
    const leadership = new SoleLeader();
    const at = (msAgo: number): string => new Date(Date.now() - msAgo).toISOString();
    const record = (host: string, heartbeatAt: string): string => JSON.stringify({ host, pid: 9, startedAt: heartbeatAt, heartbeatAt, leading: false });
    await store.put(keys.controller('long-dead', 9), record('long-dead', at(2 * 3_600_000)));
    await store.put(keys.controller('recently-dead', 9), record('recently-dead', at(600_000)));
    await store.put(keys.controller('garbled', 9), 'not json');
    leadership.start();
    const { log, lines } = capturingLogger();
    const heartbeat = new ReplicaHeartbeat({ store, keys, leadership, intervalMs: 60_000, log });
    heartbeat.start();
    const own = keys.controller(leadership.identity.host, leadership.identity.pid);
    await waitFor('stale records removed', async () => (await store.list(keys.controllers)).entries.length === 2);
    // Each is logged for what it was: a garbled record says nothing of how long ago its replica was last heard.
    const removals = lines.filter((line) => line.msg.startsWith('removed')).map((line) => `${String(line.key)}: ${line.msg}`);
    assert.deepEqual(removals.sort(), [
      `${keys.controller('garbled', 9)}: removed an unreadable controller heartbeat`,
      `${keys.controller('long-dead', 9)}: removed the heartbeat of a controller replica gone for an hour`,
    ]);
    assert.deepEqual((await store.list(keys.controllers)).entries.map((entry) => entry.key).sort(), [keys.controller('recently-dead', 9), own].sort());
    assert.equal((JSON.parse((await store.get(own))!.value) as { leading: boolean }).leading, true);
    await heartbeat.stop();
    assert.equal(await store.get(own), undefined);
    await store.close();
  });

  it('keep one write on its way while the store does not answer, and then write the latest state once', async () => {
    const clock = FakeTimers.install({ toFake: ['setInterval', 'clearInterval', 'Date'] });
    const inner = EmbeddedStore.open(':memory:');
    try {
      let answer!: () => void;
      let answered = new Promise<void>((resolve) => (answer = resolve));
      const puts: string[] = [];
      const store: Store = {
        ...delegatingStore(inner),
        put: async (_key, value) => {
          puts.push(value);
          await answered;
          return true;
        },
      };
      const leadership = new SoleLeader();
      const heartbeat = new ReplicaHeartbeat({ store, keys, leadership, intervalMs: 1_000, log: testLog });
      heartbeat.start();
      // An hour of beats while the first write hangs; the lead is won meanwhile.
      await clock.tickAsync(1_800_000);
      leadership.start();
      await clock.tickAsync(1_800_000);
      assert.equal(puts.length, 1, 'beats sent while a write was on its way');
      const last = new Date().toISOString();
      answer();
      answered = Promise.resolve();
      await clock.tickAsync(0);
      assert.equal(puts.length, 2, 'beats that had queued up were written out');
      const written = JSON.parse(puts[1]!) as { leading: boolean; heartbeatAt: string };
      assert.deepEqual({ leading: written.leading, heartbeatAt: written.heartbeatAt }, { leading: true, heartbeatAt: last });
      await heartbeat.stop();
      assert.equal(puts.length, 2, 'stopping wrote the heartbeat again');
    } finally {
      clock.uninstall();
      await inner.close();
    }
  });
});
