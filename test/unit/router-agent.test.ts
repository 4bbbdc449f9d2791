import assert from 'node:assert/strict';
import * as FakeTimers from '@sinonjs/fake-timers';
import { Subject } from 'rxjs';
import type { RouteRecord, RouterHeartbeat } from '../../controller/api/types.js';
import { RouterAgent } from '../../controller/router/agent.js';
import type { KvEntry, KvEntryMeta, PrefixIndex, Store, WatchStep } from '../../controller/store/store.js';
import { capturingLogger, controllerClock, keys, RecordingDataPlane } from '../support/controller-harness.js';

const GRACE_MS = 900_000;

/** A store whose routes watch the test drives step by step; heartbeats are kept as written. */
class ScriptedStore implements Store {
  readonly steps = new Subject<WatchStep>();
  readonly heartbeats: RouterHeartbeat[] = [];
  get = async (): Promise<undefined> => undefined;
  list = async (): Promise<{ entries: KvEntry[]; index: number }> => ({ entries: [], index: 0 });
  prefixIndex = async (): Promise<PrefixIndex> => ({ index: 0, keys: 0 });
  put = async (_key: string, value: string): Promise<boolean> => {
    this.heartbeats.push(JSON.parse(value) as RouterHeartbeat);
    return true;
  };
  delete = async (): Promise<boolean> => true;
  transaction = async (): Promise<boolean> => true;
  commit = async (): Promise<readonly KvEntryMeta[]> => [];
  watch = (): Subject<WatchStep> => this.steps;
  close = async (): Promise<void> => undefined;
}

const token = (id: string): string => id.repeat(26);
const key = (id: string): string => keys.route(`session${id}`);

function entry(id: string, port: number, index: number, backend = `127.0.0.1:${port + 10_000}`): KvEntry {
  const routes: RouteRecord = {
    sessionId: `session${id}`,
    hosts: [{ service: 'hmi', token: token(id), backend }],
    ports: [{ service: 'tcp', port, backend }],
  };
  return { key: key(id), value: JSON.stringify(routes), createIndex: index, modifyIndex: index };
}

/** Lets the agent finish the apply a step started (all of it is promise chains, no I/O). */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('router agent: routes through a store loss', () => {
  let store: ScriptedStore;
  let plane: RecordingDataPlane;
  let clock: FakeTimers.Clock;
  let agent: RouterAgent;
  let lines: ReturnType<typeof capturingLogger>['lines'];

  async function start(storeLossGraceMs = GRACE_MS, initial: KvEntry[] = [entry('a', 20001, 10), entry('b', 20002, 11)]): Promise<void> {
    store = new ScriptedStore();
    plane = new RecordingDataPlane();
    clock = FakeTimers.createClock(1_000_000);
    const captured = capturingLogger();
    lines = captured.lines;
    agent = new RouterAgent({ store, keys, name: 'edge-1', dataPlane: plane, heartbeatMs: 60_000, storeLossGraceMs, log: captured.log, clock: controllerClock(clock) });
    const started = agent.start();
    store.steps.next({ kind: 'reset', index: 11, entries: initial });
    await started;
  }

  const served = (): number[] => [...plane.table.ports.keys()].sort();
  const lastApplied = (): number => store.heartbeats.at(-1)!.appliedIndex;

  afterEach(() => agent.stop());

  it('removes a deleted session\'s routes at once when no rewind is involved', async () => {
    await start();
    store.steps.next({ kind: 'changes', index: 12, changes: [{ type: 'delete', key: key('a'), modifyIndex: 12 }] });
    await settle();
    assert.deepEqual(served(), [20002]);
    assert.deepEqual([...plane.table.hosts.keys()], [token('b')]);
    // A watch resumed without history lists the prefix again at a later index: what is gone is gone.
    store.steps.next({ kind: 'reset', index: 14, entries: [] });
    await settle();
    assert.deepEqual(served(), []);
    assert.equal(lastApplied(), 14);
  });

  it('keeps serving the routes a store rewind took away, says so loudly, and removes them when the grace period ends', async () => {
    await start();
    store.steps.next({ kind: 'reset', index: 1, entries: [] });
    await settle();
    assert.deepEqual(served(), [20001, 20002], 'still served');
    assert.equal(lastApplied(), 1, 'the applied index follows the store back down');
    const loud = lines.filter((line) => line.level >= 50 && /store lost its state/.test(line.msg));
    assert.equal(loud.length, 1);
    assert.equal(loud[0]!.routes, 2);
    clock.tick(GRACE_MS - 1);
    await settle();
    assert.deepEqual(served(), [20001, 20002]);
    clock.tick(1);
    await settle();
    assert.deepEqual(served(), [], 'removed when the grace period ends');
    assert.ok(lines.some((line) => /grace period over/.test(line.msg)));
  });

  it('adopts routes whose records are restored in time, and lets new records win a kept token or port', async () => {
    await start();
    store.steps.next({ kind: 'reset', index: 1, entries: [] });
    await settle();
    // The backup brings a back; meanwhile a new session c was given b's port by a controller that no longer knew it.
    store.steps.next({ kind: 'changes', index: 3, changes: [{ type: 'put', entry: entry('a', 20001, 2) }, { type: 'put', entry: entry('c', 20002, 3, '127.0.0.1:40000') }] });
    await settle();
    assert.equal(plane.table.ports.get(20002), '127.0.0.1:40000', 'the stored record wins the port');
    assert.equal(plane.table.hosts.get(token('b')), '127.0.0.1:30002', 'b is still served where nothing claims it');
    clock.tick(GRACE_MS);
    await settle();
    assert.deepEqual(served(), [20001, 20002], 'a adopted, c stored');
    assert.equal(plane.table.ports.get(20002), '127.0.0.1:40000');
    assert.equal(plane.table.hosts.has(token('b')), false, 'b removed');
    // An adopted route is an ordinary route again: deleting it applies at once.
    store.steps.next({ kind: 'changes', index: 4, changes: [{ type: 'delete', key: key('a'), modifyIndex: 4 }] });
    await settle();
    assert.deepEqual(served(), [20002]);
  });

  it('removes the vanished routes at once when the grace period is 0', async () => {
    await start(0);
    store.steps.next({ kind: 'reset', index: 1, entries: [entry('b', 20002, 1)] });
    await settle();
    assert.deepEqual(served(), [20002]);
    assert.ok(lines.some((line) => line.level >= 50 && /no grace period/.test(line.msg)));
  });
});

describe('router agent: work in proportion to the change', () => {
  it('tells the data plane which routes changed, and only those', async () => {
    const store = new ScriptedStore();
    const plane = new RecordingDataPlane();
    const applied: Array<{ hosts: string[]; ports: number[] } | undefined> = [];
    const apply = plane.apply.bind(plane);
    plane.apply = async (table, changes) => {
      applied.push(changes && { hosts: [...changes.hosts].sort(), ports: [...changes.ports].sort() });
      await apply(table, changes);
    };
    const agent = new RouterAgent({ store, keys, name: 'edge-1', dataPlane: plane, heartbeatMs: 60_000, storeLossGraceMs: GRACE_MS, log: capturingLogger().log });
    const started = agent.start();
    store.steps.next({ kind: 'reset', index: 2, entries: [entry('a', 20001, 1), entry('b', 20002, 2)] });
    await started;
    try {
      store.steps.next({ kind: 'changes', index: 3, changes: [{ type: 'put', entry: entry('d', 20004, 3) }] });
      await settle();
      applied.length = 0;
      // One step: c added, a moved to another backend, b deleted, and d rewritten with the same routes it had.
      store.steps.next({
        kind: 'changes',
        index: 6,
        changes: [
          { type: 'put', entry: entry('c', 20003, 4) },
          { type: 'put', entry: entry('a', 20001, 5, '127.0.0.1:40001') },
          { type: 'delete', key: key('b'), modifyIndex: 6 },
          { type: 'put', entry: entry('d', 20004, 6) },
        ],
      });
      await settle();
      assert.deepEqual(applied, [{ hosts: [token('a'), token('b'), token('c')].sort(), ports: [20001, 20002, 20003] }]);
      assert.deepEqual([...plane.table.ports].sort(), [
        [20001, '127.0.0.1:40001'],
        [20003, '127.0.0.1:30003'],
        [20004, '127.0.0.1:30004'],
      ]);
      assert.equal(plane.table.hosts.get(token('a')), '127.0.0.1:40001');
      assert.equal(plane.table.hosts.has(token('b')), false);
    } finally {
      await agent.stop();
    }
  });
});

describe('router agent: a record no address can be served from', () => {
  it('is left out, and every other route is still applied', async () => {
    const store = new ScriptedStore();
    const plane = new RecordingDataPlane();
    const agent = new RouterAgent({ store, keys, name: 'edge-1', dataPlane: plane, heartbeatMs: 60_000, storeLossGraceMs: GRACE_MS, log: capturingLogger().log });
    const started = agent.start();
    // Edited by hand: an octet and a port no workload can have. A data plane given them would refuse the whole table.
    store.steps.next({ kind: 'reset', index: 3, entries: [entry('a', 20001, 1), entry('b', 20002, 2, '300.0.0.1:80'), entry('c', 20003, 3, '127.0.0.1:70000')] });
    await started;
    try {
      store.steps.next({ kind: 'changes', index: 4, changes: [{ type: 'put', entry: entry('d', 20004, 4) }] });
      await settle();
      assert.deepEqual([...plane.table.ports.keys()].sort(), [20001, 20004]);
      assert.equal(store.heartbeats.at(-1)?.appliedIndex, 4);
    } finally {
      await agent.stop();
    }
  });
});

describe('router agent: a record that cannot be read', () => {
  it('withdraws its routes and says so once, naming its key and the problem', async () => {
    const store = new ScriptedStore();
    const plane = new RecordingDataPlane();
    const captured = capturingLogger();
    const agent = new RouterAgent({ store, keys, name: 'edge-1', dataPlane: plane, heartbeatMs: 60_000, storeLossGraceMs: GRACE_MS, log: captured.log });
    const started = agent.start();
    store.steps.next({ kind: 'reset', index: 2, entries: [entry('a', 20001, 1), entry('b', 20002, 2)] });
    await started;
    try {
      // Hand-edited: b's record is no longer JSON; a gains a field the schema does not know.
      const unknownField = { ...(JSON.parse(entry('a', 20001, 3).value) as RouteRecord), note: 'x' };
      store.steps.next({
        kind: 'changes',
        index: 4,
        changes: [
          { type: 'put', entry: { key: key('b'), value: '{"sessionId": "sessionb", ', createIndex: 2, modifyIndex: 3 } },
          { type: 'put', entry: { key: key('a'), value: JSON.stringify(unknownField), createIndex: 1, modifyIndex: 4 } },
        ],
      });
      await settle();
      assert.deepEqual([...plane.table.ports.keys()], [], 'neither is served');
      const reported = captured.lines.filter((line) => line.level >= 40 && /unreadable/.test(line.msg));
      assert.deepEqual(
        reported.map((line) => line.key),
        [key('b'), key('a')],
        'each unreadable record is reported by the router that stops serving it',
      );
      assert.match(String(reported[1]!.problem), /unknown field "note"/);
      // The watch resumed from a listing that still holds them as they were: nothing new to say.
      store.steps.next({
        kind: 'reset',
        index: 4,
        entries: [
          { key: key('a'), value: JSON.stringify(unknownField), createIndex: 1, modifyIndex: 4 },
          { key: key('b'), value: '{"sessionId": "sessionb", ', createIndex: 2, modifyIndex: 3 },
        ],
      });
      await settle();
      assert.equal(captured.lines.filter((line) => line.level >= 40 && /unreadable/.test(line.msg)).length, 2, 'said once, not at every watch return');
    } finally {
      await agent.stop();
    }
  });
});

describe('router agent: a data plane that keeps failing', () => {
  it('retries every second, logs an error once a minute rather than every second, withholds its heartbeat and readiness meanwhile, says when it works again, and stops at once', async () => {
    const store = new ScriptedStore();
    const plane = new RecordingDataPlane();
    const clock = FakeTimers.createClock(1_000_000);
    const captured = capturingLogger();
    const agent = new RouterAgent({ store, keys, name: 'edge-1', dataPlane: plane, heartbeatMs: 60_000, storeLossGraceMs: GRACE_MS, log: captured.log, clock: controllerClock(clock) });
    const started = agent.start();
    store.steps.next({ kind: 'reset', index: 1, entries: [entry('a', 20001, 1)] });
    await started;
    let failing = true;
    let attempts = 0;
    const apply = plane.apply.bind(plane);
    plane.apply = async (table, changes) => {
      attempts += 1;
      if (failing) throw new Error('admin socket refused the connection');
      return apply(table, changes);
    };
    try {
      const heartbeatsBefore = store.heartbeats.length;
      assert.equal(agent.serving, true);
      store.steps.next({ kind: 'changes', index: 2, changes: [{ type: 'put', entry: entry('b', 20002, 2) }] });
      await settle();
      for (let second = 0; second < 120; second++) {
        clock.tick(1_000);
        await settle();
      }
      assert.equal(attempts, 121, 'one attempt a second');
      // Not serving what the store says: no heartbeat, so controllers stop waiting for this router once it is stale.
      assert.equal(agent.serving, false);
      assert.equal(store.heartbeats.length, heartbeatsBefore, 'no heartbeat while the data plane refuses the routes');
      const errors = captured.lines.filter((line) => line.level >= 50 && /applying routes failed/.test(line.msg));
      assert.deepEqual(errors.map((line) => line.failures), [1, 61, 121], 'an error on the first failure and then once a minute');
      failing = false;
      clock.tick(1_000);
      await settle();
      assert.deepEqual([...plane.table.ports.keys()].sort(), [20001, 20002]);
      const recovered = captured.lines.filter((line) => /applying routes works again/.test(line.msg));
      assert.deepEqual(recovered.map((line) => line.failures), [121]);
      assert.equal(agent.serving, true);
      await settle();
      assert.equal(store.heartbeats.at(-1)!.appliedIndex, 2, 'the heartbeat is back with the index applied');

      failing = true;
      store.steps.next({ kind: 'changes', index: 3, changes: [{ type: 'delete', key: key('a'), modifyIndex: 3 }] });
      await settle();
      const stopping = agent.stop();
      let stopped = false;
      void stopping.then(() => (stopped = true));
      await settle();
      assert.equal(stopped, true, 'a stop does not wait out the retry pause');
    } finally {
      await agent.stop();
    }
  });
});
