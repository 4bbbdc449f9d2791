import { MAX_TXN_BYTES, MAX_TXN_OPS, StoreError, transactionBytes, validateTransaction, type KvEntryMeta, type Store, type TxnOperation, type WriteOptions } from '../store/store.js';

/** The writes the reconciler makes. */
export type StoreWriter = Pick<Store, 'put' | 'delete' | 'transaction' | 'commit'>;

/** Fenced batches on their way to the store at once; more writes wait and join the next batch. */
const MAX_BATCHES_IN_FLIGHT = 4;

interface PendingWrite {
  readonly operations: readonly TxnOperation[];
  /** The operations' share of a transaction's size (see transactionBytes), a comma included. */
  readonly bytes: number;
  /** With the entries its puts left, or undefined when its check or compare-and-set failed. */
  readonly resolve: (puts: readonly KvEntryMeta[] | undefined) => void;
  readonly reject: (error: unknown) => void;
}

interface FencedBatch {
  readonly fence: TxnOperation;
  readonly writes: PendingWrite[];
  /** Operations in the batch, the fence included. */
  size: number;
  /** The batch's transaction size, the fence included. */
  bytes: number;
}

/**
 * Writes that only apply while this process holds its lease: with a fence (a `check-session` operation),
 * every write becomes one transaction led by the fence, so a deposed leader's late write fails like a
 * lost compare-and-set. Without one (the embedded store's sole leader) writes go to the store unchanged, each on its own.
 *
 * Fenced writes made in the same turn of the event loop (many reconciles finishing together) share one
 * transaction, up to the store's caps (64 operations, 512 KB as Consul receives it): one round trip, and
 * one wake-up of every watch of the prefix, instead of one per session. A transaction is all or nothing,
 * so when a shared one fails (one member's compare-and-set lost, or the store rejected it whole) each member
 * is sent again on its own and gets its own answer. Each write is validated before it joins a batch, so a bad
 * one fails alone. A shared transaction that may have applied (an `unavailable` StoreError: no answer, a
 * Consul 5xx, a failed disk sync) is never sent again: a member's compare-and-set would then fail on its own
 * write and answer false; every member gets the error.
 */
export class FencedWriter implements StoreWriter {
  private readonly forming: FencedBatch[] = [];
  private flushScheduled = false;
  private inFlight = 0;

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
    return (await this.commit(operations)) !== undefined;
  }

  async commit(operations: readonly TxnOperation[]): Promise<readonly KvEntryMeta[] | undefined> {
    const sentAt = performance.now();
    const puts = await this.send(operations);
    // A check changes nothing.
    if (puts !== undefined) this.onWritten(operations.filter((operation) => operation.verb === 'put' || operation.verb === 'delete').map((operation) => operation.key), sentAt);
    return puts;
  }

  private send(operations: readonly TxnOperation[]): Promise<readonly KvEntryMeta[] | undefined> {
    const fence = this.fence();
    if (fence !== undefined) {
      // A bad key or value, or too many operations or bytes for one transaction with the fence: refused here,
      // with the reason, to this caller alone.
      validateTransaction([fence, ...operations]);
      const bytes = transactionBytes(operations) - 1;
      return new Promise((resolve, reject) => this.enqueue(fence, { operations, bytes, resolve, reject }));
    }
    return this.store.commit(operations);
  }

  private enqueue(fence: TxnOperation, write: PendingWrite): void {
    const size = write.operations.length;
    let batch = this.forming.find(
      (candidate) => sameFence(candidate.fence, fence) && candidate.size + size <= MAX_TXN_OPS && candidate.bytes + write.bytes <= MAX_TXN_BYTES,
    );
    if (batch === undefined) {
      batch = { fence, writes: [], size: 1, bytes: transactionBytes([fence]) };
      this.forming.push(batch);
    }
    batch.writes.push(write);
    batch.size += size;
    batch.bytes += write.bytes;
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.forming.length === 0 || this.inFlight >= MAX_BATCHES_IN_FLIGHT) return;
    this.flushScheduled = true;
    // After the current turn's callbacks, so that the writes they make join the batch.
    setImmediate(() => {
      this.flushScheduled = false;
      while (this.inFlight < MAX_BATCHES_IN_FLIGHT && this.forming.length > 0) {
        const batch = this.forming.shift()!;
        this.inFlight++;
        void this.sendBatch(batch).finally(() => {
          this.inFlight--;
          this.scheduleFlush();
        });
      }
    });
  }

  private async sendBatch(batch: FencedBatch): Promise<void> {
    const { fence, writes } = batch;
    if (writes.length > 1) {
      try {
        const puts = await this.store.commit([fence, ...writes.flatMap((write) => write.operations)]);
        if (puts !== undefined) {
          for (const write of writes) write.resolve(putsOf(write.operations, puts));
          return;
        }
      } catch (error) {
        if (!refusedWhole(error)) {
          for (const write of writes) write.reject(error);
          return;
        }
        // Sent again one by one below, where each member's own error reaches its caller.
      }
    }
    await Promise.all(writes.map((write) => this.store.commit([fence, ...write.operations]).then(write.resolve, write.reject)));
  }
}

/** A member's share of a shared transaction's entries: those of its own puts. */
function putsOf(operations: readonly TxnOperation[], puts: readonly KvEntryMeta[]): KvEntryMeta[] {
  const keys = new Set(operations.flatMap((operation) => (operation.verb === 'put' ? [operation.key] : [])));
  return puts.filter((entry) => keys.has(entry.key));
}

function sameFence(a: TxnOperation, b: TxnOperation): boolean {
  return a.verb === 'check-session' && b.verb === 'check-session' && a.key === b.key && a.session === b.session;
}

/** Whether the store applied none of a transaction (refused or rolled back), so its members may be sent again. */
function refusedWhole(error: unknown): boolean {
  return error instanceof StoreError && error.kind === 'rejected';
}
