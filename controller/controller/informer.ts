import { Subject, type Observable, type Subscription } from 'rxjs';
import { unreadableSources, watchRestarts } from '../metrics/metrics.js';
import type { Logger } from '../util/log.js';
import { jitteredBackoffMs } from '../util/backoff.js';
import type { KvEntry, KvEntryMeta, PrefixIndex, Store, WatchStep } from '../store/store.js';
import type { Scheduler, Workload, WorkloadStep } from '../scheduler/scheduler.js';

export interface CacheChange<T> {
  readonly id: string;
  readonly previous: T | undefined;
  readonly current: T | undefined;
  /** This process's own write, come back through the watch (see RecordCache.writing). */
  readonly echo?: boolean;
}

/**
 * An in-memory mirror of one kind of object, keyed by session id, that announces every change.
 * Informers fill it from watches; reconcilers read it instead of asking the backends.
 */
export class Cache<T> {
  private readonly items = new Map<string, T>();
  private readonly subject = new Subject<CacheChange<T>>();
  readonly changes: Observable<CacheChange<T>> = this.subject.asObservable();

  get(id: string): T | undefined {
    return this.items.get(id);
  }

  values(): IterableIterator<T> {
    return this.items.values();
  }

  ids(): IterableIterator<string> {
    return this.items.keys();
  }

  get size(): number {
    return this.items.size;
  }

  upsert(id: string, value: T, echo = false): void {
    const previous = this.items.get(id);
    this.items.set(id, value);
    this.subject.next(echo ? { id, previous, current: value, echo } : { id, previous, current: value });
  }

  remove(id: string): void {
    const previous = this.items.get(id);
    if (previous === undefined) return;
    this.items.delete(id);
    this.subject.next({ id, previous, current: undefined });
  }

  /** Makes the cache hold exactly `all`, announcing what appeared, changed and vanished. */
  replace(all: ReadonlyMap<string, T>, same: (a: T, b: T) => boolean): void {
    for (const id of [...this.items.keys()]) if (!all.has(id)) this.remove(id);
    for (const [id, value] of all) {
      const previous = this.items.get(id);
      if (previous === undefined || !same(previous, value)) this.upsert(id, value);
    }
  }

  complete(): void {
    this.subject.complete();
  }
}

/**
 * A store record as cached: the entry's indexes plus the decoded value, or why it could not be decoded. The
 * encoded value is not kept: at 10,000 sessions it would be tens of megabytes read only once.
 */
export interface CachedRecord<T> {
  readonly id: string;
  readonly entry: KvEntryMeta;
  readonly value?: T;
  readonly error?: string;
}

/**
 * The cache of one store prefix, told what this process writes to it: the watch brings each write back,
 * and that echo takes its value from here instead of being decoded again (JSON and schema), and is marked
 * as an echo, so that a writer need not look again at what it has just decided.
 *
 * A write whose commit answered its entry (Store.commit) is shown at once, ahead of the watch: a watch
 * re-lists its whole prefix and is paced by what that costs, so with 10,000 sessions a status written now
 * would otherwise show, and the session's next step wait, for over a second. Until the watch reaches the
 * write's index, what it brings for that key is older than the write and is not applied (see StoreInformer).
 */
export class RecordCache<T> extends Cache<CachedRecord<T>> {
  private readonly written = new Map<string, { readonly json: string; readonly value: T }>();
  /** Writes shown ahead of the watch: id → the modify index each left. */
  private readonly ahead = new Map<string, number>();
  private readonly aheadBroughtBack = new Subject<string>();
  /** The ids of writes shown ahead of the watch, as the watch brings each back (which changes nothing here). */
  readonly broughtBack: Observable<string> = this.aheadBroughtBack.asObservable();
  /** The store index up to which the watch has shown the prefix (kept by the informer). */
  watchedIndex = 0;

  /**
   * Says that this process is writing `json` under `id`, which decodes to `value`. The caller must not
   * change `value` afterwards, and calls writeFailed() when the write does not happen.
   */
  writing(id: string, json: string, value: T): void {
    this.written.set(id, { json, value });
  }

  /** Whether a write of this process under `id` is not in the cache yet, neither answered with its entry nor come back through the watch (the cache shows what it replaces). */
  writePending(id: string): boolean {
    return this.written.has(id);
  }

  writeFailed(id: string, json: string): void {
    if (this.written.get(id)?.json === json) this.written.delete(id);
  }

  /** The value written under `id` as `json`, once: the next entry the watch brings for `id` settles it either way. */
  takeWritten(id: string, json: string): T | undefined {
    const written = this.written.get(id);
    if (written === undefined) return undefined;
    this.written.delete(id);
    return written.json === json ? written.value : undefined;
  }

  /** A reset held whatever it held: writes whose entry it did not show (deleted meanwhile) are not waited for. */
  forgetWrites(): void {
    this.written.clear();
  }

  /**
   * This process's write of `json` (decoding to `value`) under `id` committed, leaving `entry`: shown now,
   * as its echo, unless the cache or the watch already shows it or something after it.
   */
  committed(id: string, entry: KvEntryMeta, json: string, value: T): void {
    const cached = this.get(id);
    if (this.watchedIndex >= entry.modifyIndex || (cached !== undefined && cached.entry.modifyIndex >= entry.modifyIndex)) return;
    this.takeWritten(id, json);
    this.ahead.set(id, entry.modifyIndex);
    this.upsert(id, { id, entry, value }, true);
  }

  /** The modify index of the write shown under `id` ahead of the watch, if any. */
  aheadOf(id: string): number | undefined {
    return this.ahead.get(id);
  }

  /** The ids of the writes shown ahead of the watch. */
  aheadIds(): IterableIterator<string> {
    return this.ahead.keys();
  }

  /** The watch has shown the store at `index`: the writes shown ahead of it up to there are its to show now. */
  settledUpTo(index: number): string[] {
    const settled: string[] = [];
    for (const [id, modifyIndex] of this.ahead) {
      if (modifyIndex > index) continue;
      this.ahead.delete(id);
      settled.push(id);
    }
    return settled;
  }

  /** The store went back to an older state: what was shown ahead of the watch may be lost with it. */
  forgetAhead(): void {
    this.ahead.clear();
  }

  /** The watch brought back the write shown ahead of it under `id`, as it was. */
  announceBroughtBack(id: string): void {
    this.aheadBroughtBack.next(id);
  }

  override complete(): void {
    super.complete();
    this.aheadBroughtBack.complete();
  }
}

/**
 * Keeps a watch open: on error or completion it opens a new one (the opener decides where to resume)
 * after a jittered exponential backoff, so a flapping backend never causes a hot loop.
 */
class ResumableWatch<S> {
  private subscription: Subscription | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;

  constructor(
    private readonly open: () => Observable<S>,
    private readonly onStep: (step: S) => void,
    private readonly log: Logger,
    private readonly what: string,
  ) {}

  start(): void {
    this.subscription = this.open().subscribe({
      next: (step) => {
        this.failures = 0;
        this.onStep(step);
      },
      error: (error: unknown) => this.retry(error),
      complete: () => this.retry(new Error('watch ended')),
    });
  }

  stop(): void {
    this.stopped = true;
    this.subscription?.unsubscribe();
    if (this.retryTimer) clearTimeout(this.retryTimer);
  }

  private retry(error: unknown): void {
    if (this.stopped) return;
    this.failures += 1;
    const delay = jitteredBackoffMs(this.failures, 100, 10_000);
    this.log.warn({ err: error, watch: this.what, retryInMs: delay }, 'watch failed; resuming');
    watchRestarts.inc({ resource: this.what });
    this.retryTimer = setTimeout(() => this.start(), delay);
  }
}

/**
 * A cache kept in step with a watch: subclasses say how a watch step changes the cache. `synced` resolves
 * after the first step (the complete initial state) and `applied` emits after every step.
 */
abstract class Informer<S, V, C extends Cache<V> = Cache<V>> {
  readonly synced: Promise<void>;
  private markSynced!: () => void;
  private readonly stepsApplied = new Subject<void>();
  /** Emits after each watch step has been applied to the cache as a whole. */
  readonly applied: Observable<void> = this.stepsApplied.asObservable();
  private readonly watch: ResumableWatch<S>;

  constructor(
    readonly cache: C,
    open: () => Observable<S>,
    log: Logger,
    what: string,
  ) {
    this.synced = new Promise((resolve) => (this.markSynced = resolve));
    this.watch = new ResumableWatch(open, (step) => this.onStep(step), log, what);
  }

  start(): this {
    this.watch.start();
    return this;
  }

  stop(): void {
    this.watch.stop();
    this.cache.complete();
    this.stepsApplied.complete();
  }

  protected abstract apply(step: S): void;

  private onStep(step: S): void {
    this.apply(step);
    this.markSynced();
    this.stepsApplied.next();
  }
}

/**
 * A reset whose index is below the one the informer had reached: the store lost its state or was rolled
 * back to a snapshot (Consul's index never goes back otherwise, save for the rare reaped tombstone, which
 * removes no record).
 */
export interface StoreRewind<T> {
  readonly previousIndex: number;
  readonly index: number;
  /** The records the rewind removed from the cache, as they were before it. */
  readonly vanished: readonly CachedRecord<T>[];
}

/**
 * Mirrors one store prefix into a Cache through a watch (list once, then changes), decoding each value.
 * A decode failure is kept in the cache as `error` (a malformed record is reported, never fatal).
 * A failed watch resumes from the last index it saw.
 */
export class StoreInformer<T> extends Informer<WatchStep, CachedRecord<T>, RecordCache<T>> {
  /**
   * The store index up to which this informer has seen every change under its prefix. It follows a
   * rewind down, so that indexes compared with it (routers' applied index) mean the store as it is now.
   */
  index = 0;
  private readonly rewound = new Subject<StoreRewind<T>>();
  /** Emits after a rewind has been applied to the cache, before `applied` emits for the same step. */
  readonly rewinds: Observable<StoreRewind<T>> = this.rewound.asObservable();

  constructor(
    store: Store,
    readonly prefix: string,
    private readonly decode: (json: string, id: string) => T,
    log: Logger,
  ) {
    super(new RecordCache<T>(), () => store.watch(prefix, this.index || undefined), log, prefix);
  }

  override stop(): void {
    super.stop();
    this.rewound.complete();
  }

  /**
   * Logs each record that cannot be decoded, naming its key and the problem, once per stored version: the
   * cache announces only changes, so a watch resumed over it unchanged says nothing again. `message` says
   * what the process does without the record. They are counted in `manticore_unreadable_records` until
   * fixed or deleted, for an alert.
   */
  reportUnreadable(log: Logger, message: string): Subscription {
    const unreadable = new Set<string>();
    const subscription = this.cache.changes.subscribe(({ id, current }) => {
      if (current?.error === undefined) {
        unreadable.delete(id);
        return;
      }
      unreadable.add(id);
      log.warn({ key: this.prefix + id, problem: current.error }, message);
    });
    // Ends with the cache (the informer stopped) or when the caller unsubscribes.
    subscription.add(unreadableSources.add(() => ({ resource: this.prefix, records: unreadable.size })));
    return subscription;
  }

  /** Whether the cache shows what the store held when its `prefixIndex` of this prefix was read. */
  caughtUpWith(read: PrefixIndex): boolean {
    return this.index >= read.index || (read.keys === 0 && this.cache.size === 0);
  }

  protected apply(step: WatchStep): void {
    if (step.kind === 'reset') {
      const previousIndex = this.index;
      const rewind = step.index < previousIndex;
      if (rewind) this.cache.forgetAhead();
      const all = new Map<string, CachedRecord<T>>();
      for (const entry of step.entries) {
        const decoded = this.toRecord(entry);
        if (decoded) all.set(decoded.record.id, decoded.record);
      }
      // Writes shown ahead of this reset stay as they are: it is older than they are.
      this.cache.settledUpTo(step.index);
      for (const id of this.cache.aheadIds()) {
        const shown = this.cache.get(id);
        if (shown !== undefined) all.set(id, shown);
      }
      const vanished = rewind ? [...this.cache.values()].filter((record) => !all.has(record.id)) : [];
      this.cache.replace(all, sameRecord);
      // A write whose entry this reset did not hold (deleted meanwhile) is not waited for any longer.
      this.cache.forgetWrites();
      // A reset is the whole prefix as of its index, so the informer is exactly there now.
      this.index = step.index;
      if (rewind) this.rewound.next({ previousIndex, index: step.index, vanished });
    } else {
      const settled = new Set(this.cache.settledUpTo(step.index));
      for (const change of step.changes) {
        const id = (change.type === 'put' ? change.entry.key : change.key).slice(this.prefix.length);
        // A listing older than a write shown ahead of it says nothing about that key.
        if (this.cache.aheadOf(id) !== undefined) continue;
        if (settled.delete(id) && change.type === 'put' && change.entry.modifyIndex === this.cache.get(id)?.entry.modifyIndex) {
          this.cache.announceBroughtBack(id);
          continue;
        }
        if (change.type === 'put') {
          const decoded = this.toRecord(change.entry);
          if (decoded) this.cache.upsert(decoded.record.id, decoded.record, decoded.echo);
        } else {
          this.cache.remove(id);
        }
      }
      // A write shown ahead that the watch, now past it, neither brought back nor changed was never in the
      // view it compares listings with, and is gone from the store: deleted by someone else meanwhile.
      for (const id of settled) this.cache.remove(id);
      this.index = Math.max(this.index, step.index);
    }
    this.cache.watchedIndex = this.index;
  }

  /** The entry as cached, and whether it is the echo of this process's own write. */
  private toRecord(entry: KvEntry): { record: CachedRecord<T>; echo: boolean } | undefined {
    const id = entry.key.slice(this.prefix.length);
    // Nothing of ours nests below an object's key; anything deeper is someone else's and is ignored.
    if (id === '' || id.includes('/')) return undefined;
    const { value: json, ...meta } = entry;
    const written = this.cache.takeWritten(id, json);
    if (written !== undefined) return { record: { id, entry: meta, value: written }, echo: true };
    try {
      return { record: { id, entry: meta, value: this.decode(json, id) }, echo: false };
    } catch (error) {
      return { record: { id, entry: meta, error: (error as Error).message }, echo: false };
    }
  }
}

/**
 * Whether a reset left a record as it was: same indexes, and (for a store rebuilt with colliding indexes)
 * the same decoded content. Resets are rare (start, a resumed watch the store could not replay, a rewind).
 */
function sameRecord<T>(a: CachedRecord<T>, b: CachedRecord<T>): boolean {
  return (
    a.entry.modifyIndex === b.entry.modifyIndex &&
    a.entry.createIndex === b.entry.createIndex &&
    a.entry.session === b.entry.session &&
    a.error === b.error &&
    JSON.stringify(a.value) === JSON.stringify(b.value)
  );
}

/** Mirrors the scheduler's workloads (jobs carrying our marker) into a Cache keyed by session id. */
export class WorkloadInformer extends Informer<WorkloadStep, Workload> {
  constructor(scheduler: Scheduler, log: Logger) {
    super(new Cache<Workload>(), () => scheduler.watch(), log, 'workloads');
  }

  protected apply(step: WorkloadStep): void {
    if (step.kind === 'reset') {
      this.cache.replace(new Map(step.workloads.map((w) => [w.sessionId, w])), (a, b) => JSON.stringify(a) === JSON.stringify(b));
    } else if (step.kind === 'upsert') {
      this.cache.upsert(step.workload.sessionId, step.workload);
    } else {
      this.cache.remove(step.sessionId);
    }
  }
}
