import assert from 'node:assert/strict';
import { EMPTY, type Observable } from 'rxjs';
import { FencedWriter } from '../../controller/controller/fenced-writer.js';
import { StoreError, type KvEntryMeta, type KvListing, type PrefixIndex, type Store, type StoreErrorKind, type TxnOperation, type WatchStep } from '../../controller/store/store.js';

const fence: TxnOperation = { verb: 'check-session', key: 'm/leader', session: 'lease-1' };

/** A store whose first transaction fails with a StoreError of the given kind, as either backend reports it; later ones apply. */
class RefusingStore implements Store {
  readonly transactions: Array<readonly TxnOperation[]> = [];

  constructor(private readonly firstFailure: StoreErrorKind) {}

  async commit(operations: readonly TxnOperation[]): Promise<readonly KvEntryMeta[]> {
    this.transactions.push(operations);
    if (this.transactions.length === 1) throw new StoreError('refused', 'transaction', operations[0]!.key, { kind: this.firstFailure });
    return [];
  }

  async transaction(operations: readonly TxnOperation[]): Promise<boolean> {
    return (await this.commit(operations)) !== undefined;
  }

  get = async (): Promise<undefined> => undefined;
  list = async (): Promise<KvListing> => ({ entries: [], index: 1 });
  prefixIndex = async (): Promise<PrefixIndex> => ({ index: 1, keys: 0 });
  put = async (): Promise<boolean> => true;
  delete = async (): Promise<boolean> => true;
  watch = (): Observable<WatchStep> => EMPTY;
  close = async (): Promise<void> => undefined;
}

describe('FencedWriter: a shared transaction that fails', () => {
  const writeTwo = (writer: FencedWriter): Promise<Array<PromiseSettledResult<boolean>>> =>
    Promise.allSettled([writer.put('m/status/a', 'x', { cas: 0 }), writer.put('m/status/b', 'y', { cas: 0 })]);

  it('sends each member again on its own when the store rejected it whole (applied none of it), whichever store said so', async () => {
    const store = new RefusingStore('rejected');
    const results = await writeTwo(new FencedWriter(store, () => fence));
    assert.deepEqual(results.map((result) => result.status === 'fulfilled' && result.value), [true, true]);
    assert.deepEqual(
      store.transactions.map((operations) => operations.map((operation) => operation.key)),
      [
        ['m/leader', 'm/status/a', 'm/status/b'],
        ['m/leader', 'm/status/a'],
        ['m/leader', 'm/status/b'],
      ],
    );
  });

  it('gives every member the error, sending nothing again, when the store cannot say whether it applied', async () => {
    const store = new RefusingStore('unavailable');
    const results = await writeTwo(new FencedWriter(store, () => fence));
    assert.deepEqual(results.map((result) => result.status === 'rejected' && (result.reason as StoreError).kind), ['unavailable', 'unavailable']);
    assert.equal(store.transactions.length, 1);
  });
});
