import assert from 'node:assert/strict';
import { Subject } from 'rxjs';
import { StoreInformer } from '../../controller/controller/informer.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import type { KvEntry, KvEntryMeta, Store, WatchStep } from '../../controller/store/store.js';
import { silentLogger } from '../../controller/util/log.js';
import { delegatingStore } from '../support/controller-harness.js';
import { waitFor } from '../support/wait.js';

describe('StoreInformer', () => {
  let store: EmbeddedStore;
  let informer: StoreInformer<{ n: number }>;
  let decoded: string[];

  beforeEach(async () => {
    store = EmbeddedStore.open(':memory:');
    decoded = [];
    informer = new StoreInformer(store, 'p/', (json) => {
      decoded.push(json);
      return JSON.parse(json) as { n: number };
    }, silentLogger());
    informer.start();
    await informer.synced;
  });
  afterEach(async () => {
    informer.stop();
    await store.close();
  });

  it('caches a value this process said it is writing as given, without decoding it again, and marks it an echo', async () => {
    const echoes: boolean[] = [];
    informer.cache.changes.subscribe((change) => echoes.push(change.echo === true));
    const value = { n: 1 };
    informer.cache.writing('a', '{"n":1}', value);
    await store.put('p/a', '{"n":1}');
    await waitFor('the cache to show the write', () => informer.cache.get('a') !== undefined);
    assert.equal(informer.cache.get('a')?.value, value);
    assert.deepEqual(decoded, []);

    // Only that one entry: a later one under the id with the same text is decoded, and is no echo (the
    // store skips rewriting the current value, as Consul does, so another value comes between).
    await store.put('p/a', '{"n":2}');
    await store.put('p/a', '{"n":1}');
    await waitFor('the later writes', () => decoded.length === 2);
    assert.deepEqual(decoded, ['{"n":2}', '{"n":1}']);
    assert.notEqual(informer.cache.get('a')?.value, value);
    assert.deepEqual(echoes, [true, false, false]);
  });

  it('decodes an entry whose text differs from what this process said it is writing, as no echo', async () => {
    const echoes: boolean[] = [];
    informer.cache.changes.subscribe((change) => echoes.push(change.echo === true));
    informer.cache.writing('a', '{"n":1}', { n: 1 });
    await store.put('p/a', '{"n":2}');
    await waitFor('the cache to show the write', () => informer.cache.get('a') !== undefined);
    assert.deepEqual(informer.cache.get('a')?.value, { n: 2 });
    assert.deepEqual(decoded, ['{"n":2}']);
    assert.deepEqual(echoes, [false]);
  });

  it('decodes the entry of a write that failed', async () => {
    informer.cache.writing('a', '{"n":1}', { n: 1 });
    informer.cache.writeFailed('a', '{"n":1}');
    await store.put('p/a', '{"n":1}');
    await waitFor('the cache to show the write', () => informer.cache.get('a') !== undefined);
    assert.deepEqual(decoded, ['{"n":1}']);
  });
});

describe('StoreInformer: writes shown when committed, ahead of the watch', () => {
  let steps: Subject<WatchStep>;
  let backing: EmbeddedStore;
  let informer: StoreInformer<{ n: number }>;
  let decoded: string[];
  let changes: Array<{ id: string; n: number | undefined; echo: boolean }>;

  const entry = (id: string, index: number, n: number): KvEntry => ({ key: `p/${id}`, value: JSON.stringify({ n }), createIndex: index, modifyIndex: index });
  const meta = (id: string, index: number): KvEntryMeta => ({ key: `p/${id}`, createIndex: index, modifyIndex: index });
  const commit = (id: string, index: number, n: number): void => {
    const json = JSON.stringify({ n });
    informer.cache.writing(id, json, { n });
    informer.cache.committed(id, meta(id, index), json, { n });
  };
  const shown = (id: string): [number, number] | undefined => {
    const cached = informer.cache.get(id);
    return cached && [cached.entry.modifyIndex, cached.value!.n];
  };

  beforeEach(async () => {
    steps = new Subject<WatchStep>();
    backing = EmbeddedStore.open(':memory:');
    const store: Store = { ...delegatingStore(backing), watch: () => steps };
    decoded = [];
    changes = [];
    informer = new StoreInformer(store, 'p/', (json) => {
      decoded.push(json);
      return JSON.parse(json) as { n: number };
    }, silentLogger());
    informer.cache.changes.subscribe((change) => changes.push({ id: change.id, n: change.current?.value?.n, echo: change.echo === true }));
    informer.start();
    steps.next({ kind: 'reset', index: 5, entries: [entry('a', 3, 1)] });
    await informer.synced;
    decoded = [];
    changes = [];
  });
  afterEach(async () => {
    informer.stop();
    await backing.close();
  });

  it('shows the write at once, as an echo, and takes nothing older from the watch for its key', () => {
    commit('a', 10, 2);
    assert.deepEqual(shown('a'), [10, 2]);
    assert.deepEqual(changes, [{ id: 'a', n: 2, echo: true }]);
    assert.equal(informer.cache.writePending('a'), false);
    // A listing taken before the write, answered after it.
    steps.next({ kind: 'changes', index: 8, changes: [{ type: 'put', entry: entry('a', 8, 9) }, { type: 'put', entry: entry('b', 7, 1) }] });
    assert.deepEqual(shown('a'), [10, 2]);
    assert.deepEqual(shown('b'), [7, 1]);
    // The write come back: nothing changes, nothing is decoded.
    const cached = informer.cache.get('a');
    steps.next({ kind: 'changes', index: 10, changes: [{ type: 'put', entry: entry('a', 10, 2) }] });
    assert.equal(informer.cache.get('a'), cached);
    assert.deepEqual(decoded, ['{"n":1}']);
    assert.deepEqual(changes.map((change) => change.id), ['a', 'b']);
  });

  it('takes what the watch shows past the write: a later write by someone else, or its deletion', () => {
    commit('a', 10, 2);
    commit('b', 11, 1);
    steps.next({ kind: 'changes', index: 13, changes: [{ type: 'put', entry: entry('a', 12, 5) }, { type: 'delete', key: 'p/b', modifyIndex: 13 }] });
    assert.deepEqual(shown('a'), [12, 5]);
    assert.equal(informer.cache.get('b'), undefined);
  });

  it('drops a new key the watch, past its write, does not show: deleted before the watch could see it', () => {
    commit('new', 10, 1);
    steps.next({ kind: 'changes', index: 9, changes: [{ type: 'put', entry: entry('c', 9, 1) }] });
    assert.deepEqual(shown('new'), [10, 1], 'a listing older than the write');
    steps.next({ kind: 'changes', index: 12, changes: [{ type: 'put', entry: entry('c', 12, 2) }] });
    assert.equal(informer.cache.get('new'), undefined);
    assert.deepEqual(changes.at(-1), { id: 'new', n: undefined, echo: false });
  });

  it('keeps the write over a reset older than it, and takes a reset past it as it is', () => {
    commit('a', 10, 2);
    steps.next({ kind: 'reset', index: 8, entries: [entry('a', 3, 1)] });
    assert.deepEqual(shown('a'), [10, 2]);
    steps.next({ kind: 'reset', index: 11, entries: [] });
    assert.equal(informer.cache.get('a'), undefined);
  });

  it('takes a rewound store as it is, the write included', () => {
    steps.next({ kind: 'changes', index: 20, changes: [] });
    commit('a', 30, 2);
    steps.next({ kind: 'reset', index: 4, entries: [entry('a', 3, 1)] });
    assert.deepEqual(shown('a'), [3, 1]);
  });

  it('shows nothing the watch has already shown, or gone past', () => {
    steps.next({ kind: 'changes', index: 12, changes: [{ type: 'put', entry: entry('a', 12, 5) }] });
    changes = [];
    commit('a', 10, 2);
    commit('b', 11, 1);
    assert.deepEqual(shown('a'), [12, 5]);
    assert.equal(informer.cache.get('b'), undefined);
    assert.deepEqual(changes, []);
  });
});
