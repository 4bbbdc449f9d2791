import assert from 'node:assert/strict';
import { SoleLeader } from '../../controller/controller/leader.js';
import { ReplicaHeartbeat } from '../../controller/controller/replica-heartbeat.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { keys, testLog } from '../support/controller-harness.js';
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
    const heartbeat = new ReplicaHeartbeat({ store, keys, leadership, intervalMs: 60_000, log: testLog });
    heartbeat.start();
    const own = keys.controller(leadership.identity.host, leadership.identity.pid);
    await waitFor('stale records removed', async () => (await store.list(keys.controllers)).entries.length === 2);
    assert.deepEqual((await store.list(keys.controllers)).entries.map((entry) => entry.key).sort(), [keys.controller('recently-dead', 9), own].sort());
    assert.equal((JSON.parse((await store.get(own))!.value) as { leading: boolean }).leading, true);
    await heartbeat.stop();
    assert.equal(await store.get(own), undefined);
    await store.close();
  });
});
