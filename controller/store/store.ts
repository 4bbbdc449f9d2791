import type { Observable } from 'rxjs';

/**
 * The desired-state store: a revisioned key/value space with per-key compare-and-set and prefix watches.
 * Shaped after Consul KV so the embedded store and the Consul store are interchangeable:
 * every write that changes something advances one global index (one that writes a key's current value is
 * skipped: the key keeps its modifyIndex and no watcher hears of it); each entry remembers the index that
 * created and last modified it.
 */
export interface KvEntry {
  readonly key: string;
  readonly value: string;
  readonly createIndex: number;
  readonly modifyIndex: number;
  /** The session holding the key's lock (Consul's `Session`), when it is locked. */
  readonly session?: string;
}

/** An entry's key and indexes without its value: what a cache keeps once it has decoded the value. */
export type KvEntryMeta = Omit<KvEntry, 'value'>;

export interface KvListing {
  readonly entries: KvEntry[];
  /** The store index the listing is consistent with: watch from here to miss nothing. */
  readonly index: number;
}

export interface PrefixIndex {
  /**
   * Reached by a watch of the prefix once it has delivered every change made under the prefix before the
   * read. Except when the prefix holds no keys: Consul may then answer its whole table's index, which such
   * a watch reaches only when its wait runs out (an empty prefix is caught up with by being empty).
   */
  readonly index: number;
  /** How many keys the prefix holds. */
  readonly keys: number;
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
  /**
   * Where the prefix stands, read without the values: how a cache following the prefix tells it has caught
   * up with the store, at a fraction of a listing's cost.
   */
  prefixIndex(prefix: string): Promise<PrefixIndex>;
  /** Returns false when a compare-and-set did not apply (nothing was written). */
  put(key: string, value: string, options?: WriteOptions): Promise<boolean>;
  /** Returns false when a compare-and-set did not apply. Deleting a missing key without cas succeeds. */
  delete(key: string, options?: WriteOptions): Promise<boolean>;
  /**
   * Applies every operation or none (Consul's `/v1/txn`). At most `MAX_TXN_OPS` operations and
   * `MAX_TXN_BYTES` (see transactionBytes); more is a StoreError, never a partial write. Returns false, writing nothing, when a compare-and-set fails.
   * A StoreError's kind says whether the transaction may have been applied.
   */
  transaction(operations: readonly TxnOperation[]): Promise<boolean>;
  /**
   * transaction(), answering what it wrote: the entry each `put` left (its key and indexes, in operation
   * order), as Consul's `/v1/txn` results give them; undefined when a check or compare-and-set failed.
   * A writer that caches what it reads can settle its own write with this at once, not when a watch
   * brings it back.
   */
  commit(operations: readonly TxnOperation[]): Promise<readonly KvEntryMeta[] | undefined>;
  /**
   * Watches a prefix. With `fromIndex` omitted (or too old to replay), the first step is a reset with the
   * whole prefix. The observable never completes on its own; unsubscribing stops the watch.
   */
  watch(prefix: string, fromIndex?: number): Observable<WatchStep>;
  close(): Promise<void>;
}

/**
 * One operation of a transaction; `cas` as in WriteOptions (0: only if absent). The checks write nothing
 * and fail the transaction (false, like a failed compare-and-set): `check-session` unless `key` is locked
 * by `session`, which fences a leader's writes to its lease (see lock.ts); `check-index` unless `key` is at
 * modify index `index` (0: unless it is absent), which ties a write to what was read of another key.
 */
export type TxnOperation =
  | { readonly verb: 'put'; readonly key: string; readonly value: string; readonly cas?: number }
  | { readonly verb: 'delete'; readonly key: string; readonly cas?: number }
  | { readonly verb: 'check-session'; readonly key: string; readonly session: string }
  | { readonly verb: 'check-index'; readonly key: string; readonly index: number };

/** Consul's cap on the operations of one transaction. */
export const MAX_TXN_OPS = 64;
/**
 * Consul's cap on the request body of one transaction (txn_max_req_len, 512 KB), in which values count
 * base64-encoded: a transaction can hold less than its values' limits add up to.
 */
export const MAX_TXN_BYTES = 512 * 1024;

/** One operation as Consul's /v1/txn takes it. */
export interface ConsulTxnOp {
  readonly KV: { readonly Verb: string; readonly Key: string; readonly Value?: string; readonly Index?: number; readonly Session?: string };
}

/** `operation` in Consul's /v1/txn format, its value (a put's) given already base64-encoded. */
export function consulTxnOp(operation: TxnOperation, encodedValue = ''): ConsulTxnOp {
  const { key: Key } = operation;
  if (operation.verb === 'put') {
    // Consul's `cas` verb with Index 0 is "set only if absent", exactly our cas 0.
    return operation.cas === undefined
      ? { KV: { Verb: 'set', Key, Value: encodedValue } }
      : { KV: { Verb: 'cas', Key, Value: encodedValue, Index: operation.cas } };
  }
  if (operation.verb === 'check-session') return { KV: { Verb: 'check-session', Key, Session: operation.session } };
  if (operation.verb === 'check-index') return operation.index === 0 ? { KV: { Verb: 'check-not-exists', Key } } : { KV: { Verb: 'check-index', Key, Index: operation.index } };
  return operation.cas === undefined ? { KV: { Verb: 'delete', Key } } : { KV: { Verb: 'delete-cas', Key, Index: operation.cas } };
}

/** The size of `operations` as the JSON array Consul's /v1/txn receives, without encoding any value. */
export function transactionBytes(operations: readonly TxnOperation[]): number {
  // The brackets and the commas between operations.
  let bytes = 1 + Math.max(operations.length, 1);
  for (const operation of operations) {
    const valueBytes = operation.verb === 'put' ? Buffer.byteLength(operation.value, 'utf8') : 0;
    bytes += Buffer.byteLength(JSON.stringify(consulTxnOp(operation)), 'utf8') + 4 * Math.ceil(valueBytes / 3);
  }
  return bytes;
}

/**
 * What a failed call says about the write it carried, whichever store answered:
 * - `rejected`: the store applied none of it (refused as invalid or not permitted, rolled back, or the store
 *   is closed), so its parts may be sent again, each on its own;
 * - `unavailable`: the store could not be reached, did not answer or failed while applying it: the write may
 *   have been applied, and sending it again could find it already there.
 */
export type StoreErrorKind = 'rejected' | 'unavailable';

/** Raised for store failures other than a failed compare-and-set, with the key and operation for context. */
export class StoreError extends Error {
  /** `rejected` unless the store says otherwise: most failures are found before anything is sent. */
  readonly kind: StoreErrorKind;

  constructor(
    message: string,
    readonly operation: string,
    readonly key: string,
    options?: { cause?: unknown; kind?: StoreErrorKind },
  ) {
    super(`${operation} ${key}: ${message}`, options);
    this.name = 'StoreError';
    this.kind = options?.kind ?? 'rejected';
  }
}

/** Consul's limits, which every store enforces so that the backends are interchangeable. */
export const MAX_KEY_BYTES = 512;
const MAX_VALUE_BYTES = 512 * 1024;

/**
 * Checks a key against the rules both store backends enforce (Consul's, plus well-formed text so that what is
 * read back equals what was written).
 */
export function validateKey(operation: string, key: string): void {
  if (typeof key !== 'string') throw new StoreError(`the key must be a string, got ${typeof key}`, operation, String(key));
  if (key.length === 0) throw new StoreError('the key must not be empty', operation, key);
  checkName(operation, key, 'key');
}

/** A prefix follows the key rules, except that it may be empty (everything). */
export function validatePrefix(operation: string, prefix: string): void {
  if (typeof prefix !== 'string') {
    throw new StoreError(`the prefix must be a string, got ${typeof prefix}`, operation, String(prefix));
  }
  checkName(operation, prefix, 'prefix');
}

export function validateValue(operation: string, key: string, value: string): void {
  if (typeof value !== 'string') throw new StoreError(`the value must be a string, got ${typeof value}`, operation, key);
  const bytes = Buffer.byteLength(value, 'utf8');
  if (bytes > MAX_VALUE_BYTES) {
    throw new StoreError(`the value is ${bytes} bytes, more than the ${MAX_VALUE_BYTES} allowed`, operation, key);
  }
  if (LONE_SURROGATE.test(value)) throw new StoreError('the value is not well-formed Unicode (lone surrogate)', operation, key);
}

function checkName(operation: string, name: string, what: 'key' | 'prefix'): void {
  if (name.startsWith('/')) throw new StoreError(`the ${what} must not start with '/'`, operation, name);
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > MAX_KEY_BYTES) {
    throw new StoreError(`the ${what} is ${bytes} bytes, more than the ${MAX_KEY_BYTES} allowed`, operation, name);
  }
  if (name.includes('\0')) throw new StoreError(`the ${what} must not contain NUL`, operation, name);
  if (LONE_SURROGATE.test(name)) {
    throw new StoreError(`the ${what} is not well-formed Unicode (lone surrogate)`, operation, name);
  }
  // Consul's HTTP server cannot address some names: its router cleans paths (an empty, '.' or '..' segment
  // is redirected elsewhere) and refuses non-printable characters. Refused here, by both stores, with a clear
  // message rather than a redirect or a bare 400 from Consul.
  const segments = name.split('/');
  if (segments.some((segment, i) => (segment === '' && i < segments.length - 1) || segment === '.' || segment === '..')) {
    throw new StoreError(`Consul's HTTP API cannot address a ${what} with empty, '.' or '..' path segments`, operation, name);
  }
  if (!PRINTABLE.test(name)) throw new StoreError(`Consul's HTTP API refuses a ${what} with non-printable characters`, operation, name);
}

export function validateCas(operation: string, key: string, options: WriteOptions): number | undefined {
  const { cas } = options;
  if (cas !== undefined && (!Number.isSafeInteger(cas) || cas < 0)) {
    throw new StoreError(`cas must be a non-negative integer, got ${String(cas)}`, operation, key);
  }
  return cas;
}

/** In a `u` regexp a surrogate pair is one code point, so this matches only unpaired surrogates. */
const LONE_SURROGATE = /\p{Surrogate}/u;
/** Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space. */
const PRINTABLE = /^[\p{L}\p{M}\p{N}\p{P}\p{S} ]*$/u;


/** The arguments of a watch: a valid prefix and, when given, a non-negative integer index. */
export function validateWatch(prefix: string, fromIndex: number | undefined): void {
  validatePrefix('watch', prefix);
  if (fromIndex !== undefined && (!Number.isSafeInteger(fromIndex) || fromIndex < 0)) {
    throw new StoreError(`fromIndex must be a non-negative integer, got ${String(fromIndex)}`, 'watch', prefix);
  }
}

/** The operations of a transaction: at most MAX_TXN_OPS and MAX_TXN_BYTES, each with a valid key, value and cas. */
export function validateTransaction(operations: readonly TxnOperation[]): void {
  const first = operations[0]?.key ?? '';
  if (operations.length > MAX_TXN_OPS) {
    throw new StoreError(`a transaction holds at most ${MAX_TXN_OPS} operations, got ${operations.length}`, 'transaction', first);
  }
  for (const operation of operations) {
    validateKey('transaction', operation.key);
    if (operation.verb === 'check-session') {
      if (typeof operation.session !== 'string' || operation.session === '') {
        throw new StoreError('check-session needs a session id', 'transaction', operation.key);
      }
      continue;
    }
    if (operation.verb === 'check-index') {
      validateCas('transaction', operation.key, { cas: operation.index });
      continue;
    }
    if (operation.verb === 'put') validateValue('transaction', operation.key, operation.value);
    validateCas('transaction', operation.key, operation);
  }
  const bytes = transactionBytes(operations);
  if (bytes > MAX_TXN_BYTES) {
    throw new StoreError(`a transaction is at most ${MAX_TXN_BYTES} bytes as Consul receives it (values base64-encoded), got ${bytes}`, 'transaction', first);
  }
}
