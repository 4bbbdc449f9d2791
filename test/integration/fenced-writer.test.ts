import assert from 'node:assert/strict';
import { FencedWriter } from '../../controller/controller/fenced-writer.js';
import { ConsulError, ConsulStore } from '../../controller/store/consul-store.js';
import { MAX_TXN_OPS, type KvEntryMeta, type Store, type TxnOperation } from '../../controller/store/store.js';
import { ConsulDouble } from '../fakes/consul.js';
import { testLog } from '../support/controller-harness.js';

describe('FencedWriter (Consul double)', function () {
  this.timeout(20_000);
  let double: ConsulDouble;
  let store: ConsulStore;
  let fence: TxnOperation;

  beforeEach(async () => {
    double = await ConsulDouble.start();
    store = new ConsulStore({ address: double.address, log: testLog });
    const session = await store.createSession({ name: 'leader', ttlSeconds: 10, lockDelaySeconds: 0 });
    assert.equal(await store.acquire('m/leader', 'me', session), true);
    fence = { verb: 'check-session', key: 'm/leader', session };
  });

  afterEach(async () => {
    await store.close();
    await double.stop();
  });

  const transactions = (): number => double.requests.filter((request) => request.path === '/v1/txn').length;

  it('sends the writes of one turn as one fenced transaction', async () => {
    const written: string[] = [];
    const writer = new FencedWriter(store, () => fence, (keys) => written.push(...keys));
    const before = transactions();
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => writer.put(`m/status/s${i}`, `{"n":${i}}`, { cas: 0 })));
    assert.deepEqual(results, Array(20).fill(true));
    assert.equal(transactions() - before, 1);
    assert.equal(written.length, 20);
    assert.equal((await store.get('m/status/s7'))?.value, '{"n":7}');
  });

  it('splits at the operation cap of a transaction', async () => {
    const writer = new FencedWriter(store, () => fence);
    const before = transactions();
    const count = MAX_TXN_OPS * 2;
    const results = await Promise.all(Array.from({ length: count }, (_, i) => writer.put(`m/status/s${i}`, 'v')));
    assert.ok(results.every(Boolean));
    // 63 writes and the fence fill a transaction.
    assert.equal(transactions() - before, Math.ceil(count / (MAX_TXN_OPS - 1)));
    assert.equal((await store.list('m/status/')).entries.length, count);
  });

  it("splits at Consul's size cap of a transaction, so that writes which fit alone are never refused together", async () => {
    const writer = new FencedWriter(store, () => fence);
    const before = transactions();
    // 200 KB each once base64-encoded: two fit in a transaction with the fence, three do not.
    const value = 'v'.repeat(150 * 1024);
    const results = await Promise.all([0, 1, 2].map((i) => writer.put(`m/status/s${i}`, value)));
    assert.deepEqual(results, [true, true, true]);
    const sent = double.requests.filter((request) => request.path === '/v1/txn').slice(before);
    assert.deepEqual(sent.map((request) => request.status), [200, 200]);
  });

  it('gives a lost compare-and-set to its own caller only', async () => {
    const writer = new FencedWriter(store, () => fence);
    await store.put('m/status/taken', 'old');
    const [a, taken, b] = await Promise.all([
      writer.put('m/status/a', 'new', { cas: 0 }),
      writer.put('m/status/taken', 'new', { cas: 0 }),
      writer.put('m/status/b', 'new', { cas: 0 }),
    ]);
    assert.deepEqual([a, taken, b], [true, false, true]);
    assert.equal((await store.get('m/status/taken'))?.value, 'old');
    assert.equal((await store.get('m/status/a'))?.value, 'new');
  });

  it('gives an error to its own caller only', async () => {
    const writer = new FencedWriter(store, () => fence);
    const results = await Promise.allSettled([writer.put('m/status/a', 'x'), writer.put('m/status/../b', 'x'), writer.put('m/status/c', 'x')]);
    assert.deepEqual(results.map((result) => result.status), ['fulfilled', 'rejected', 'fulfilled']);
    assert.match(String((results[1] as PromiseRejectedResult).reason), /path segments/);
  });

  it('gives every member the error of a shared transaction that may have applied, never sending it again', async () => {
    // Consul applied the transaction but its answer was lost (a timeout, a leader lost while committing).
    let lostAnswers = 1;
    const flaky: Store = Object.assign(Object.create(store) as Store, {
      commit: async (operations: readonly TxnOperation[]): Promise<readonly KvEntryMeta[] | undefined> => {
        const puts = await store.commit(operations);
        if (lostAnswers-- > 0) throw new ConsulError('did not answer within 10000 ms', 'transaction', operations[0]!.key, undefined, true);
        return puts;
      },
    });
    const writer = new FencedWriter(flaky, () => fence);
    const before = transactions();
    const results = await Promise.allSettled([writer.put('m/status/a', 'x', { cas: 0 }), writer.put('m/status/b', 'y', { cas: 0 })]);
    // Sent again, each create would fail its compare-and-set on its own write and answer false: a lie.
    assert.deepEqual(results.map((result) => (result.status === 'rejected' ? result.reason instanceof ConsulError : result.value)), [true, true]);
    assert.equal(transactions() - before, 1);
    assert.deepEqual((await store.list('m/status/')).entries.map((entry) => entry.value), ['x', 'y']);
  });

  it('writes nothing once the lease is gone', async () => {
    const writer = new FencedWriter(store, () => fence);
    await store.release('m/leader', fence.verb === 'check-session' ? fence.session : '');
    const results = await Promise.all([writer.put('m/status/a', 'x'), writer.put('m/status/b', 'x')]);
    assert.deepEqual(results, [false, false]);
    assert.equal((await store.list('m/status/')).entries.length, 0);
  });

  it('never shares a transaction between fences', async () => {
    const other = await store.createSession({ name: 'other', ttlSeconds: 10, lockDelaySeconds: 0 });
    const fences = [fence, { verb: 'check-session', key: 'm/leader', session: other } as const];
    let turn = 0;
    const writer = new FencedWriter(store, () => fences[turn++ % 2]);
    const results = await Promise.all([writer.put('m/status/a', 'x'), writer.put('m/status/b', 'x'), writer.put('m/status/c', 'x')]);
    // The other session does not hold the lock: its write fails, the two fenced by the holder apply.
    assert.deepEqual(results, [true, false, true]);
  });

  it('writes unfenced operations on their own, without a lease to hold', async () => {
    const writer = new FencedWriter(store, () => undefined);
    await store.release('m/leader', fence.verb === 'check-session' ? fence.session : '');
    const before = transactions();
    assert.deepEqual(await Promise.all([writer.put('m/status/a', 'x', { cas: 0 }), writer.put('m/status/b', 'x', { cas: 0 })]), [true, true]);
    assert.equal(await writer.delete('m/status/a'), true);
    assert.equal(transactions() - before, 3);
  });

  it("answers each member of a shared transaction with the entries its own puts left, as Consul's results give them", async () => {
    const writer = new FencedWriter(store, () => fence);
    await store.put('m/status/old', 'v1');
    const created = (await store.get('m/status/old'))!;
    const before = transactions();
    const [a, both, removed] = await Promise.all([
      writer.commit([{ verb: 'put', key: 'm/status/a', value: 'x', cas: 0 }]),
      writer.commit([
        { verb: 'put', key: 'm/status/b', value: 'y' },
        { verb: 'put', key: 'm/status/old', value: 'v2', cas: created.modifyIndex },
      ]),
      writer.commit([{ verb: 'delete', key: 'm/status/gone' }]),
    ]);
    assert.equal(transactions() - before, 1);
    const stored = new Map((await store.list('m/status/')).entries.map(({ value: _value, ...meta }) => [meta.key, meta]));
    assert.deepEqual(a, [stored.get('m/status/a')]);
    assert.deepEqual(both, [stored.get('m/status/b'), stored.get('m/status/old')]);
    assert.equal(stored.get('m/status/old')!.createIndex, created.createIndex);
    assert.ok(stored.get('m/status/old')!.modifyIndex > created.modifyIndex);
    assert.deepEqual(removed, []);
    assert.equal(await writer.commit([{ verb: 'put', key: 'm/status/a', value: 'z', cas: 0 }]), undefined, 'a lost compare-and-set');
  });
});
