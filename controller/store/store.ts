import type { Observable } from 'rxjs';

/**
 * The desired-state store: a revisioned key/value space with per-key compare-and-set and prefix watches.
 * Shaped after Consul KV so the embedded store and the Consul store are interchangeable:
 * every write advances one global index; each entry remembers the index that created and last modified it.
 */
export interface KvEntry {
  readonly key: string;
  readonly value: string;
  readonly createIndex: number;
  readonly modifyIndex: number;
}

export interface KvListing {
  readonly entries: KvEntry[];
  /** The store index the listing is consistent with: watch from here to miss nothing. */
  readonly index: number;
}

export interface WriteOptions {
  /**
   * Compare-and-set: the write applies only if the key's modifyIndex equals `cas`.
   * `cas: 0` means "only if the key does not exist".
   */
  readonly cas?: number;
}

export type KvChange =
  | { readonly type: 'put'; readonly entry: KvEntry }
  | { readonly type: 'delete'; readonly key: string; readonly modifyIndex: number };

/**
 * One step of a prefix watch. `reset` carries the complete current contents of the prefix (the first
 * step, or when the requested index can no longer be replayed); `changes` carries what happened since the
 * previous step. `index` is the store index the consumer has now seen everything up to.
 */
export type WatchStep =
  | { readonly kind: 'reset'; readonly index: number; readonly entries: KvEntry[] }
  | { readonly kind: 'changes'; readonly index: number; readonly changes: KvChange[] };

export interface Store {
  get(key: string): Promise<KvEntry | undefined>;
  list(prefix: string): Promise<KvListing>;
  /** Returns false when a compare-and-set did not apply (nothing was written). */
  put(key: string, value: string, options?: WriteOptions): Promise<boolean>;
  /** Returns false when a compare-and-set did not apply. Deleting a missing key without cas succeeds. */
  delete(key: string, options?: WriteOptions): Promise<boolean>;
  /**
   * Watches a prefix. With `fromIndex` omitted (or too old to replay), the first step is a reset with the
   * whole prefix. The observable never completes on its own; unsubscribing stops the watch.
   */
  watch(prefix: string, fromIndex?: number): Observable<WatchStep>;
  close(): Promise<void>;
}

/** Raised for store failures other than a failed compare-and-set, with the key and operation for context. */
export class StoreError extends Error {
  constructor(
    message: string,
    readonly operation: string,
    readonly key: string,
    options?: { cause?: unknown },
  ) {
    super(`${operation} ${key}: ${message}`, options);
    this.name = 'StoreError';
  }
}
