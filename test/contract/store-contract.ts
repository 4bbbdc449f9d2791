import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { Observable, Subscription } from 'rxjs';
import { MAX_TXN_BYTES, MAX_TXN_OPS, StoreError, transactionBytes, type KvChange, type KvEntry, type KvEntryMeta, type Store, type StoreErrorKind, type WatchStep } from '../../controller/store/store.js';

/** A store to run the contract against, and how to dispose of it (called once per test, after the test). */
export interface StoreUnderTest {
  readonly store: Store;
  cleanup(): Promise<void>;
  /**
   * Makes the store fail its next write the way it does of itself, for each kind of failure the test can
   * bring about (none against a real agent): `rejected`, refused whole with nothing applied; `unavailable`,
   * an outcome the caller cannot know.
   */
  readonly faults?: { readonly [kind in StoreErrorKind]?: () => void };
}

/** A StoreError of this kind. */
function storeError(kind: StoreErrorKind, message?: RegExp): (error: unknown) => boolean {
  return (error) => error instanceof StoreError && error.kind === kind && (message === undefined || message.test(error.message));
}

/**
 * Subscribes to a watch and keeps the consumer's view of the prefix (`state`) by applying every step, as a
 * controller cache would. Tests wait on that view with `until`, which is woken by each step rather than by a
 * timer; the timeout only bounds a failure.
 */
export class WatchRecorder {
  readonly steps: WatchStep[] = [];
  readonly state = new Map<string, KvEntry>();
  completed = false;
  error: unknown = undefined;
  private readonly wakers = new Set<() => void>();
  private readonly subscription: Subscription;

  /** `initial` is what the consumer already knew when it asked to resume from an index. */
  constructor(source: Observable<WatchStep>, initial: readonly KvEntry[] = []) {
    for (const entry of initial) this.state.set(entry.key, entry);
    this.subscription = source.subscribe({
      next: (step) => this.apply(step),
      error: (error: unknown) => {
        this.error = error;
        this.wake();
      },
      complete: () => {
        this.completed = true;
        this.wake();
      },
    });
  }

  /** Every change delivered in `changes` steps, in delivery order. */
  changes(): KvChange[] {
    return this.steps.flatMap((step) => (step.kind === 'changes' ? step.changes : []));
  }

  /** The consumer's view as key → value. */
  values(): Record<string, string> {
    return Object.fromEntries([...this.state.values()].map((entry) => [entry.key, entry.value]));
  }

  until(what: string, predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (predicate()) {
          finish();
          resolve();
        } else if (this.error !== undefined) {
          finish();
          reject(new Error(`the watch failed while waiting for ${what}`, { cause: this.error }));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; steps seen: ${describeSteps(this.steps)}`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.wakers.delete(check);
      };
      this.wakers.add(check);
      check();
    });
  }

  stop(): void {
    this.subscription.unsubscribe();
  }

  private apply(step: WatchStep): void {
    this.steps.push(step);
    if (step.kind === 'reset') {
      this.state.clear();
      for (const entry of step.entries) this.state.set(entry.key, entry);
    } else {
      for (const change of step.changes) {
        if (change.type === 'put') this.state.set(change.entry.key, change.entry);
        else this.state.delete(change.key);
      }
    }
    this.wake();
  }

  private wake(): void {
    for (const check of [...this.wakers]) check();
  }
}

function describeSteps(steps: readonly WatchStep[]): string {
  const text = JSON.stringify(steps);
  return text.length > 2_000 ? `${text.slice(0, 2_000)}…` : text;
}

function changeKey(change: KvChange): string {
  return change.type === 'put' ? change.entry.key : change.key;
}

function changeIndex(change: KvChange): number {
  return change.type === 'put' ? change.entry.modifyIndex : change.modifyIndex;
}

function valuesOf(entries: readonly KvEntry[]): Record<string, string> {
  return Object.fromEntries(entries.map((entry) => [entry.key, entry.value]));
}

async function mustGet(store: Store, key: string): Promise<KvEntry> {
  const entry = await store.get(key);
  assert.ok(entry, `expected ${key} to exist`);
  return entry;
}

/**
 * The behaviour every `Store` implementation must show, whatever is behind it (embedded SQLite, a Consul
 * double, a real Consul agent). Only what Consul KV can honour belongs here: a watch may coalesce changes and
 * may answer a resume with a reset, so the watch tests check what the consumer ends up knowing and that
 * nothing is delivered twice or outside its prefix, and space writes out where exact steps matter.
 *
 * Every test works under its own random prefix, so stores that share a keyspace (a real Consul) can run it.
 */
export function describeStoreContract(name: string, makeStore: () => Promise<StoreUnderTest>): void {
  describe(`Store contract: ${name}`, function () {
    let sut: StoreUnderTest;
    let store: Store;
    let ns: string;
    const recorders: WatchRecorder[] = [];

    const record = (source: Observable<WatchStep>, initial?: readonly KvEntry[]): WatchRecorder => {
      const recorder = new WatchRecorder(source, initial);
      recorders.push(recorder);
      return recorder;
    };

    beforeEach(async function () {
      sut = await makeStore();
      store = sut.store;
      ns = `contract-${randomBytes(6).toString('hex')}/`;
    });

    afterEach(async function () {
      for (const recorder of recorders.splice(0)) recorder.stop();
      await sut.cleanup();
    });

    describe('get, put and delete', function () {
      it('returns undefined for a missing key', async function () {
        assert.equal(await store.get(`${ns}missing`), undefined);
      });

      it('stores a value and reads it back with positive, equal create and modify indexes', async function () {
        assert.equal(await store.put(`${ns}a`, 'one'), true);
        const entry = await mustGet(store, `${ns}a`);
        assert.equal(entry.key, `${ns}a`);
        assert.equal(entry.value, 'one');
        assert.ok(entry.createIndex > 0, `createIndex ${entry.createIndex} must be positive`);
        assert.equal(entry.modifyIndex, entry.createIndex);
      });

      it('round-trips empty and non-ASCII values exactly', async function () {
        const values = ['', 'héllo ✓ 🚗 日本', '{"json":[1,2,3]}\n\ttabs and newlines\r\n', 'embedded\0NUL'];
        for (const [i, value] of values.entries()) {
          await store.put(`${ns}v${i}`, value);
          assert.equal((await mustGet(store, `${ns}v${i}`)).value, value);
        }
      });

      it('keeps createIndex and advances modifyIndex on update', async function () {
        await store.put(`${ns}a`, 'one');
        const first = await mustGet(store, `${ns}a`);
        await store.put(`${ns}a`, 'two');
        const second = await mustGet(store, `${ns}a`);
        assert.equal(second.value, 'two');
        assert.equal(second.createIndex, first.createIndex);
        assert.ok(second.modifyIndex > first.modifyIndex);
      });

      it('skips a write that changes nothing, as Consul does: the modifyIndex stays and no watcher hears of it', async function () {
        await store.put(`${ns}a`, 'same');
        const before = await mustGet(store, `${ns}a`);
        const watch = record(store.watch(ns));
        await watch.until('the initial reset', () => watch.steps.length > 0);
        assert.equal(await store.put(`${ns}a`, 'same'), true);
        assert.equal(await store.put(`${ns}a`, 'same', { cas: before.modifyIndex }), true);
        assert.equal(await store.transaction([{ verb: 'put', key: `${ns}a`, value: 'same', cas: before.modifyIndex }]), true);
        assert.deepEqual(await mustGet(store, `${ns}a`), before);
        // A change after the skipped writes is the watch's next step: they woke no one.
        await store.put(`${ns}b`, 'next');
        await watch.until('the next change', () => watch.values()[`${ns}b`] === 'next');
        assert.deepEqual(watch.changes().map(changeKey), [`${ns}b`]);
      });

      it('deletes a key, and deleting a missing key succeeds', async function () {
        await store.put(`${ns}a`, 'one');
        assert.equal(await store.delete(`${ns}a`), true);
        assert.equal(await store.get(`${ns}a`), undefined);
        assert.equal(await store.delete(`${ns}a`), true);
        assert.equal(await store.delete(`${ns}never-existed`), true);
      });

      it('advances the index strictly on every write, deletes included', async function () {
        const start = (await store.list(ns)).index;
        assert.ok(start >= 1, `the index of an empty prefix is ${start}; it must be at least 1`);
        await store.put(`${ns}a`, '1');
        const a = await mustGet(store, `${ns}a`);
        assert.ok(a.modifyIndex > 0);
        await store.put(`${ns}b`, '2');
        const b = await mustGet(store, `${ns}b`);
        assert.ok(b.modifyIndex > a.modifyIndex);
        await store.put(`${ns}a`, '3');
        const a2 = await mustGet(store, `${ns}a`);
        assert.ok(a2.modifyIndex > b.modifyIndex);
        const beforeDelete = (await store.list(ns)).index;
        await store.delete(`${ns}b`);
        const afterDelete = (await store.list(ns)).index;
        assert.ok(afterDelete > beforeDelete, `a delete must advance the index (${beforeDelete} → ${afterDelete})`);
        await store.put(`${ns}c`, '4');
        const c = await mustGet(store, `${ns}c`);
        assert.ok(c.modifyIndex > afterDelete);
      });

      it('rejects malformed keys and oversized values with StoreError, and accepts the limits', async function () {
        await assert.rejects(store.put('', 'x'), StoreError);
        await assert.rejects(store.put(`/${ns}a`, 'x'), StoreError);
        await assert.rejects(store.get(`/${ns}a`), StoreError);
        await assert.rejects(store.delete(''), StoreError);
        const longestKey = ns + 'k'.repeat(512 - Buffer.byteLength(ns));
        assert.equal(await store.put(longestKey, 'x'), true);
        await assert.rejects(store.put(`${longestKey}k`, 'x'), StoreError);
        const largestValue = 'v'.repeat(512 * 1024);
        assert.equal(await store.put(`${ns}big`, largestValue), true);
        assert.equal((await mustGet(store, `${ns}big`)).value.length, largestValue.length);
        await assert.rejects(store.put(`${ns}big`, `${largestValue}v`), StoreError);
        await assert.rejects(store.put(`${ns}big`, 'é'.repeat(256 * 1024 + 1)), StoreError, 'the cap is in UTF-8 bytes');
        assert.equal((await mustGet(store, `${ns}big`)).value, largestValue);
      });

      it("refuses keys Consul's HTTP API cannot address, so that a key the embedded store takes works on Consul too", async function () {
        for (const key of [`${ns}a//b`, `${ns}./b`, `${ns}a/..`, `${ns}tab\tkey`, `${ns}line\nbreak`]) {
          await assert.rejects(store.put(key, 'x'), StoreError, JSON.stringify(key));
          await assert.rejects(store.transaction([{ verb: 'delete', key }]), StoreError, JSON.stringify(key));
        }
        await assert.rejects(store.list(`${ns}x//`), StoreError);
        assert.deepEqual((await store.list(ns)).entries, []);
        assert.equal(await store.put(`${ns}a/b/`, 'a trailing slash is fine'), true);
      });
    });

    describe('compare-and-set', function () {
      it('creates with cas 0 only when the key does not exist', async function () {
        assert.equal(await store.put(`${ns}a`, 'first', { cas: 0 }), true);
        assert.equal(await store.put(`${ns}a`, 'second', { cas: 0 }), false);
        assert.equal((await mustGet(store, `${ns}a`)).value, 'first');
      });

      it('updates only with the current modifyIndex', async function () {
        await store.put(`${ns}a`, 'one');
        const first = await mustGet(store, `${ns}a`);
        await store.put(`${ns}a`, 'two');
        const second = await mustGet(store, `${ns}a`);
        assert.equal(await store.put(`${ns}a`, 'stale', { cas: first.modifyIndex }), false);
        assert.deepEqual(await mustGet(store, `${ns}a`), second, 'a failed CAS must change nothing');
        assert.equal(await store.put(`${ns}a`, 'three', { cas: second.modifyIndex }), true);
        const third = await mustGet(store, `${ns}a`);
        assert.equal(third.value, 'three');
        assert.equal(third.createIndex, first.createIndex);
        assert.ok(third.modifyIndex > second.modifyIndex);
      });

      it('fails a non-zero cas on a missing key', async function () {
        await store.put(`${ns}other`, 'x');
        const index = (await mustGet(store, `${ns}other`)).modifyIndex;
        assert.equal(await store.put(`${ns}missing`, 'x', { cas: index }), false);
        assert.equal(await store.get(`${ns}missing`), undefined);
      });

      it('deletes only with the current modifyIndex', async function () {
        await store.put(`${ns}a`, 'one');
        const first = await mustGet(store, `${ns}a`);
        await store.put(`${ns}a`, 'two');
        const second = await mustGet(store, `${ns}a`);
        assert.equal(await store.delete(`${ns}a`, { cas: first.modifyIndex }), false);
        assert.deepEqual(await mustGet(store, `${ns}a`), second);
        assert.equal(await store.delete(`${ns}a`, { cas: 0 }), false, 'cas 0 never deletes an existing key');
        assert.equal(await store.delete(`${ns}a`, { cas: second.modifyIndex }), true);
        assert.equal(await store.get(`${ns}a`), undefined);
      });

      it('lets exactly one of several concurrent CAS updates win', async function () {
        await store.put(`${ns}a`, 'initial');
        const base = await mustGet(store, `${ns}a`);
        const writers = Array.from({ length: 8 }, (_, i) => `writer-${i}`);
        const results = await Promise.all(writers.map((w) => store.put(`${ns}a`, w, { cas: base.modifyIndex })));
        assert.equal(results.filter(Boolean).length, 1, `results: ${results.join(', ')}`);
        assert.equal((await mustGet(store, `${ns}a`)).value, writers[results.indexOf(true)]);
      });

      it('lets exactly one of several concurrent creates (cas 0) win', async function () {
        const writers = Array.from({ length: 8 }, (_, i) => `writer-${i}`);
        const results = await Promise.all(writers.map((w) => store.put(`${ns}new`, w, { cas: 0 })));
        assert.equal(results.filter(Boolean).length, 1, `results: ${results.join(', ')}`);
        assert.equal((await mustGet(store, `${ns}new`)).value, writers[results.indexOf(true)]);
      });

      it('lets exactly one of several concurrent CAS deletes and updates win', async function () {
        await store.put(`${ns}a`, 'initial');
        const base = await mustGet(store, `${ns}a`);
        const results = await Promise.all([
          store.delete(`${ns}a`, { cas: base.modifyIndex }),
          store.put(`${ns}a`, 'updated', { cas: base.modifyIndex }),
          store.delete(`${ns}a`, { cas: base.modifyIndex }),
          store.put(`${ns}a`, 'updated', { cas: base.modifyIndex }),
        ]);
        // Once a delete has won, a later delete finds no key; whether it reports success is not part of the
        // contract, so only the winner and the losing updates are checked on that side.
        const entry = await store.get(`${ns}a`);
        if (entry === undefined) {
          assert.ok(results[0] || results[2], `results: ${results.join(', ')}`);
          assert.equal(results[1] || results[3], false, 'no update may apply after the delete won');
        } else {
          assert.equal(entry.value, 'updated');
          assert.equal(results.filter(Boolean).length, 1, `results: ${results.join(', ')}`);
        }
      });
    });

    describe('transaction', function () {
      it('applies puts and deletes together', async function () {
        await store.put(`${ns}old`, 'x');
        const old = await mustGet(store, `${ns}old`);
        assert.equal(
          await store.transaction([
            { verb: 'put', key: `${ns}a`, value: '1', cas: 0 },
            { verb: 'put', key: `${ns}b`, value: '2' },
            { verb: 'delete', key: `${ns}old`, cas: old.modifyIndex },
          ]),
          true,
        );
        assert.equal((await mustGet(store, `${ns}a`)).value, '1');
        assert.equal((await mustGet(store, `${ns}b`)).value, '2');
        assert.equal(await store.get(`${ns}old`), undefined);
      });

      it('writes nothing when one compare-and-set fails', async function () {
        await store.put(`${ns}taken`, 'x');
        const before = await store.list(ns);
        assert.equal(
          await store.transaction([
            { verb: 'put', key: `${ns}fresh`, value: '1' },
            { verb: 'put', key: `${ns}taken`, value: '2', cas: 0 },
          ]),
          false,
        );
        assert.equal(await store.get(`${ns}fresh`), undefined);
        assert.deepEqual((await store.list(ns)).entries, before.entries);
      });

      it('fails a session check on a key no session holds, writing nothing, and reports no holder', async function () {
        await store.put(`${ns}leader`, 'x');
        const session = '00000000-0000-4000-8000-000000000000';
        const fenced = [{ verb: 'check-session', key: `${ns}leader`, session } as const, { verb: 'put', key: `${ns}fenced`, value: '1' } as const];
        assert.equal(await store.transaction(fenced), false);
        assert.equal(await store.transaction([{ ...fenced[0], key: `${ns}missing` }, fenced[1]]), false);
        assert.equal(await store.get(`${ns}fenced`), undefined);
        assert.equal((await store.get(`${ns}leader`))!.session, undefined);
        await assert.rejects(store.transaction([{ verb: 'check-session', key: `${ns}leader`, session: '' }]), StoreError);
      });

      it('answers a committed transaction with the entry each put left, as a read then shows it, and a failed one with nothing', async function () {
        await store.put(`${ns}kept`, 'same');
        await store.put(`${ns}changed`, 'old');
        await store.put(`${ns}removed`, 'x');
        const changed = (await store.get(`${ns}changed`))!;
        const puts = await store.commit([
          { verb: 'put', key: `${ns}created`, value: 'new', cas: 0 },
          { verb: 'delete', key: `${ns}removed` },
          { verb: 'put', key: `${ns}changed`, value: 'new', cas: changed.modifyIndex },
          { verb: 'check-index', key: `${ns}kept`, index: (await store.get(`${ns}kept`))!.modifyIndex },
          { verb: 'put', key: `${ns}kept`, value: 'same' },
        ]);
        const read = async (key: string): Promise<KvEntryMeta> => {
          const { value: _value, ...meta } = (await store.get(key))!;
          return meta;
        };
        assert.deepEqual(puts, [await read(`${ns}created`), await read(`${ns}changed`), await read(`${ns}kept`)]);
        assert.equal(puts![1]!.createIndex, changed.createIndex);
        assert.ok(puts![1]!.modifyIndex > changed.modifyIndex);
        assert.equal(await store.commit([{ verb: 'put', key: `${ns}created`, value: 'again', cas: 0 }]), undefined);
        assert.equal((await store.get(`${ns}created`))!.value, 'new');
      });

      it('applies a transaction only while an index check holds: the key at that modify index, or absent for 0', async function () {
        await store.put(`${ns}watched`, 'a');
        const index = (await store.get(`${ns}watched`))!.modifyIndex;
        const write = { verb: 'put', key: `${ns}written`, value: '1' } as const;
        assert.equal(await store.transaction([{ verb: 'check-index', key: `${ns}watched`, index: index + 1 }, write]), false, 'another index');
        assert.equal(await store.transaction([{ verb: 'check-index', key: `${ns}watched`, index: 0 }, write]), false, 'present, checked as absent');
        assert.equal(await store.transaction([{ verb: 'check-index', key: `${ns}missing`, index }, write]), false, 'absent, checked at an index');
        assert.equal(await store.get(`${ns}written`), undefined);
        assert.equal(await store.transaction([{ verb: 'check-index', key: `${ns}missing`, index: 0 }, write]), true);
        assert.equal(await store.transaction([{ verb: 'check-index', key: `${ns}watched`, index }, { ...write, value: '2' }]), true);
        assert.equal((await store.get(`${ns}written`))!.value, '2');
        assert.equal((await store.get(`${ns}watched`))!.modifyIndex, index, 'a check writes nothing');
        await assert.rejects(store.transaction([{ verb: 'check-index', key: `${ns}watched`, index: -1 }]), StoreError);
      });

      it('refuses more operations than Consul allows, writing nothing', async function () {
        const operations = Array.from({ length: MAX_TXN_OPS + 1 }, (_, i) => ({ verb: 'put' as const, key: `${ns}k${i}`, value: 'v' }));
        await assert.rejects(store.transaction(operations), storeError('rejected', /at most 64/));
        assert.equal((await store.list(ns)).entries.length, 0);
        assert.equal(await store.transaction(operations.slice(0, MAX_TXN_OPS)), true);
        assert.equal((await store.list(ns)).entries.length, MAX_TXN_OPS);
      });

      it("refuses a transaction larger than Consul's request limit (values counted base64-encoded), writing nothing", async function () {
        // Each value is within the value limit; together, encoded, they are past the transaction's.
        const third = 'v'.repeat(150 * 1024);
        const operations = [0, 1, 2].map((i) => ({ verb: 'put' as const, key: `${ns}k${i}`, value: third }));
        await assert.rejects(store.transaction(operations), storeError('rejected', /at most 524288 bytes/));
        assert.equal((await store.list(ns)).entries.length, 0);
        // Exactly at the limit applies (a real Consul counts the same bytes).
        const room = (key: string): number => MAX_TXN_BYTES - transactionBytes([...operations.slice(0, 2), { verb: 'put', key, value: '' }]);
        // base64 comes in fours: the key takes up the rest.
        const key = `${ns}k2${'x'.repeat(room(`${ns}k2`) % 4)}`;
        const last = { verb: 'put' as const, key, value: 'v'.repeat((room(key) / 4) * 3) };
        assert.equal(transactionBytes([...operations.slice(0, 2), last]), MAX_TXN_BYTES);
        assert.equal(await store.transaction([...operations.slice(0, 2), last]), true);
        assert.equal((await store.list(ns)).entries.length, 3);
      });

      // What a caller may do next depends on it: parts of a transaction refused whole may be sent again, each
      // on its own; those of one that may have applied may not (a compare-and-set would fail on its own write).
      it('says that a transaction it refused as a whole wrote nothing: a StoreError of kind rejected', async function () {
        const refuse = sut.faults?.rejected;
        if (refuse === undefined) this.skip();
        // Large enough that a store which refuses for want of room has to find some.
        const value = 'v'.repeat(100 * 1024);
        refuse();
        await assert.rejects(
          store.transaction([
            { verb: 'put', key: `${ns}a`, value, cas: 0 },
            { verb: 'put', key: `${ns}b`, value },
          ]),
          storeError('rejected'),
        );
        assert.equal((await store.list(ns)).entries.length, 0);
      });

      it('says that a write whose outcome it cannot confirm may have applied: a StoreError of kind unavailable', async function () {
        const fail = sut.faults?.unavailable;
        if (fail === undefined) this.skip();
        fail();
        await assert.rejects(store.transaction([{ verb: 'put', key: `${ns}a`, value: '1' }]), storeError('unavailable'));
      });

      it('shows a watcher every change it made', async function () {
        const watcher = record(store.watch(ns));
        await watcher.until('the initial reset', () => watcher.steps.length > 0);
        await store.transaction([
          { verb: 'put', key: `${ns}x`, value: '1' },
          { verb: 'put', key: `${ns}y`, value: '2' },
        ]);
        await watcher.until('both keys', () => watcher.values()[`${ns}x`] === '1' && watcher.values()[`${ns}y`] === '2');
      });
    });

    describe('list', function () {
      it('lists exactly the keys under the prefix, in key order, with an index covering them', async function () {
        for (const key of ['a/2', 'a/1', 'a/sub/3', 'ab', 'a', 'b/1']) await store.put(`${ns}${key}`, key);
        const listing = await store.list(`${ns}a/`);
        assert.deepEqual(
          listing.entries.map((entry) => entry.key),
          [`${ns}a/1`, `${ns}a/2`, `${ns}a/sub/3`],
          "'a/' must not list 'a' or 'ab'",
        );
        assert.deepEqual(
          listing.entries.map((entry) => entry.value),
          ['a/1', 'a/2', 'a/sub/3'],
        );
        for (const entry of listing.entries) {
          assert.ok(listing.index >= entry.modifyIndex, `listing index ${listing.index} < ${entry.modifyIndex}`);
          assert.deepEqual(entry, await store.get(entry.key));
        }
        const all = await store.list(ns);
        assert.equal(all.entries.length, 6);
      });

      it('lists nothing, with a valid index, for a prefix that has no keys', async function () {
        await store.put(`${ns}ab`, 'x');
        const listing = await store.list(`${ns}a/`);
        assert.deepEqual(listing.entries, []);
        assert.ok(listing.index >= 1);
      });

      it('reflects deletes', async function () {
        await store.put(`${ns}x/1`, '1');
        await store.put(`${ns}x/2`, '2');
        await store.delete(`${ns}x/1`);
        assert.deepEqual(valuesOf((await store.list(`${ns}x/`)).entries), { [`${ns}x/2`]: '2' });
      });
    });

    describe('prefixIndex', function () {
      /** The index of the last step a watch delivered (0 before its first). */
      const reached = (recorder: WatchRecorder): number => recorder.steps.at(-1)?.index ?? 0;

      it('reads where a prefix stands without its values: a watch of the prefix that reaches its index has every earlier change', async function () {
        const watch = record(store.watch(`${ns}p/`));
        await watch.until('reset', () => watch.steps.length > 0);
        await store.put(`${ns}p/a`, '1');
        await store.put(`${ns}p/b`, '2');
        await store.delete(`${ns}p/a`);
        await store.put(`${ns}pq`, 'beside the prefix');
        const read = await store.prefixIndex(`${ns}p/`);
        assert.equal(read.keys, 1);
        assert.ok(read.index >= (await mustGet(store, `${ns}p/b`)).modifyIndex);
        await watch.until('the index reached', () => reached(watch) >= read.index);
        assert.deepEqual(watch.values(), { [`${ns}p/b`]: '2' });
      });

      it('moves with a delete under the prefix, not with a write beside it', async function () {
        await store.put(`${ns}p/a`, '1');
        await store.put(`${ns}p/b`, '2');
        const before = await store.prefixIndex(`${ns}p/`);
        assert.equal(before.keys, 2);
        await store.put(`${ns}pq`, 'beside the prefix');
        assert.equal((await store.prefixIndex(`${ns}p/`)).index, before.index);
        await store.delete(`${ns}p/a`);
        const after = await store.prefixIndex(`${ns}p/`);
        assert.ok(after.index > before.index, `the delete left the index at ${after.index}`);
        assert.equal(after.keys, 1);
      });

      it('says that a prefix holds no keys', async function () {
        await store.put(`${ns}pq`, 'beside the prefix');
        const read = await store.prefixIndex(`${ns}p/`);
        assert.equal(read.keys, 0);
        assert.ok(read.index >= 1);
      });
    });

    describe('watch', function () {
      it('starts with a reset of the prefix, then delivers each put, update and delete once', async function () {
        const prefix = `${ns}w/`;
        await store.put(`${prefix}a`, 'a1');
        await store.put(`${ns}wx`, 'outside');
        const a = await mustGet(store, `${prefix}a`);
        const watch = record(store.watch(prefix));
        await watch.until('the initial reset', () => watch.steps.length > 0);
        const first = watch.steps[0];
        assert.equal(first.kind, 'reset');
        assert.deepEqual(first.kind === 'reset' ? first.entries : [], [a]);
        assert.ok(first.index >= a.modifyIndex);

        await store.put(`${prefix}b`, 'b1');
        await watch.until('b created', () => watch.state.get(`${prefix}b`)?.value === 'b1');
        const b1 = await mustGet(store, `${prefix}b`);
        await store.put(`${prefix}b`, 'b2');
        await watch.until('b updated', () => watch.state.get(`${prefix}b`)?.value === 'b2');
        const b2 = await mustGet(store, `${prefix}b`);
        await store.put(`${ns}wx`, 'outside again');
        await store.delete(`${prefix}a`);
        await watch.until('a deleted', () => !watch.state.has(`${prefix}a`));
        assert.deepEqual(watch.values(), { [`${prefix}b`]: 'b2' });

        const changes = watch.changes();
        const puts = changes.filter((c): c is Extract<KvChange, { type: 'put' }> => c.type === 'put');
        assert.deepEqual(
          puts.map((c) => c.entry),
          [b1, b2],
          'each put delivered exactly once, with its indexes',
        );
        assert.equal(b2.createIndex, b1.createIndex);
        const deletes = changes.filter((c) => c.type === 'delete');
        assert.equal(deletes.length, 1);
        assert.equal(changeKey(deletes[0]), `${prefix}a`);
        assert.ok(changeIndex(deletes[0]) > b2.modifyIndex);
        assert.ok(changes.every((c) => changeKey(c).startsWith(prefix)), 'nothing outside the prefix');
        assert.equal(watch.steps.filter((s) => s.kind === 'reset').length, 1);
        for (let i = 1; i < watch.steps.length; i++) {
          assert.ok(watch.steps[i].index >= watch.steps[i - 1].index, 'step indexes never go back');
        }
        for (const step of watch.steps) {
          if (step.kind === 'changes') assert.ok(step.changes.every((c) => changeIndex(c) <= step.index));
        }
      });

      it('resumes from an index with exactly what was missed', async function () {
        const prefix = `${ns}w/`;
        await store.put(`${prefix}keep`, 'k');
        await store.put(`${prefix}gone`, 'g');
        await store.put(`${prefix}changed`, 'c1');
        const known = await store.list(prefix);

        await store.put(`${prefix}changed`, 'c2');
        await store.delete(`${prefix}gone`);
        await store.put(`${prefix}new`, 'n');
        await store.put(`${ns}outside`, 'o');
        const expected = await store.list(prefix);

        const watch = record(store.watch(prefix, known.index), known.entries);
        await watch.until('the missed changes', () => sameEntries([...watch.state.values()], expected.entries));
        for (const step of watch.steps) {
          if (step.kind !== 'changes') continue;
          for (const change of step.changes) {
            assert.ok(changeIndex(change) > known.index, `${JSON.stringify(change)} was already known`);
            assert.ok(changeKey(change).startsWith(prefix), `${JSON.stringify(change)} is outside the prefix`);
          }
        }
        const delivered = watch.changes().map((c) => `${c.type} ${changeKey(c)} ${changeIndex(c)}`);
        assert.equal(new Set(delivered).size, delivered.length, `a change was delivered twice: ${delivered.join('; ')}`);

        await store.put(`${prefix}live`, 'l');
        await watch.until('a live change after catching up', () => watch.state.has(`${prefix}live`));
      });

      it('keeps watchers on different prefixes apart', async function () {
        const one = record(store.watch(`${ns}one/`));
        const two = record(store.watch(`${ns}two/`));
        await one.until('reset', () => one.steps.length > 0);
        await two.until('reset', () => two.steps.length > 0);
        await store.put(`${ns}one/a`, '1');
        await store.put(`${ns}two/b`, '2');
        await store.put(`${ns}one/c`, '3');
        await store.delete(`${ns}two/b`);
        await store.put(`${ns}two/d`, '4');
        await one.until('one converged', () => one.state.size === 2);
        await two.until('two converged', () => two.state.has(`${ns}two/d`) && !two.state.has(`${ns}two/b`));
        assert.deepEqual(one.values(), { [`${ns}one/a`]: '1', [`${ns}one/c`]: '3' });
        assert.deepEqual(two.values(), { [`${ns}two/d`]: '4' });
        assert.ok(one.changes().every((c) => changeKey(c).startsWith(`${ns}one/`)));
        assert.ok(two.changes().every((c) => changeKey(c).startsWith(`${ns}two/`)));
      });

      it('stops delivering after unsubscribe', async function () {
        const stopped = record(store.watch(`${ns}u/`));
        const running = record(store.watch(`${ns}u/`));
        await stopped.until('reset', () => stopped.steps.length > 0);
        await running.until('reset', () => running.steps.length > 0);
        stopped.stop();
        await store.put(`${ns}u/1`, '1');
        await running.until('the first put', () => running.state.has(`${ns}u/1`));
        await store.put(`${ns}u/2`, '2');
        await running.until('the second put', () => running.state.has(`${ns}u/2`));
        assert.equal(stopped.steps.length, 1, `steps after unsubscribe: ${describeSteps(stopped.steps.slice(1))}`);
        assert.equal(stopped.completed, false);
      });

      it('completes watches on close; later calls reject with StoreError; closing again is harmless', async function () {
        const watch = record(store.watch(`${ns}c/`));
        await watch.until('reset', () => watch.steps.length > 0);
        await store.close();
        await watch.until('completion', () => watch.completed);
        await assert.rejects(store.get(`${ns}c/a`), StoreError);
        await assert.rejects(store.put(`${ns}c/a`, 'x'), storeError('rejected'));
        await assert.rejects(store.transaction([{ verb: 'put', key: `${ns}c/a`, value: 'x' }]), storeError('rejected'));
        await assert.rejects(store.delete(`${ns}c/a`), StoreError);
        await assert.rejects(store.list(`${ns}c/`), StoreError);
        await assert.rejects(store.prefixIndex(`${ns}c/`), StoreError);
        const late = record(store.watch(`${ns}c/`));
        await late.until('an error', () => late.error !== undefined);
        assert.ok(late.error instanceof StoreError);
        await store.close();
      });
    });
  });
}

/** Same keys with the same values and indexes, whatever the order or the objects' shape. */
function sameEntries(actual: readonly KvEntry[], expected: readonly KvEntry[]): boolean {
  const canonical = (entries: readonly KvEntry[]): string =>
    JSON.stringify(
      entries
        .map((e) => [e.key, e.value, e.createIndex, e.modifyIndex] as const)
        .sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0]))),
    );
  return canonical(actual) === canonical(expected);
}
