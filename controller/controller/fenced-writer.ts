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
    /** Told which keys a successful write changed and when it was sent (performance.now()), for the watch-lag metric. */
    private readonly onWritten: (keys: readonly string[], sentAt: number) => void = () => undefined,
  ) {}

  put(key: string, value: string, options: WriteOptions = {}): Promise<boolean> {
    return this.transaction([{ verb: 'put', key, value, cas: options.cas }]);
  }

  delete(key: string, options: WriteOptions = {}): Promise<boolean> {
    return this.transaction([{ verb: 'delete', key, cas: options.cas }]);
  }

  async transaction(operations: readonly TxnOperation[]): Promise<boolean> {
    const sentAt = performance.now();
    const written = await this.send(operations);
    if (written) this.onWritten(operations.map((operation) => operation.key), sentAt);
    return written;
  }

  private send(operations: readonly TxnOperation[]): Promise<boolean> {
    const fence = this.fence();
    if (fence !== undefined) return this.store.transaction([fence, ...operations]);
    // Unfenced, a single operation is a plain write, as the caller would have made it.
    if (operations.length === 1) {
      const [operation] = operations as [TxnOperation];
      if (operation.verb === 'put') return this.store.put(operation.key, operation.value, { cas: operation.cas });
      if (operation.verb === 'delete') return this.store.delete(operation.key, { cas: operation.cas });
    }
    return this.store.transaction(operations);
  }
}
