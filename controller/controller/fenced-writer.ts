import type { Store, TxnOperation, WriteOptions } from '../store/store.js';

/** The writes the reconciler makes. */
export type StoreWriter = Pick<Store, 'put' | 'delete' | 'transaction'>;

/**
 * Writes that only apply while this process holds its lease: with a fence (a `check-session` operation),
 * every write becomes one transaction led by the fence, so a deposed leader's late write fails like a
 * lost compare-and-set. Without one (the embedded store's sole leader) writes go to the store unchanged.
 */
export class FencedWriter implements StoreWriter {
  constructor(
    private readonly store: Store,
    private readonly fence: () => TxnOperation | undefined,
  ) {}

  put(key: string, value: string, options: WriteOptions = {}): Promise<boolean> {
    const fence = this.fence();
    if (fence === undefined) return this.store.put(key, value, options);
    return this.store.transaction([fence, { verb: 'put', key, value, cas: options.cas }]);
  }

  delete(key: string, options: WriteOptions = {}): Promise<boolean> {
    const fence = this.fence();
    if (fence === undefined) return this.store.delete(key, options);
    return this.store.transaction([fence, { verb: 'delete', key, cas: options.cas }]);
  }

  transaction(operations: readonly TxnOperation[]): Promise<boolean> {
    const fence = this.fence();
    return this.store.transaction(fence === undefined ? operations : [fence, ...operations]);
  }
}
