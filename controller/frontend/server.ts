import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { ErrorObject } from 'ajv';
import { describeErrors, encodeRecord, parseRecord, validate, ValidationError } from '../api/schemas.js';
import { resolveParameters } from '../api/templates.js';
import type { ActivityRecord, Session, SessionRecord, SessionStatus, SessionTemplate } from '../api/types.js';
import { KeyedSerializer } from '../util/keyed-serializer.js';
import type { Logger } from '../util/log.js';
import type { Store } from '../store/store.js';
import { newSessionId } from '../controller/claims.js';
import { StoreInformer } from '../controller/informer.js';
import type { Keys } from '../controller/keys.js';
import { pendingStatus } from '../controller/status.js';

export interface FrontendOptions {
  readonly store: Store;
  readonly keys: Keys;
  readonly templates: ReadonlyMap<string, SessionTemplate>;
  /** The template backend this deployment runs (`spec.backends.<kind>`). */
  readonly backend: 'embedded' | 'nomad';
  readonly bodyLimitBytes: number;
  /** Live sessions one user may have (not being deleted, not Failed). */
  readonly sessionsPerUser: number;
  /** Activity is stored at most this often per session, except while the session is being warned. */
  readonly activityWriteIntervalMs: number;
  readonly log: Logger;
  readonly now?: () => number;
}

/** An API error: the status code, a sentence for humans, and the offending fields. */
export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
    readonly details: string[] = [],
    /** Machine-readable fields added to the error body (e.g. the ids of the sessions in the way). */
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

const userPattern = /^[A-Za-z0-9._@-]{1,128}$/;
const idPattern = /^[a-z0-9]{8,40}$/;
const createBodySchema = {
  type: 'object',
  additionalProperties: false,
  required: ['template'],
  properties: {
    template: { type: 'string', minLength: 1, maxLength: 64 },
    parameters: { type: 'object', maxProperties: 64, additionalProperties: { type: 'string', maxLength: 256 } },
    labels: { type: 'object' },
  },
} as const;

interface CreateBody {
  template: string;
  parameters?: Record<string, string>;
  labels?: Record<string, string>;
}

/**
 * The thin HTTP front end: it validates requests, writes session records and reads sessions back.
 * It holds no state of its own beyond a watch-fed cache used for listing.
 */
export class Frontend {
  readonly app: FastifyInstance;
  private readonly sessions: StoreInformer<SessionRecord>;
  private readonly statuses: StoreInformer<SessionStatus>;
  private readonly activities: StoreInformer<ActivityRecord>;
  /** One create at a time per user in this process, so a double click cannot pass the per-user limit. */
  private readonly createsByOwner = new KeyedSerializer();
  /** Sessions this process created that its cache has not shown yet, by owner. */
  private readonly createdNotCached = new Map<string, Set<string>>();
  private readonly now: () => number;

  constructor(private readonly options: FrontendOptions) {
    const log = options.log.child({ component: 'frontend' });
    this.now = options.now ?? Date.now;
    this.sessions = new StoreInformer(options.store, options.keys.sessions, (json) => parseRecord<SessionRecord>('session', json), log);
    this.statuses = new StoreInformer(options.store, options.keys.statuses, (json) => parseRecord<SessionStatus>('session-status', json), log);
    this.activities = new StoreInformer(options.store, options.keys.activities, (json) => parseRecord<ActivityRecord>('activity', json), log);
    this.sessions.cache.changes.subscribe(({ id, current }) => {
      const owner = current?.value?.metadata.owner;
      if (owner !== undefined) this.forgetCreated(owner, id);
    });
    this.app = Fastify({
      loggerInstance: log as FastifyBaseLogger,
      bodyLimit: options.bodyLimitBytes,
      // Each request is not logged; the handlers log what changed (created, deleted) and every failure.
      logController: new LogController({ disableRequestLogging: true }),
      // Reject what the schemas do not allow instead of silently dropping or coercing it.
      ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: true } },
    });
    // JSON only: anything else is answered 415 rather than read as text.
    this.app.removeContentTypeParser('text/plain');
    this.app.setErrorHandler((error: FastifyError, request, reply) => this.sendError(error, request, reply));
    this.app.setNotFoundHandler((request, reply) => {
      void reply.code(404).send({ error: `no route ${request.method} ${request.url}`, details: [] });
    });
    this.routes();
  }

  async start(host: string, port: number): Promise<string> {
    const informers = [this.sessions, this.statuses, this.activities];
    for (const informer of informers) informer.start();
    await Promise.all(informers.map((informer) => informer.synced));
    return this.app.listen({ host, port });
  }

  async stop(): Promise<void> {
    await this.app.close();
    for (const informer of [this.sessions, this.statuses, this.activities]) informer.stop();
  }

  private routes(): void {
    const { app } = this;
    app.get('/healthz', async () => ({ ok: true }));

    app.get('/api/v1/templates', async () => [...this.options.templates.values()].map((template) => this.describeTemplate(template)));

    app.get<{ Params: { name: string } }>('/api/v1/templates/:name', async (request) => {
      const template = this.options.templates.get(request.params.name);
      if (!template) throw new ApiError(404, `template "${request.params.name}" not found`);
      return this.describeTemplate(template);
    });

    app.post<{ Body: CreateBody }>('/api/v1/sessions', { schema: { body: createBodySchema } }, async (request, reply) => {
      const owner = userOf(request);
      const record = this.newRecord(owner, request.body);
      await this.createsByOwner.run(owner, async () => {
        const existing = this.liveSessionsOf(owner);
        if (existing.length >= this.options.sessionsPerUser) {
          throw new ApiError(409, `user ${owner} already has ${existing.length} session(s), the most allowed; delete one first`, existing.map((id) => `existing session: ${id}`), { existing });
        }
        const key = this.options.keys.session(record.metadata.id);
        if (!(await this.options.store.put(key, JSON.stringify(record), { cas: 0 }))) {
          throw new ApiError(409, 'session id collision; try again');
        }
        if (this.sessions.cache.get(record.metadata.id) === undefined) {
          const created = this.createdNotCached.get(owner) ?? new Set<string>();
          this.createdNotCached.set(owner, created.add(record.metadata.id));
        }
      });
      request.log.info({ session: record.metadata.id, owner, template: record.spec.template }, 'session created');
      const session: Session = { ...record, status: pendingStatus() };
      return reply.code(201).header('location', `/api/v1/sessions/${record.metadata.id}`).send(session);
    });

    app.get('/api/v1/sessions', async (request) => {
      const owner = userOf(request);
      const sessions: Session[] = [];
      for (const cached of this.sessions.cache.values()) {
        if (cached.value?.metadata.owner !== owner) continue;
        sessions.push({ ...cached.value, status: this.statuses.cache.get(cached.id)?.value ?? pendingStatus() });
      }
      sessions.sort((a, b) => a.metadata.createdAt.localeCompare(b.metadata.createdAt) || a.metadata.id.localeCompare(b.metadata.id));
      return { items: sessions };
    });

    app.get<{ Params: { id: string } }>('/api/v1/sessions/:id', async (request) => {
      const { session } = await this.readOwned(userOf(request), request.params.id);
      return session;
    });

    app.delete<{ Params: { id: string } }>('/api/v1/sessions/:id', async (request, reply) => {
      const owner = userOf(request);
      // Retry on a lost compare-and-set: the controller may be writing the same record concurrently.
      for (let attempt = 0; attempt < 5; attempt++) {
        const { session, modifyIndex } = await this.readOwned(owner, request.params.id);
        if (session.metadata.deletionRequestedAt !== undefined) return reply.code(202).send(session);
        const record: SessionRecord = {
          metadata: { ...session.metadata, deletionRequestedAt: new Date(this.now()).toISOString(), deletionReason: 'Deleted' },
          spec: session.spec,
        };
        if (await this.options.store.put(this.options.keys.session(session.metadata.id), encodeRecord('session', record), { cas: modifyIndex })) {
          request.log.info({ session: session.metadata.id, owner }, 'session deletion requested');
          return reply.code(202).send({ ...record, status: session.status });
        }
      }
      throw new ApiError(409, 'the session changed repeatedly while deleting it; try again');
    });

    app.post<{ Params: { id: string } }>('/api/v1/sessions/:id/keepalive', async (request) => {
      const { session } = await this.readOwned(userOf(request), request.params.id);
      if (session.metadata.deletionRequestedAt !== undefined) throw new ApiError(409, `session "${session.metadata.id}" is being deleted`);
      const lastActivityAt = await this.recordActivity(session);
      return { id: session.metadata.id, lastActivityAt, ...(session.status.expiresAt === undefined ? {} : { expiresAt: session.status.expiresAt }) };
    });
  }

  /**
   * Stores the user's activity for the controller's idle clock, at most once per write interval per
   * session, but always while the session is being warned (the answer to a warning must never be lost).
   */
  private async recordActivity(session: Session): Promise<string> {
    const id = session.metadata.id;
    const key = this.options.keys.activity(id);
    const now = this.now();
    const warned = session.status.conditions.some((condition) => condition.type === 'IdleWarning' && condition.status === 'True');
    for (let attempt = 0; attempt < 5; attempt++) {
      const stored = await this.options.store.get(key);
      let previous: number | undefined;
      try {
        previous = stored ? Date.parse(parseRecord<ActivityRecord>('activity', stored.value).lastActivityAt) : undefined;
      } catch (error) {
        this.options.log.warn({ err: error, session: id }, 'unreadable activity record; replacing it');
      }
      if (previous !== undefined && !warned && now - previous < this.options.activityWriteIntervalMs) return new Date(previous).toISOString();
      if (previous !== undefined && previous >= now) return new Date(previous).toISOString();
      const lastActivityAt = new Date(now).toISOString();
      if (await this.options.store.put(key, encodeRecord('activity', { lastActivityAt }), { cas: stored?.modifyIndex ?? 0 })) return lastActivityAt;
    }
    throw new ApiError(409, 'the activity record changed repeatedly; try again');
  }

  /** The user's sessions that count against the per-user limit, oldest first. */
  private liveSessionsOf(owner: string): string[] {
    const live: Array<{ id: string; createdAt: string }> = [];
    for (const cached of this.sessions.cache.values()) {
      const record = cached.value;
      if (record?.metadata.owner !== owner || record.metadata.deletionRequestedAt !== undefined) continue;
      const status = this.statuses.cache.get(cached.id)?.value;
      if (status?.phase === 'Failed') continue;
      live.push({ id: cached.id, createdAt: record.metadata.createdAt });
    }
    live.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
    return [...live.map((entry) => entry.id), ...(this.createdNotCached.get(owner) ?? [])];
  }

  private forgetCreated(owner: string, id: string): void {
    const created = this.createdNotCached.get(owner);
    if (created?.delete(id) && created.size === 0) this.createdNotCached.delete(owner);
  }

  private describeTemplate(template: SessionTemplate): object {
    const runsHere = template.spec.backends[this.options.backend] !== undefined;
    return {
      name: template.metadata.name,
      description: template.metadata.description ?? '',
      parameters: template.spec.parameters.map(({ name, description, enum: values, default: byDefault }) => ({
        name,
        description: description ?? '',
        enum: values,
        default: byDefault,
      })),
      services: template.spec.services.map(({ name, description, expose }) => ({ name, description: description ?? '', protocol: expose })),
      available: runsHere,
      ...(runsHere ? {} : { unavailableReason: this.unavailableReason(template) }),
    };
  }

  private unavailableReason(template: SessionTemplate): string {
    const backends = Object.keys(template.spec.backends).join(', ');
    return `template "${template.metadata.name}" runs only on the ${backends} backend; this Manticore runs the ${this.options.backend} backend`;
  }

  private newRecord(owner: string, body: CreateBody): SessionRecord {
    const template = this.options.templates.get(body.template);
    if (!template) {
      throw new ApiError(400, `unknown template "${body.template}"`, [
        `/template: must be one of ${[...this.options.templates.keys()].join(', ')}`,
      ]);
    }
    if (template.spec.backends[this.options.backend] === undefined) {
      throw new ApiError(400, this.unavailableReason(template), ['/template: not available on this backend']);
    }
    const parameters = resolveParameters(template, body.parameters ?? {});
    const record: SessionRecord = {
      metadata: { id: newSessionId(), owner, createdAt: new Date().toISOString(), generation: 1 },
      spec: { template: template.metadata.name, parameters },
    };
    if (body.labels !== undefined) record.metadata.labels = body.labels;
    return validate<SessionRecord>('session', record, 'session');
  }

  /** Reads a session the caller owns; someone else's session answers exactly like a missing one. */
  private async readOwned(owner: string, id: string): Promise<{ session: Session; modifyIndex: number }> {
    const notFound = new ApiError(404, `session "${id}" not found`);
    if (!idPattern.test(id)) throw notFound;
    const [entry, statusEntry] = await Promise.all([
      this.options.store.get(this.options.keys.session(id)),
      this.options.store.get(this.options.keys.status(id)),
    ]);
    if (!entry) throw notFound;
    let record: SessionRecord;
    try {
      record = parseRecord<SessionRecord>('session', entry.value);
    } catch {
      throw notFound;
    }
    if (record.metadata.owner !== owner) throw notFound;
    let status = pendingStatus();
    if (statusEntry) {
      try {
        status = parseRecord<SessionStatus>('session-status', statusEntry.value);
      } catch (error) {
        this.options.log.warn({ err: error, session: id }, 'unreadable status record');
      }
    }
    return { session: { ...record, status }, modifyIndex: entry.modifyIndex };
  }

  private sendError(error: FastifyError | ApiError | ValidationError | Error, request: FastifyRequest, reply: FastifyReply): void {
    if (error instanceof ApiError) {
      void reply.code(error.statusCode).send({ error: error.message, details: error.details, ...error.extra });
      return;
    }
    if (error instanceof ValidationError) {
      void reply.code(400).send({ error: error.message, details: error.problems });
      return;
    }
    const fastifyError = error as FastifyError;
    if (fastifyError.validation) {
      const details = describeErrors(fastifyError.validation as ErrorObject[]).map((problem) => `/body${problem.startsWith('(root)') ? problem.slice(6) : problem}`);
      void reply.code(400).send({ error: 'invalid request body', details });
      return;
    }
    if (fastifyError.statusCode !== undefined && fastifyError.statusCode >= 400 && fastifyError.statusCode < 500) {
      void reply.code(fastifyError.statusCode).send({ error: fastifyError.message, details: [] });
      return;
    }
    request.log.error({ err: error, url: request.url, method: request.method }, 'request failed');
    void reply.code(503).send({ error: 'the service could not complete the request; try again', details: [] });
  }
}

/** Until authentication arrives, the caller is named by a header; the anonymous user otherwise. */
function userOf(request: FastifyRequest): string {
  const header = request.headers['x-manticore-user'];
  if (header === undefined) return 'anonymous';
  if (typeof header !== 'string' || !userPattern.test(header)) {
    throw new ApiError(400, 'invalid X-Manticore-User header', ['X-Manticore-User: 1 to 128 characters of A-Z a-z 0-9 . _ @ -']);
  }
  return header;
}
