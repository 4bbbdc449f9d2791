import assert from 'node:assert/strict';
import { StoreInformer } from '../../controller/controller/informer.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { silentLogger } from '../../controller/util/log.js';
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
