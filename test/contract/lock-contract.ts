import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { LockService } from '../../controller/store/lock.js';
import { StoreError, type Store } from '../../controller/store/store.js';

/** A store with leases to run the lock contract against; `cleanup` runs once per test, after it. */
export interface LockStoreUnderTest {
  readonly store: Store & LockService;
  /** Also given the prefix the test wrote under, for a shared agent to be cleaned. */
  cleanup(prefix: string): Promise<void>;
}

/** What leader election relies on from a LockService, checked without waiting for any TTL to run out. */
export function describeLockContract(name: string, makeStore: () => Promise<LockStoreUnderTest>): void {
  describe(`Lock contract: ${name}`, function () {
    let sut: LockStoreUnderTest;
    let store: Store & LockService;
    let ns: string;
    const sessions: string[] = [];

    const session = async (lockDelaySeconds = 0): Promise<string> => {
      const id = await store.createSession({ name: 'contract', ttlSeconds: 10, lockDelaySeconds });
      sessions.push(id);
      return id;
    };

    beforeEach(async function () {
      sut = await makeStore();
      store = sut.store;
      ns = `contract-${randomBytes(6).toString('hex')}/`;
    });

    afterEach(async function () {
      for (const id of sessions.splice(0)) await store.destroySession(id);
      await sut.cleanup(ns);
    });

    it('locks a key for one session at a time and shows the holder on the entry', async function () {
      const [a, b] = [await session(), await session()];
      assert.equal(await store.acquire(`${ns}leader`, 'a', a), true);
      assert.equal(await store.acquire(`${ns}leader`, 'b', b), false);
      assert.equal(await store.acquire(`${ns}leader`, 'a again', a), true);
      const entry = (await store.get(`${ns}leader`))!;
      assert.equal(entry.session, a);
      assert.equal(entry.value, 'a again');
      assert.equal((await store.list(ns)).entries[0]!.session, a);
    });

    it('releases only for the holder, after which another session may lock at once', async function () {
      const [a, b] = [await session(5), await session()];
      await store.acquire(`${ns}leader`, 'a', a);
      assert.equal(await store.release(`${ns}leader`, b), false);
      assert.equal(await store.release(`${ns}leader`, a), true);
      assert.equal((await store.get(`${ns}leader`))!.session, undefined);
      assert.equal(await store.acquire(`${ns}leader`, 'b', b), true);
    });

    it('frees the keys of a destroyed session after its lock-delay only', async function () {
      const [delayed, immediate, other] = [await session(30), await session(0), await session()];
      await store.acquire(`${ns}delayed`, 'x', delayed);
      await store.acquire(`${ns}immediate`, 'x', immediate);
      await store.destroySession(delayed);
      await store.destroySession(immediate);
      assert.equal((await store.get(`${ns}delayed`))!.session, undefined);
      assert.equal(await store.acquire(`${ns}delayed`, 'y', other), false);
      assert.equal(await store.acquire(`${ns}immediate`, 'y', other), true);
    });

    it('renews a live session and reports a destroyed one as gone', async function () {
      const a = await session();
      assert.equal(await store.renewSession(a), true);
      await store.destroySession(a);
      assert.equal(await store.renewSession(a), false);
      await store.destroySession(a);
    });

    it('passes a session check only for the holder', async function () {
      const [a, b] = [await session(), await session()];
      await store.acquire(`${ns}leader`, 'a', a);
      const write = (holder: string, value: string): Promise<boolean> =>
        store.transaction([{ verb: 'check-session', key: `${ns}leader`, session: holder }, { verb: 'put', key: `${ns}data`, value }]);
      assert.equal(await write(b, 'b'), false);
      assert.equal(await write(a, 'a'), true);
      await store.release(`${ns}leader`, a);
      assert.equal(await write(a, 'late'), false);
      assert.equal((await store.get(`${ns}data`))!.value, 'a');
    });

    it('refuses TTLs and lock-delays outside the limits with StoreError', async function () {
      await assert.rejects(store.createSession({ name: 'x', ttlSeconds: 9, lockDelaySeconds: 0 }), StoreError);
      await assert.rejects(store.createSession({ name: 'x', ttlSeconds: 86_401, lockDelaySeconds: 0 }), StoreError);
      await assert.rejects(store.createSession({ name: 'x', ttlSeconds: 10, lockDelaySeconds: 61 }), StoreError);
    });
  });
}
