import { filter, firstValueFrom, merge, Observable, startWith, timeout } from 'rxjs';
import { encodeRecord, parseRecord, validate } from '../api/schemas.js';
import { resolveParameters } from '../api/templates.js';
import type { ActivityRecord, Session, SessionRecord, SessionStatus, SessionTemplate } from '../api/types.js';
import { newSessionId } from '../controller/claims.js';
import { StoreInformer, type CachedRecord } from '../controller/informer.js';
import type { Keys } from '../controller/keys.js';
import { expiryOf, idleTimeoutProblem, sessionExpiryPolicy, type ExpiryPolicy } from '../controller/lifecycle.js';
import { pendingStatus } from '../controller/status.js';
import type { Store } from '../store/store.js';
import type { Logger } from '../util/log.js';
import { ApiError } from './errors.js';
import type { Identity } from './identity.js';

export interface SessionServiceOptions {
  readonly store: Store;
  readonly keys: Keys;
  readonly templates: ReadonlyMap<string, SessionTemplate>;
  /** The template backend this deployment runs (`spec.backends.<kind>`). */
  readonly backend: 'embedded' | 'nomad';
  /** Live sessions one user may have (not being deleted, not Failed). */
  readonly sessionsPerUser: number;
  /** Activity is stored at most this often per session, except while the session is being warned. */
  readonly activityWriteIntervalMs: number;
  /** The controller's idle and lifetime limits: what a create may ask for, and when a keepalive says the session now expires. */
  readonly expiry: ExpiryPolicy;
  readonly log: Logger;
  readonly now: () => number;
}

export interface NewSession {
  readonly template: string;
  readonly parameters?: Record<string, string>;
  readonly labels?: Record<string, string>;
  /** The session's own idle timeout, within the operator's limits. */
  readonly idle?: { readonly timeoutSeconds: number };
}

/** What create() made: the session, and the same as the JSON the API answers with. */
export interface CreatedSession {
  readonly session: Session;
  readonly json: string;
}

const idPattern = /^[a-z0-9]{8,40}$/;
/** How long catchUp() waits for the watch to bring what the store holds: it normally takes milliseconds. */
export const CATCH_UP_TIMEOUT_MS = 5_000;
/** A new session's status, serialised once: an answer to a create is its record's JSON with this appended. */
const pendingStatusJson = JSON.stringify(pendingStatus());

/**
 * What the front end does with sessions, whichever API is asked (v1 or the v2 compatibility layer):
 * create within the per-user limit, read and list what the caller may see, request deletion, record
 * activity. It keeps one watch per prefix for the whole process (sessions, statuses, activity), which every
 * request and every status stream shares.
 */
export class SessionService {
  readonly sessions: StoreInformer<SessionRecord>;
  readonly statuses: StoreInformer<SessionStatus>;
  /**
   * Sessions this process is creating or created that its cache has not shown yet, by owner, each with
   * whether its write has completed: counted against the per-user limit from before their write, so a
   * double click cannot pass it.
   */
  private readonly createdNotCached = new Map<string, Map<string, boolean>>();
  /** What watch() subscribers want to hear about, by session id. */
  private readonly listeners = new Map<string, Set<() => void>>();
  /** The cached sessions' ids by owner: a user's sessions are found without walking everyone's. */
  private readonly owners = new OwnerIndex();
  /** The catchUpAll() round callers join now, which reads the store only after they came; and the one reading. */
  private pendingRound: Promise<void> | undefined;
  private runningRound: Promise<void> = Promise.resolve();

  constructor(private readonly options: SessionServiceOptions) {
    const log = options.log;
    this.sessions = new StoreInformer(options.store, options.keys.sessions, (json) => parseRecord<SessionRecord>('session', json), log);
    this.statuses = new StoreInformer(options.store, options.keys.statuses, (json) => parseRecord<SessionStatus>('session-status', json), log);
    // Neither is shown as it is stored: say so, or an operator looking for the session finds nothing in this log.
    this.sessions.reportUnreadable(log, 'unreadable session record: not listed or shown until it is fixed (the controller reports it in its status)');
    this.statuses.reportUnreadable(log, 'unreadable status record: its session shows as Pending until the controller writes it again');
    this.sessions.cache.changes.subscribe(({ id, previous, current }) => {
      const owner = current?.value?.metadata.owner;
      this.owners.update(id, previous?.value?.metadata.owner, owner);
      if (owner !== undefined) this.forgetCreated(owner, id);
    });
    // One subscription for every stream of the process, dispatched by session id.
    merge(this.sessions.cache.changes, this.statuses.cache.changes).subscribe(({ id }) => {
      for (const listener of [...(this.listeners.get(id) ?? [])]) listener();
    });
  }

  async start(): Promise<void> {
    for (const informer of [this.sessions, this.statuses]) informer.start();
    await Promise.all([this.sessions.synced, this.statuses.synced]);
  }

  stop(): void {
    for (const informer of [this.sessions, this.statuses]) informer.stop();
  }

  get templates(): ReadonlyMap<string, SessionTemplate> {
    return this.options.templates;
  }

  /** The template backend this deployment runs. */
  get backend(): 'embedded' | 'nomad' {
    return this.options.backend;
  }

  /** The operator's limits every create is held to: live sessions per user, and the idle and lifetime policy. */
  get limits(): Pick<SessionServiceOptions, 'sessionsPerUser' | 'expiry'> {
    return this.options;
  }

  /** Why a template cannot run here, or undefined when it can. */
  unavailableReason(template: SessionTemplate): string | undefined {
    if (template.spec.backends[this.options.backend] !== undefined) return undefined;
    const backends = Object.keys(template.spec.backends).join(', ');
    return `template "${template.metadata.name}" runs only on the ${backends} backend; this Manticore runs the ${this.options.backend} backend`;
  }

  /** Writes a new session record for `owner`; 409 with the existing ids beyond the per-user limit. */
  async create(owner: string, request: NewSession): Promise<CreatedSession> {
    const record = this.newRecord(owner, request);
    const { id } = record.metadata;
    if (this.liveSessionsOf(owner).length >= this.options.sessionsPerUser) await this.forgetVanished(owner);
    // Checked and reserved in one synchronous step: a create of the same user arriving meanwhile sees it.
    const existing = this.liveSessionsOf(owner);
    if (existing.length >= this.options.sessionsPerUser) {
      throw new ApiError(409, `user ${owner} already has ${existing.length} session(s), the most allowed; delete one first`, existing.map((id) => `existing session: ${id}`), { existing });
    }
    this.createdNotCached.set(owner, (this.createdNotCached.get(owner) ?? new Map<string, boolean>()).set(id, false));
    // Serialised once: for the store, for this process's cache (which takes the record as it is), and for the answer.
    const json = JSON.stringify(record);
    this.sessions.cache.writing(id, json, record);
    try {
      if (!(await this.options.store.put(this.options.keys.session(id), json, { cas: 0 }))) throw new ApiError(409, 'session id collision; try again');
    } catch (error) {
      this.forgetCreated(owner, id);
      this.sessions.cache.writeFailed(id, json);
      throw error;
    }
    const created = this.createdNotCached.get(owner);
    if (created?.has(id)) created.set(id, true);
    this.options.log.info({ session: id, owner, template: record.spec.template }, 'session created');
    return { session: { ...record, status: pendingStatus() }, json: `${json.slice(0, -1)},"status":${pendingStatusJson}}` };
  }

  /** The sessions the caller may see (an operator sees everyone's), oldest first. */
  list(identity: Identity): Session[] {
    const sessions: Session[] = [];
    for (const cached of this.visibleTo(identity)) {
      if (cached.value === undefined || !mayAccess(identity, cached.value)) continue;
      sessions.push({ ...cached.value, status: this.statuses.cache.get(cached.id)?.value ?? pendingStatus() });
    }
    return sessions.sort((a, b) => a.metadata.createdAt.localeCompare(b.metadata.createdAt) || a.metadata.id.localeCompare(b.metadata.id));
  }

  /**
   * A session the caller may see, to show it (`GET`, a stream's first state): from this process's watch-fed
   * caches, which hold every session already decoded and cost no store round trip (two Consul requests),
   * and from the store only when the cache has not seen the session yet (created a moment ago, perhaps
   * through another replica). What the caches show may trail the store by the watch's delay, as streams do.
   */
  async show(identity: Identity, id: string): Promise<Session> {
    if (!idPattern.test(id)) throw notFound(id);
    const record = this.sessions.cache.get(id)?.value;
    if (record === undefined) return (await this.read(identity, id)).session;
    if (!mayAccess(identity, record)) throw notFound(id);
    return { ...record, status: this.statuses.cache.get(id)?.value ?? pendingStatus() };
  }

  /**
   * Reads a session the caller may see from the store itself, with the index a compare-and-set needs;
   * someone else's session answers exactly like a missing one.
   */
  async read(identity: Identity, id: string): Promise<{ session: Session; modifyIndex: number }> {
    if (!idPattern.test(id)) throw notFound(id);
    const [entry, statusEntry] = await Promise.all([this.options.store.get(this.options.keys.session(id)), this.options.store.get(this.options.keys.status(id))]);
    if (!entry) throw notFound(id);
    let record: SessionRecord;
    try {
      record = parseRecord<SessionRecord>('session', entry.value);
    } catch {
      throw notFound(id);
    }
    if (!mayAccess(identity, record)) throw notFound(id);
    let status = pendingStatus();
    if (statusEntry) {
      try {
        status = parseRecord<SessionStatus>('session-status', statusEntry.value);
      } catch {
        // Shown as Pending: the statuses cache logs the record once, not at every request that reads it.
      }
    }
    return { session: { ...record, status }, modifyIndex: entry.modifyIndex };
  }

  /**
   * The session as it changes, from this process's shared caches (no watch of its own): the current
   * session at once, then again whenever its record or status changes; `undefined` and completion once it
   * is gone. The caller must already have checked that the identity may see it, and passes the session
   * it read then as `read`.
   */
  watch(id: string, read?: Session): Observable<Session | undefined> {
    return new Observable<Session | undefined>((subscriber) => {
      // A session just read from the store may not be in this process's cache yet: until the cache has
      // shown it, its absence means "not seen yet", not "gone".
      let seen = read === undefined;
      let statusShown = false;
      const emit = (): void => {
        const record = this.sessions.cache.get(id)?.value;
        const status = this.statuses.cache.get(id)?.value;
        // The controller removes a session's status and record together, but each comes through its own
        // watch: a status gone while the record stays is half of the removal, not the session Pending again.
        if (record !== undefined && status === undefined && statusShown) return;
        statusShown ||= record !== undefined && status !== undefined;
        const session = record === undefined ? undefined : { ...record, status: status ?? pendingStatus() };
        if (session === undefined && !seen) {
          subscriber.next(read);
          return;
        }
        seen = true;
        subscriber.next(session);
        if (session === undefined) subscriber.complete();
      };
      const listeners = this.listeners.get(id) ?? new Set<() => void>();
      this.listeners.set(id, listeners.add(emit));
      emit();
      return () => {
        listeners.delete(emit);
        if (listeners.size === 0 && this.listeners.get(id) === listeners) this.listeners.delete(id);
      };
    });
  }

  /**
   * Waits until this process's cache shows the session as the store holds it now, so that what is read
   * from the caches next includes every change to it acknowledged before the call (a deletion just
   * requested, through this replica or another). 503 when the watch does not get there in time.
   */
  async catchUp(id: string): Promise<void> {
    const stored = await this.options.store.get(this.options.keys.session(id));
    const shown = (): boolean => {
      const cached = this.sessions.cache.get(id);
      return stored === undefined ? cached === undefined : cached !== undefined && cached.entry.modifyIndex >= stored.modifyIndex;
    };
    await this.awaitCache(shown, `the latest change to session "${id}"`, { session: id, storedIndex: stored?.modifyIndex });
  }

  /**
   * Waits until this process's sessions cache shows every session the store holds now: one created a moment
   * ago through another replica, say. It costs a listing of the sessions' keys, so callers arriving together
   * share one (a round reads the store only after everyone who joined it came), however many there are.
   * 503 when the watch does not get there in time.
   */
  catchUpAll(): Promise<void> {
    this.pendingRound ??= this.runningRound.then(() => {
      this.pendingRound = undefined;
      const round = this.catchUpRound();
      // The next round begins once this one has ended, whether it succeeded or not.
      this.runningRound = round.catch(() => undefined);
      return round;
    });
    return this.pendingRound;
  }

  private async catchUpRound(): Promise<void> {
    const read = await this.options.store.prefixIndex(this.options.keys.sessions);
    await this.awaitCache(() => this.sessions.caughtUpWith(read), 'the latest sessions', { storeIndex: read.index });
  }

  /** Waits until `shown` holds of the sessions cache; 503, saying it has not yet seen `what`, when its watch does not get there in time. */
  private async awaitCache(shown: () => boolean, what: string, context: Record<string, unknown>): Promise<void> {
    try {
      await firstValueFrom(this.sessions.applied.pipe(startWith(undefined), filter(shown), timeout({ first: CATCH_UP_TIMEOUT_MS })));
    } catch (error) {
      this.options.log.warn({ err: error, ...context, cacheIndex: this.sessions.index }, 'the sessions cache did not catch up with the store');
      throw new ApiError(503, `this front end has not yet seen ${what}; try again`);
    }
  }

  /** Requests deletion (idempotent); the controller tears the session down and removes it. */
  async delete(identity: Identity, id: string): Promise<Session> {
    // Retry on a lost compare-and-set: the controller may be writing the same record concurrently.
    for (let attempt = 0; attempt < 5; attempt++) {
      const { session, modifyIndex } = await this.read(identity, id);
      if (session.metadata.deletionRequestedAt !== undefined) return session;
      const record: SessionRecord = {
        metadata: { ...session.metadata, deletionRequestedAt: new Date(this.options.now()).toISOString(), deletionReason: 'Deleted' },
        spec: session.spec,
      };
      if (await this.options.store.put(this.options.keys.session(id), encodeRecord('session', record), { cas: modifyIndex })) {
        this.options.log.info({ session: id, by: identity.user }, 'session deletion requested');
        return { ...record, status: session.status };
      }
    }
    throw new ApiError(409, 'the session changed repeatedly while deleting it; try again');
  }

  /** The idle and lifetime limits the session runs under, as the controller applies them. */
  expiryPolicyOf(session: SessionRecord): ExpiryPolicy {
    return sessionExpiryPolicy(this.options.expiry, session.spec);
  }

  /**
   * Records the user's activity on a session they may see; returns the stored activity time and, once the
   * session has served, the expiry it gives. That expiry is computed here as the controller will compute it
   * (expiryOf): the status read before the write still shows the deadline before this activity.
   */
  async keepalive(identity: Identity, id: string): Promise<{ session: Session; lastActivityAt: string; expiresAt?: string }> {
    const { session } = await this.read(identity, id);
    if (session.metadata.deletionRequestedAt !== undefined) throw new ApiError(409, `session "${id}" is being deleted`);
    const lastActivityAt = await this.recordActivity(session);
    // A Failed session still says when it was Ready, but it goes at the end of its retention, not by activity.
    const readyAt = session.status.phase === 'Failed' ? undefined : session.status.readyAt;
    const expiry = readyAt === undefined ? undefined : expiryOf(this.expiryPolicyOf(session), Date.parse(readyAt), Date.parse(lastActivityAt));
    return { session, lastActivityAt, ...(expiry === undefined ? {} : { expiresAt: new Date(expiry.at).toISOString() }) };
  }

  /**
   * Stores the user's activity for the controller's idle clock, at most once per write interval per
   * session, but always while the session is being warned (the answer to a warning must never be lost).
   */
  private async recordActivity(session: Session): Promise<string> {
    const id = session.metadata.id;
    const key = this.options.keys.activity(id);
    const now = this.options.now();
    const warned = session.status.conditions.some((condition) => condition.type === 'IdleWarning' && condition.status === 'True');
    for (let attempt = 0; attempt < 5; attempt++) {
      const stored = await this.options.store.get(key);
      let previous: number | undefined;
      try {
        previous = stored ? Date.parse(parseRecord<ActivityRecord>('activity', stored.value).lastActivityAt) : undefined;
      } catch (error) {
        this.options.log.warn({ err: error, session: id }, 'unreadable activity record; replacing it');
      }
      if (previous !== undefined && (previous >= now || (!warned && now - previous < this.options.activityWriteIntervalMs))) {
        return new Date(previous).toISOString();
      }
      const lastActivityAt = new Date(now).toISOString();
      if (await this.options.store.put(key, encodeRecord('activity', { lastActivityAt }), { cas: stored?.modifyIndex ?? 0 })) return lastActivityAt;
    }
    throw new ApiError(409, 'the activity record changed repeatedly; try again');
  }

  /** The user's sessions that count against the per-user limit, oldest first. */
  liveSessionsOf(owner: string): string[] {
    const live: Array<{ id: string; createdAt: string }> = [];
    for (const cached of this.cachedOf(owner)) {
      const record = cached.value;
      if (record?.metadata.owner !== owner || record.metadata.deletionRequestedAt !== undefined) continue;
      if (this.statuses.cache.get(cached.id)?.value?.phase === 'Failed') continue;
      live.push({ id: cached.id, createdAt: record.metadata.createdAt });
    }
    live.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
    return [...live.map((entry) => entry.id), ...(this.createdNotCached.get(owner)?.keys() ?? [])];
  }

  /** The cached sessions an identity may see: everyone's for an operator, else the user's own. */
  private visibleTo(identity: Identity): Iterable<CachedRecord<SessionRecord>> {
    return identity.operator ? this.sessions.cache.values() : this.cachedOf(identity.user);
  }

  private *cachedOf(owner: string): Iterable<CachedRecord<SessionRecord>> {
    for (const id of this.owners.of(owner)) {
      const cached = this.sessions.cache.get(id);
      if (cached !== undefined) yield cached;
    }
  }

  /**
   * Forgets the sessions `owner` created here, written, that the store no longer holds: created and removed
   * between two of the watch's listings, they were never shown by the cache and never will be.
   */
  private async forgetVanished(owner: string): Promise<void> {
    const written = [...(this.createdNotCached.get(owner) ?? [])].filter(([, done]) => done).map(([id]) => id);
    await Promise.all(
      written.map(async (id) => {
        if ((await this.options.store.get(this.options.keys.session(id))) === undefined) this.forgetCreated(owner, id);
      }),
    );
  }

  private forgetCreated(owner: string, id: string): void {
    const created = this.createdNotCached.get(owner);
    if (created?.delete(id) && created.size === 0) this.createdNotCached.delete(owner);
  }

  private newRecord(owner: string, request: NewSession): SessionRecord {
    const template = this.options.templates.get(request.template);
    if (!template) {
      throw new ApiError(400, `unknown template "${request.template}"`, [`/template: must be one of ${[...this.options.templates.keys()].join(', ')}`]);
    }
    const unavailable = this.unavailableReason(template);
    if (unavailable !== undefined) throw new ApiError(400, unavailable, ['/template: not available on this backend']);
    const parameters = resolveParameters(template, request.parameters ?? {});
    if (request.idle !== undefined) {
      const { timeoutSeconds } = request.idle;
      const problem = idleTimeoutProblem(this.options.expiry, timeoutSeconds);
      if (problem !== undefined) {
        throw new ApiError(400, `idle.timeoutSeconds ${timeoutSeconds} is outside this Manticore's limits: it ${problem}`, [`/idle/timeoutSeconds: ${problem}`]);
      }
    }
    const now = this.options.now();
    const record: SessionRecord = {
      metadata: { id: newSessionId(now), owner, createdAt: new Date(now).toISOString(), generation: 1 },
      spec: { template: template.metadata.name, parameters, ...(request.idle === undefined ? {} : { idle: { timeoutSeconds: request.idle.timeoutSeconds } }) },
    };
    if (request.labels !== undefined) record.metadata.labels = request.labels;
    return validate<SessionRecord>('session', record, 'session');
  }
}

/** Session ids by owner. */
class OwnerIndex {
  private readonly byOwner = new Map<string, Set<string>>();

  /** Moves `id` from the previous owner's set to the current one's (either may be absent). */
  update(id: string, previous: string | undefined, current: string | undefined): void {
    if (previous === current) return;
    const before = previous === undefined ? undefined : this.byOwner.get(previous);
    if (before?.delete(id) && before.size === 0) this.byOwner.delete(previous!);
    if (current !== undefined) this.byOwner.set(current, (this.byOwner.get(current) ?? new Set<string>()).add(id));
  }

  of(owner: string): ReadonlySet<string> {
    return this.byOwner.get(owner) ?? noIds;
  }
}

const noIds: ReadonlySet<string> = new Set();

/** Made only when thrown: an error captures a stack trace, which costs more than the rest of a read. */
function notFound(id: string): ApiError {
  return new ApiError(404, `session "${id}" not found`);
}

/** Owners see their own sessions; operators see everyone's. */
function mayAccess(identity: Identity, record: SessionRecord): boolean {
  return identity.operator || record.metadata.owner === identity.user;
}
