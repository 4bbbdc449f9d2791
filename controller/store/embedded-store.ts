import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { Observable, type Subscriber } from 'rxjs';
import { silentLogger, type Logger } from '../util/log.js';
import { notWritable } from '../util/writable.js';
import {
  StoreError,
  validateCas,
  validateKey,
  validatePrefix,
  validateTransaction,
  validateValue,
  validateWatch,
  type KvChange,
  type KvEntry,
  type KvEntryMeta,
  type KvListing,
  type PrefixIndex,
  type Store,
  type TxnOperation,
  type WatchStep,
  type WriteOptions,
} from './store.js';

/** Consul's limits, enforced here too so a key or value that works embedded also works on Consul. */
const DEFAULT_CHANGE_LOG_RETENTION = 10_000;

/** Bumped when the table layout changes; a file written by a newer layout is refused rather than misread. */
const SCHEMA_VERSION = 1;
/** How long open() waits for a predecessor process still finishing its shutdown to release the file. */
const LOCK_WAIT_MS = 1_000;
/** SQLite's page cache, in KiB (see initialize). */
const PAGE_CACHE_KIB = 2000;
/** WAL pages (4 kB each) after which a commit checkpoints (see initialize). */
const WAL_CHECKPOINT_PAGES = 10_000;
/** The index of an empty store. Like Consul, indexes start at 1 and only grow. */
const INITIAL_INDEX = 1;

export interface EmbeddedStoreOptions {
  readonly log?: Logger;
  /** How many of the latest changes are kept for replaying watches from an index (default 10000). */
  readonly changeLogRetention?: number;
}

interface KvRow {
  readonly key: string;
  readonly value: string;
  readonly create_index: number;
  readonly modify_index: number;
}

interface ChangeRow {
  readonly idx: number;
  readonly key: string;
  readonly kind: 'put' | 'delete';
  readonly value: string | null;
  readonly create_index: number | null;
}

/** A committed change waiting for the next delivery to watchers. */
interface PendingChange {
  readonly index: number;
  readonly key: string;
  readonly change: KvChange;
}

interface Watcher {
  readonly prefix: string;
  readonly subscriber: Subscriber<WatchStep>;
  /** The index the consumer asked to resume from; undefined means "start with a reset". */
  readonly fromIndex: number | undefined;
  started: boolean;
  /** Everything up to this index has been delivered (or covered by a reset). */
  seen: number;
}

/** A write waiting for the next group commit. */
interface QueuedWrite {
  readonly operation: string;
  readonly key: string;
  readonly operations: readonly TxnOperation[];
  /** With the entries its puts left, or undefined when a compare-and-set failed. */
  readonly resolve: (puts: readonly KvEntryMeta[] | undefined) => void;
  readonly reject: (error: StoreError) => void;
}

/** What a group commit wrote: the entries each write's puts left (undefined: a failed compare-and-set), the changes in index order, and the indexes after it. */
interface GroupOutcome {
  readonly applied: ReadonlyArray<readonly KvEntryMeta[] | undefined>;
  readonly changes: readonly PendingChange[];
  readonly index: number;
  readonly logFloor: number;
}

/**
 * The entry each put of a write left, as the write left it (a later write of the same group may change the
 * key again): from the write's own changes, or, for a put of the key's current value, which changes
 * nothing, from the table.
 */
function putsLeft(operations: readonly TxnOperation[], written: readonly PendingChange[], read: (key: string) => KvRow | undefined): KvEntryMeta[] {
  const changed = new Map<string, KvEntryMeta>();
  for (const { change } of written) if (change.type === 'put') changed.set(change.entry.key, { key: change.entry.key, createIndex: change.entry.createIndex, modifyIndex: change.entry.modifyIndex });
  return operations.flatMap((operation) => {
    if (operation.verb !== 'put') return [];
    const entry = changed.get(operation.key);
    if (entry !== undefined) return [entry];
    const row = read(operation.key);
    return row === undefined ? [] : [{ key: operation.key, createIndex: row.create_index, modifyIndex: row.modify_index }];
  });
}

/** A committed group waiting for the WAL to reach the disk before its writes are answered. */
interface UnsyncedGroup {
  readonly writes: readonly QueuedWrite[];
  readonly applied: ReadonlyArray<readonly KvEntryMeta[] | undefined>;
  readonly changes: readonly PendingChange[];
}

/** Thrown inside a write transaction to roll it back when a compare-and-set does not hold. */
const casFailed = new Error('compare-and-set failed');

/**
 * The desired-state store for the embedded default: one SQLite file with Consul-KV semantics.
 *
 * Durability: every acknowledged write has been fsynced, yet commits do not make the event loop wait for
 * the disk (only the rare checkpoints do). Writes are committed in groups (see write()) with `synchronous =
 * NORMAL`, so a commit hands its WAL frames to the OS without syncing them (a killed process loses nothing;
 * SQLite still syncs around checkpoints, which keeps the file consistent); then the WAL file is
 * fdatasync'ed on libuv's thread pool, one sync covering every group committed meanwhile, and only then are
 * the writers answered and the watchers told. Reads may see a committed write a moment before it is
 * acknowledged. The file is held in SQLite's exclusive locking mode from open to close, so a second process
 * (or a second store in this process) cannot open it; in that mode the WAL file stays the same file until
 * the store closes. Watches are served in-process from committed changes; a bounded change log in the file
 * lets a watcher resume from an index, also after a restart.
 */
export class EmbeddedStore implements Store {
  private readonly watchers = new Set<Watcher>();
  private pending: PendingChange[] = [];
  private flushHandle: NodeJS.Immediate | undefined;
  /** Writes waiting for the group commit at `commitHandle`. */
  private queued: QueuedWrite[] = [];
  private commitHandle: NodeJS.Immediate | undefined;
  /** Committed groups waiting for the next WAL sync, and whether one is running. */
  private unsynced: UnsyncedGroup[] = [];
  private syncing = false;
  /** Called once no committed group waits for a sync any more (close() waiting). */
  private syncWaiters: Array<() => void> = [];
  private flushing = false;
  private closed = false;

  private readonly getKv: Database.Statement<[string], KvRow>;
  private readonly listKv: Database.Statement<[string, Buffer], KvRow>;
  private readonly changesSince: Database.Statement<[number, string, Buffer], ChangeRow>;
  private readonly prefixState: Database.Statement<[string, Buffer, string, Buffer], { index: number | null; keys: number }>;
  private readonly commitGroup: Database.Transaction<(writes: readonly QueuedWrite[]) => GroupOutcome>;

  private constructor(
    private readonly db: Database.Database,
    private readonly file: string,
    private readonly retention: number,
    private readonly log: Logger,
    /** Mirrors meta 'index'; only this connection writes (it holds the exclusive lock), so it cannot go stale. */
    private index: number,
    /** Changes at or below this index may have been pruned: resuming from below it needs a reset. */
    private logFloor: number,
    /** The WAL file, synced before writes are acknowledged; none for an in-memory store, which has no file. */
    private readonly walFd: number | undefined,
  ) {
    this.getKv = db.prepare('SELECT key, value, create_index, modify_index FROM kv WHERE key = ?');
    // BINARY collation compares UTF-8 bytes, so [prefix, upperBound(prefix)) is exactly the keys that start
    // with the prefix, read with an index range scan rather than a full table scan.
    this.listKv = db.prepare(
      'SELECT key, value, create_index, modify_index FROM kv WHERE key >= ? AND key < CAST(? AS TEXT) ORDER BY key',
    );
    this.changesSince = db.prepare(
      'SELECT idx, key, kind, value, create_index FROM changes WHERE idx > ? AND key >= ? AND key < CAST(? AS TEXT) ORDER BY idx',
    );
    // A change still on its way to a watcher is in the log (pruning keeps the recent ones), a delete only there.
    this.prefixState = db.prepare(
      `SELECT max(idx) AS "index", sum(keys) AS keys FROM (
         SELECT max(modify_index) AS idx, count(*) AS keys FROM kv WHERE key >= ? AND key < CAST(? AS TEXT)
         UNION ALL SELECT max(idx), 0 FROM changes WHERE key >= ? AND key < CAST(? AS TEXT))`,
    );
    const upsertKv = db.prepare<[string, string, number, number]>(
      `INSERT INTO kv (key, value, create_index, modify_index) VALUES (?, ?, ?, ?)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value, modify_index = excluded.modify_index`,
    );
    const insertKv = db.prepare<[string, string, number, number]>(
      'INSERT INTO kv (key, value, create_index, modify_index) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING',
    );
    const deleteKv = db.prepare<[string]>('DELETE FROM kv WHERE key = ?');
    const insertChange = db.prepare<[number, string, string, string | null, number | null]>(
      'INSERT INTO changes (idx, key, kind, value, create_index) VALUES (?, ?, ?, ?, ?)',
    );
    const pruneChanges = db.prepare<[number]>('DELETE FROM changes WHERE idx <= ?');
    const setMeta = db.prepare<[number, string]>('UPDATE meta SET value = ? WHERE name = ?');

    // Applies one operation as the change at index `next`; undefined when it changes nothing (writing a key's
    // current value, or deleting a key that is already gone, succeeds, even with cas, and neither advances
    // the index nor wakes watchers, as in Consul). A failed compare-and-set throws.
    const applyOperation = (operation: TxnOperation, next: number): KvChange | undefined => {
      // No key is ever locked here (this store has no sessions: lock.ts), so a session check always fails.
      if (operation.verb === 'check-session') throw casFailed;
      if (operation.verb === 'check-index') {
        if ((this.getKv.get(operation.key)?.modify_index ?? 0) !== operation.index) throw casFailed;
        return undefined;
      }
      const { key, cas } = operation;
      if (operation.verb === 'put' && cas === 0) {
        // Create only: the insert itself says whether the key was there, with no read before it.
        if (insertKv.run(key, operation.value, next, next).changes === 0) throw casFailed;
        return { type: 'put', entry: { key, value: operation.value, createIndex: next, modifyIndex: next } };
      }
      const existing = this.getKv.get(key);
      if (operation.verb === 'put') {
        if (cas !== undefined && existing?.modify_index !== cas) throw casFailed;
        if (existing?.value === operation.value) return undefined;
        const createIndex = existing?.create_index ?? next;
        upsertKv.run(key, operation.value, createIndex, next);
        return { type: 'put', entry: { key, value: operation.value, createIndex, modifyIndex: next } };
      }
      if (existing === undefined) return undefined;
      if (cas !== undefined && existing.modify_index !== cas) throw casFailed;
      deleteKv.run(key);
      return { type: 'delete', key, modifyIndex: next };
    };

    // Applies one write's operations in order, each change at the next index after `from`, with its log
    // entry. A failed compare-and-set throws.
    const applyWrite = (operations: readonly TxnOperation[], from: number): PendingChange[] => {
      let index = from;
      const changes: PendingChange[] = [];
      for (const operation of operations) {
        const change = applyOperation(operation, index + 1);
        if (change === undefined) continue;
        index += 1;
        const put = change.type === 'put' ? change.entry : undefined;
        insertChange.run(index, operation.key, change.type, put?.value ?? null, put?.createIndex ?? null);
        changes.push({ index, key: operation.key, change });
      }
      return changes;
    };
    // In a savepoint, a compare-and-set failing after earlier operations applied rolls back this write alone.
    const applyInSavepoint = db.transaction(applyWrite);

    // Applies a group of writes in call order inside one SQLite transaction (one commit), then records the
    // new index and prunes the log beyond retention. A failed compare-and-set undoes its own write only; any
    // other failure fails the whole group, which is rolled back. The in-memory mirrors are updated only
    // once it has committed.
    this.commitGroup = db.transaction((writes: readonly QueuedWrite[]): GroupOutcome => {
      let index = this.index;
      const changes: PendingChange[] = [];
      const applied = writes.map(({ operations }): KvEntryMeta[] | undefined => {
        try {
          // A single operation fails its compare-and-set before it changes anything, so it needs no
          // savepoint (two more statements for every write).
          const written = operations.length === 1 ? applyWrite(operations, index) : applyInSavepoint(operations, index);
          if (written.length > 0) index = written[written.length - 1]!.index;
          changes.push(...written);
          return putsLeft(operations, written, (key) => this.getKv.get(key));
        } catch (error) {
          if (error === casFailed) return undefined;
          throw error;
        }
      });
      let logFloor = this.logFloor;
      if (changes.length === 0) return { applied, changes, index, logFloor };
      setMeta.run(index, 'index');
      if (index - this.retention > logFloor) {
        logFloor = index - this.retention;
        pruneChanges.run(logFloor);
        setMeta.run(logFloor, 'log_floor');
      }
      return { applied, changes, index, logFloor };
    });
  }

  static open(file: string, options: EmbeddedStoreOptions = {}): EmbeddedStore {
    const log = (options.log ?? silentLogger()).child({ component: 'embedded-store' });
    const retention = options.changeLogRetention ?? DEFAULT_CHANGE_LOG_RETENTION;
    if (!Number.isSafeInteger(retention) || retention < 1) {
      throw new StoreError(`changeLogRetention must be a positive integer, got ${String(retention)}`, 'open', file);
    }
    const inMemory = file === ':memory:';
    const resolved = inMemory ? file : path.resolve(file);

    let db: Database.Database;
    try {
      if (!inMemory) {
        fs.mkdirSync(path.dirname(resolved), { recursive: true });
        checkWritable(resolved);
      }
      db = new Database(resolved, { timeout: LOCK_WAIT_MS });
    } catch (error) {
      if (error instanceof StoreError) throw error;
      throw new StoreError(`cannot open the store file: ${errorMessage(error)}`, 'open', resolved, { cause: error });
    }

    let walFd: number | undefined;
    try {
      const { index, logFloor } = initialize(db, inMemory, retention);
      // SQLite made the WAL file when it opened the database in WAL mode.
      walFd = inMemory ? undefined : fs.openSync(`${resolved}-wal`, 'r');
      if (!inMemory) syncDirectory(path.dirname(resolved));
      const store = new EmbeddedStore(db, resolved, retention, log, index, logFloor, walFd);
      log.info({ file: resolved, index, logFloor, retention }, 'store opened');
      return store;
    } catch (error) {
      if (walFd !== undefined) fs.closeSync(walFd);
      db.close();
      if (isBusy(error)) {
        throw new StoreError(
          'the store file is locked by another process or another open store; two Manticore processes must not share one store',
          'open',
          resolved,
          { cause: error },
        );
      }
      throw new StoreError(`cannot open the store file: ${errorMessage(error)}`, 'open', resolved, { cause: error });
    }
  }

  async get(key: string): Promise<KvEntry | undefined> {
    this.assertOpen('get', key);
    validateKey('get', key);
    const row = this.sqlite('get', key, () => this.getKv.get(key));
    return row === undefined ? undefined : toEntry(row);
  }

  async list(prefix: string): Promise<KvListing> {
    this.assertOpen('list', prefix);
    validatePrefix('list', prefix);
    return this.sqlite('list', prefix, () => this.listNow(prefix));
  }

  async prefixIndex(prefix: string): Promise<PrefixIndex> {
    this.assertOpen('prefixIndex', prefix);
    validatePrefix('prefixIndex', prefix);
    const upper = upperBound(prefix);
    // The last change under the prefix: each watch step carries the store's index as of that step, so it is
    // at least that of any change the step delivered.
    const row = this.sqlite('prefixIndex', prefix, () => this.prefixState.get(prefix, upper, prefix, upper));
    return { index: row?.index ?? INITIAL_INDEX, keys: row?.keys ?? 0 };
  }

  async put(key: string, value: string, options: WriteOptions = {}): Promise<boolean> {
    this.assertOpen('put', key);
    validateKey('put', key);
    validateValue('put', key, value);
    const cas = validateCas('put', key, options);
    return (await this.write('put', key, [{ verb: 'put', key, value, cas }])) !== undefined;
  }

  async delete(key: string, options: WriteOptions = {}): Promise<boolean> {
    this.assertOpen('delete', key);
    validateKey('delete', key);
    const cas = validateCas('delete', key, options);
    return (await this.write('delete', key, [{ verb: 'delete', key, cas }])) !== undefined;
  }

  async transaction(operations: readonly TxnOperation[]): Promise<boolean> {
    return (await this.commit(operations)) !== undefined;
  }

  async commit(operations: readonly TxnOperation[]): Promise<readonly KvEntryMeta[] | undefined> {
    const first = operations[0]?.key ?? '';
    this.assertOpen('transaction', first);
    validateTransaction(operations);
    return this.write('transaction', first, operations);
  }

  watch(prefix: string, fromIndex?: number): Observable<WatchStep> {
    return new Observable<WatchStep>((subscriber) => {
      try {
        this.assertOpen('watch', prefix);
        validateWatch(prefix, fromIndex);
      } catch (error) {
        subscriber.error(error);
        return undefined;
      }
      const watcher: Watcher = { prefix, subscriber, fromIndex, started: false, seen: 0 };
      this.watchers.add(watcher);
      // Even the first step comes from the flush, never from inside subscribe(): a consumer's handler may
      // refer to its own Subscription, which does not exist yet while subscribe() runs.
      this.scheduleFlush();
      return () => {
        this.watchers.delete(watcher);
      };
    });
  }

  /** Delivers changes already committed, completes every watch and closes the file. Calling it again does nothing. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Called from a watch handler: let the running flush hand its batch to the remaining watchers first.
    if (this.flushing) await new Promise<void>((resolve) => setImmediate(resolve));
    // Writes already queued are committed (and their callers answered) rather than lost.
    if (this.commitHandle !== undefined) {
      clearImmediate(this.commitHandle);
      this.commitQueued();
    }
    if (this.syncing) await new Promise<void>((resolve) => this.syncWaiters.push(resolve));
    // Acknowledged writes still reach the watchers before they complete; writes their handlers attempt now
    // reject, so nothing new is queued.
    if (this.flushHandle !== undefined) clearImmediate(this.flushHandle);
    this.flush();
    const watchers = [...this.watchers];
    this.watchers.clear();
    for (const watcher of watchers) watcher.subscriber.complete();
    try {
      if (this.walFd !== undefined) fs.closeSync(this.walFd);
      this.db.close();
    } catch (error) {
      throw new StoreError(`closing the store file failed: ${errorMessage(error)}`, 'close', this.file, { cause: error });
    }
    this.log.info({ file: this.file, index: this.index }, 'store closed');
  }

  /**
   * Queues a write for the next group commit and resolves once it is on disk. Group commit: every write
   * queued during one turn of the event loop (e.g. the creates of all the requests that arrived together)
   * goes into one SQLite transaction, and one WAL sync covers every group committed while the previous
   * sync ran; one commit and one fsync per write made the event loop wait for the disk on every write.
   * Writes still apply in call order, each with its own compare-and-set.
   */
  private write(operation: string, key: string, operations: readonly TxnOperation[]): Promise<readonly KvEntryMeta[] | undefined> {
    return new Promise((resolve, reject) => {
      this.queued.push({ operation, key, operations, resolve, reject });
      this.commitHandle ??= setImmediate(() => this.commitQueued());
    });
  }

  private commitQueued(): void {
    this.commitHandle = undefined;
    const writes = this.queued;
    this.queued = [];
    if (writes.length === 0) return;
    let outcome: GroupOutcome;
    try {
      outcome = this.commitGroup.immediate(writes);
    } catch (error) {
      for (const write of writes) write.reject(this.sqliteError(write.operation, write.key, error));
      return;
    }
    this.index = outcome.index;
    this.logFloor = outcome.logFloor;
    const group: UnsyncedGroup = { writes, applied: outcome.applied, changes: outcome.changes };
    if (this.walFd === undefined) {
      this.acknowledge([group]);
      return;
    }
    this.unsynced.push(group);
    this.syncSoon();
  }

  /** Syncs the WAL for the groups committed so far, unless a sync is running: its end starts the next one. */
  private syncSoon(): void {
    if (this.syncing || this.unsynced.length === 0) return;
    const groups = this.unsynced;
    this.unsynced = [];
    this.syncing = true;
    fs.fdatasync(this.walFd!, (error) => {
      this.syncing = false;
      if (error === null) this.acknowledge(groups);
      else this.syncFailed(groups, error);
      this.syncSoon();
      if (!this.syncing) for (const resolve of this.syncWaiters.splice(0)) resolve();
    });
  }

  /** The groups are on disk: their writers are answered and their changes go to the watchers. */
  private acknowledge(groups: readonly UnsyncedGroup[]): void {
    for (const { writes, applied, changes } of groups) {
      this.pending.push(...changes);
      writes.forEach((write, i) => write.resolve(applied[i]!));
    }
    this.scheduleFlush();
  }

  /**
   * The disk refused the sync, so the groups' writes may not survive a power loss: their writers get an
   * error. The changes are in the file all the same (reads see them), so the watchers are still told,
   * which keeps every cache equal to the file.
   */
  private syncFailed(groups: readonly UnsyncedGroup[], error: Error): void {
    this.log.error({ err: error, file: this.file }, 'syncing the store file to disk failed; the writes waiting for it are refused');
    for (const { writes, changes } of groups) {
      this.pending.push(...changes);
      // Applied (reads see it) but maybe not durable: unavailable, not rejected.
      for (const write of writes) write.reject(new StoreError(`syncing ${this.file} to disk failed: ${error.message}`, write.operation, write.key, { cause: error, kind: 'unavailable' }));
    }
    this.scheduleFlush();
  }

  private listNow(prefix: string): KvListing {
    const entries = this.listKv.all(prefix, upperBound(prefix)).map(toEntry);
    return { entries, index: this.index };
  }

  private scheduleFlush(): void {
    if (this.flushHandle !== undefined || this.closed) return;
    // setImmediate, not a microtask: delivery never runs inside put(), and writes made in the same turn of
    // the event loop reach each watcher as one step.
    this.flushHandle = setImmediate(() => {
      this.flushHandle = undefined;
      this.flush();
    });
  }

  /**
   * Starts new watchers and hands the committed changes to the running ones. Handlers may write to the store
   * while this runs: those changes get higher indexes and go to the next flush, and each watcher's `seen`
   * index keeps a change from being delivered twice (e.g. once in a reset and again as a change).
   */
  private flush(): void {
    const batch = this.pending;
    this.pending = [];
    const batchIndex = batch.length > 0 ? batch[batch.length - 1].index : 0;
    this.flushing = true;
    try {
      for (const watcher of [...this.watchers]) {
        if (!this.watchers.has(watcher)) continue;
        if (!watcher.started) {
          this.start(watcher);
          continue;
        }
        const changes = batch
          .filter((pending) => pending.index > watcher.seen && pending.key.startsWith(watcher.prefix))
          .map((pending) => pending.change);
        if (batchIndex > watcher.seen) watcher.seen = batchIndex;
        if (changes.length > 0) watcher.subscriber.next({ kind: 'changes', index: watcher.seen, changes });
      }
    } finally {
      this.flushing = false;
    }
  }

  private start(watcher: Watcher): void {
    watcher.started = true;
    const { prefix, fromIndex } = watcher;
    let step: WatchStep | undefined;
    try {
      if (fromIndex === undefined || fromIndex < this.logFloor || fromIndex > this.index) {
        if (fromIndex !== undefined) {
          this.log.info(
            { prefix, fromIndex, index: this.index, logFloor: this.logFloor },
            fromIndex > this.index
              ? 'watch index is ahead of the store (was the store recreated?); starting with a reset'
              : 'watch index is older than the change log; starting with a reset',
          );
        }
        const listing = this.listNow(prefix);
        step = { kind: 'reset', index: listing.index, entries: listing.entries };
      } else {
        const rows = this.changesSince.all(fromIndex, prefix, upperBound(prefix));
        if (rows.length > 0) step = { kind: 'changes', index: this.index, changes: rows.map(toChange) };
      }
    } catch (error) {
      this.watchers.delete(watcher);
      watcher.subscriber.error(
        new StoreError(`starting the watch failed: ${errorMessage(error)}`, 'watch', prefix, { cause: error }),
      );
      return;
    }
    watcher.seen = this.index;
    if (step !== undefined) watcher.subscriber.next(step);
  }

  private assertOpen(operation: string, key: string): void {
    if (this.closed) throw new StoreError(`the store (${this.file}) is closed`, operation, key);
  }

  /** Runs a SQLite call, turning its failures into StoreErrors that say what was being done. */
  private sqlite<T>(operation: string, key: string, body: () => T): T {
    try {
      return body();
    } catch (error) {
      throw this.sqliteError(operation, key, error);
    }
  }

  private sqliteError(operation: string, key: string, error: unknown): StoreError {
    return new StoreError(`SQLite failed on ${this.file}: ${errorMessage(error)}`, operation, key, { cause: error });
  }
}

/** Sets the connection up (lock, journal, durability), creates the tables and reads the indexes. */
function initialize(db: Database.Database, inMemory: boolean, retention: number): { index: number; logFloor: number } {
  // Exclusive mode must be set before the first WAL access: the lock is then kept until close, and the WAL
  // index lives in process memory instead of a shared-memory file that other processes could attach to.
  db.pragma('locking_mode = EXCLUSIVE');
  const journal = String(db.pragma('journal_mode = WAL', { simple: true }));
  if (!inMemory && journal !== 'wal') throw new Error(`SQLite refused WAL journal mode (got '${journal}')`);
  // NORMAL: a commit does not sync the WAL; the store syncs it itself, off the event loop, before it
  // acknowledges a write (see EmbeddedStore), so an acknowledged write survives a killed process and a
  // power loss alike.
  db.pragma('synchronous = NORMAL');
  // SQLite's own page cache size (2 MB), not better-sqlite3's 16 MB: a commit that split a b-tree page
  // walks the whole cache as it ends (the split renumbers pages through the lock-byte page's number, far
  // past the end of the file, and the commit then looks for pages past the end in every hash slot), which
  // cost a create more than the bigger cache saved. New rows touch a few pages at the end of each b-tree,
  // and the OS caches the rest of the file.
  db.pragma(`cache_size = -${PAGE_CACHE_KIB}`);
  // A checkpoint runs inside the commit that fills the WAL, copying its pages into the file and syncing
  // both, which holds the event loop for milliseconds. Ten times SQLite's default (40 MB of WAL) makes
  // them rarer, and each copies once a page that many commits rewrote (a busy table's pages are).
  db.pragma(`wal_autocheckpoint = ${WAL_CHECKPOINT_PAGES}`);
  if (!inMemory) checkIntact(db);
  const version = Number(db.pragma('user_version', { simple: true }));
  if (version > SCHEMA_VERSION) {
    throw new Error(`the file has schema version ${version}, newer than this Manticore understands (${SCHEMA_VERSION})`);
  }
  // The first write transaction takes the exclusive lock, which exclusive mode then keeps.
  return db
    .transaction((): { index: number; logFloor: number } => {
      db.exec(`
        CREATE TABLE IF NOT EXISTS kv (
          key TEXT PRIMARY KEY,
          value TEXT NOT NULL,
          create_index INTEGER NOT NULL,
          modify_index INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS changes (
          idx INTEGER PRIMARY KEY,
          key TEXT NOT NULL,
          kind TEXT NOT NULL CHECK (kind IN ('put', 'delete')),
          value TEXT,
          create_index INTEGER
        );
        CREATE TABLE IF NOT EXISTS meta (
          name TEXT PRIMARY KEY,
          value INTEGER NOT NULL
        ) WITHOUT ROWID;
        INSERT OR IGNORE INTO meta (name, value) VALUES ('index', ${INITIAL_INDEX}), ('log_floor', ${INITIAL_INDEX});
        PRAGMA user_version = ${SCHEMA_VERSION};
      `);
      const readMeta = db.prepare<[string], { value: number }>('SELECT value FROM meta WHERE name = ?');
      const meta = (name: string): number => {
        const row = readMeta.get(name);
        if (row === undefined) throw new Error(`the meta row '${name}' is missing`);
        return row.value;
      };
      const index = meta('index');
      let logFloor = meta('log_floor');
      // Honour a retention lowered since the file was last open.
      if (index - retention > logFloor) {
        logFloor = index - retention;
        db.prepare<[number]>('DELETE FROM changes WHERE idx <= ?').run(logFloor);
        db.prepare<[number]>("UPDATE meta SET value = ? WHERE name = 'log_floor'").run(logFloor);
      }
      return { index, logFloor };
    })
    .immediate();
}

/**
 * Syncs a directory's entries. Syncing the WAL makes its contents durable, not the names of a file or WAL
 * SQLite just created, and SQLite syncs the directory only at its own syncs (checkpoints, here rare): until
 * then a power loss could take a new store file away with every write acknowledged in it.
 */
function syncDirectory(directory: string): void {
  const fd = fs.openSync(directory, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The smallest byte string above every string that starts with `prefix`: the prefix with its last byte
 * incremented (UTF-8 never contains 0xFF, so this cannot overflow), or 0xFF alone for the empty prefix.
 */
function upperBound(prefix: string): Buffer {
  const bytes = Buffer.from(prefix, 'utf8');
  if (bytes.length === 0) return Buffer.from([0xff]);
  bytes[bytes.length - 1] += 1;
  return bytes;
}

function toEntry(row: KvRow): KvEntry {
  return { key: row.key, value: row.value, createIndex: row.create_index, modifyIndex: row.modify_index };
}

function toChange(row: ChangeRow): KvChange {
  if (row.kind === 'delete') return { type: 'delete', key: row.key, modifyIndex: row.idx };
  return {
    type: 'put',
    entry: { key: row.key, value: row.value ?? '', createIndex: row.create_index ?? row.idx, modifyIndex: row.idx },
  };
}

/** The store file, its write-ahead log and its directory must be writable (see notWritable). */
function checkWritable(file: string): void {
  const targets: ReadonlyArray<readonly [string, string, 'file' | 'directory']> = [
    [file, 'the store file', 'file'],
    [`${file}-wal`, 'its write-ahead log', 'file'],
    [path.dirname(file), 'its directory', 'directory'],
  ];
  for (const [target, what, kind] of targets) {
    const problem = notWritable(target, kind);
    if (problem === undefined) continue;
    throw new StoreError(
      `${what} ${problem}; Manticore reads and writes the store file and creates ${path.basename(file)}-wal beside it: ` +
        "give this user those rights, or run Manticore as the files' owner",
      'open',
      file,
    );
  }
}

/**
 * A damaged page (a bad disk, a copy taken while Manticore ran) lets the file open and fails each read of
 * it, so the parts would retry for ever; checked before anything reads or writes, the file is refused as it is.
 */
function checkIntact(db: Database.Database): void {
  let problems: string[];
  try {
    problems = (db.pragma('quick_check') as Array<{ quick_check: string }>).map((row) => row.quick_check);
  } catch (error) {
    if (!isCorrupt(error)) throw error;
    problems = [errorMessage(error)];
  }
  if (problems.length === 1 && problems[0] === 'ok') return;
  throw new Error(
    `the file is damaged (SQLite's check: ${problems.slice(0, 3).join('; ')}); it was left as it is: restore it from a backup ` +
      '(docs/operations.md, Backup and disaster recovery), or move it aside to start with an empty store',
  );
}

function isCorrupt(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB');
}

function isBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('SQLITE_BUSY');
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
