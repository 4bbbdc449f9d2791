import { randomInt } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Subscription } from 'rxjs';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import type { Condition, Session, SessionRecord, SessionStatus, SessionTemplate } from '../api/types.js';
import type { ExpiryPolicy } from '../controller/lifecycle.js';
import { KeyedSerializer } from '../util/keyed-serializer.js';
import { ApiError } from './errors.js';
import { heartbeatMs } from './events.js';
import type { Authenticator, Identity } from './identity.js';
import { jsonBodyParser } from './json-body.js';
import type { SessionService } from './sessions.js';
import type { StreamCounts } from './stream-limit.js';

export interface ApiV2Options {
  /**
   * Where v2 clients reach this front end's websocket, as POST /api/v2/job answers it. Domain and port are
   * left out when unset: the client then uses the host it POSTed to.
   */
  readonly address: { readonly domain?: string; readonly port?: number; readonly protocol: 'ws' | 'wss' };
}

/** What GET /api/v2/job answers: the choices v2 clients pick from. */
export interface JobOptions {
  readonly core: { readonly versions: readonly string[]; readonly builds: readonly string[] };
  readonly hmis: ReadonlyArray<{ readonly type: string; readonly versions: readonly string[] }>;
}

/** What POST /api/v2/job and POST /api/v2/info answer: how to open the job's websocket. */
export interface JobConnection {
  readonly path: '/api/v2/job/';
  readonly protocol: 'ws' | 'wss';
  readonly passcode: string;
  readonly port?: number;
  readonly domain?: string;
}

/** Whom a job socket reads its session as: its passcode is its authority, whoever the session's owner. */
const passcodeHolder: Identity = { user: 'v2-passcode', operator: true };

/** The template v2 jobs run, and the parameters its job options come from. */
const v2Template = 'sdl';
const parameterNames = ['coreVersion', 'coreBuild', 'hmiType', 'hmiVersion'] as const;

/**
 * The session label holding a v2 session's passcode. On the record, not in one process's memory, so every
 * front-end replica can resolve a passcode and answer /info.
 */
export const passcodeLabel = 'v2-passcode';
const passcodeAlphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const passcodePattern = /^[A-Za-z0-9]{16}$/;
/** v2's id rule; the length bound is the session owner's. */
const idPattern = /^[A-Za-z0-9-]{1,256}$/;
/** A URL whose path is only `/`, without query or fragment: its part before that slash. */
const rootPath = /^([a-z][a-z0-9+.-]*:\/\/[^/?#]+)\/$/i;
/** A form field name with qs's brackets for nesting, `core[version]`. */
const bracketedName = /^([^[\]]+)((?:\[[^[\]]+\])+)$/;
const jobSocketPath = /^\/api\/v2\/job\/([^/?#]*)(?:\?.*)?$/;

/** v2's service names for the `sdl` template's services. */
const serviceNames: ReadonlyArray<readonly [v2Name: string, service: string]> = [
  ['core-broker', 'broker'],
  ['core-tcp', 'tcp'],
  ['core-file', 'file'],
  ['core-log', 'log'],
  ['core-policy', 'policy'],
  ['core-ws-server', 'ws-server'],
  ['core-store', 'store'],
  ['core-python', 'python'],
  ['hmi-user', 'hmi'],
];

/** How long a client has to answer the close handshake when the front end stops, before its socket is cut. */
const closeGraceMs = 2_000;

/**
 * Manticore v2's API, for the clients written against it (the SDL Developer Portal): job options, one job
 * per user id (an `sdl` session labelled with a passcode), and the job's websocket with v2's messages
 * (`position`, `services`, `activity`, `dead`). Everything is read from the process's shared caches, so
 * any replica serves any user and any passcode. CORS is open on `/api/v2/*`, as v2 had it, its 404 and 405
 * answers (`answerNoRoute`) included. A job socket counts among its session owner's status streams (`streams`).
 */
export function registerApiV2(
  app: FastifyInstance,
  sessions: SessionService,
  identify: Authenticator,
  limit: (inner: Authenticator) => Authenticator,
  options: ApiV2Options,
  streams: StreamCounts,
  now: () => number,
  answerNoRoute: (request: FastifyRequest, reply: FastifyReply) => void,
): void {
  const log = app.log.child({ api: 'v2' });
  const job = jobOptionsOf(sessions);
  const passcodes = new PasscodeIndex();
  sessions.sessions.cache.changes.subscribe(({ id, current }) => passcodes.set(id, passcodeOf(current?.value)));
  // One request at a time per user in this process, in arrival order, as v2 applied its batch: a repeated
  // POST gets the first one's passcode, and a DELETE or /info sent while a POST is storing sees its session.
  const byUser = new KeyedSerializer();

  const requireJob = (): JobOptions => {
    if ('unavailable' in job) throw new V2Error(404, job.unavailable);
    return job.options;
  };

  const auth = limit(identify);
  // Rate-limited as the user the body names: a v2 client sends no cookie, so each of its requests would
  // otherwise be a new anonymous user with a full bucket.
  const caller = limit(new V2Caller(identify));
  const userOf = (request: FastifyRequest, reply: FastifyReply): string => caller.identify(request, reply).user;

  /** The user's live v2 sessions (those carrying a passcode), oldest first, as the cache shows them. */
  const cachedJobsOf = (user: string): Array<{ id: string; passcode: string }> =>
    sessions.liveSessionsOf(user).flatMap((id) => {
      const passcode = passcodes.passcodeOf(id);
      return passcode === undefined ? [] : [{ id, passcode }];
    });
  /**
   * As cachedJobsOf, once the cache shows the user's sessions as the store has them: a DELETE answered a
   * moment ago must not leave its session's passcode to be handed out again, to a client told `dead` at
   * once; and a session created a moment ago through another replica must be found (not created twice,
   * not left running by a DELETE).
   */
  const jobsOf = async (user: string): Promise<Array<{ id: string; passcode: string }>> => {
    const cached = cachedJobsOf(user);
    await (cached.length === 0 ? sessions.catchUpAll() : Promise.all(cached.map(({ id }) => sessions.catchUp(id))));
    return cachedJobsOf(user);
  };
  /** The session a passcode opens; one unknown here may be a session's created a moment ago through another replica. */
  const sessionOfPasscode = async (passcode: string): Promise<string | undefined> => {
    if (passcodes.sessionOf(passcode) === undefined && passcodePattern.test(passcode)) await sessions.catchUpAll();
    return passcodes.sessionOf(passcode);
  };

  const connection = (passcode: string): JobConnection => {
    const { domain, port, protocol } = options.address;
    return { path: '/api/v2/job/', protocol, passcode, ...(port === undefined ? {} : { port }), ...(domain === undefined ? {} : { domain }) };
  };

  app.register(
    async (v2) => {
      // v2 clients may send an empty body with a JSON content type; v2 read it as no fields, not as an error.
      const parseJson = jsonBodyParser(v2);
      v2.removeContentTypeParser('application/json');
      v2.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) =>
        body === '' ? done(null, undefined) : parseJson(request, body as string, done),
      );
      v2.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_request, body, done) => done(null, parseForm(body as string)));

      v2.setErrorHandler((error, _request, reply) => {
        // Anything else (401, 409, 429, 503) goes to the front end's handler and keeps its usual shape.
        if (!(error instanceof V2Error)) throw error;
        return reply.code(error.statusCode).send({ error: error.message });
      });
      v2.addHook('onRequest', async (request, reply) => {
        const origin = request.headers.origin;
        if (origin !== undefined) void reply.header('access-control-allow-origin', origin).header('vary', 'Origin');
      });
      // Within this scope, so that the CORS headers above come with it: a cross-origin client reads the status.
      v2.setNotFoundHandler(answerNoRoute);
      v2.options('/*', async (request, reply) =>
        reply
          .code(204)
          .header('access-control-allow-methods', 'GET, POST, DELETE')
          // The headers the page asks for, as v2 allowed them: a client may add its own (a CSRF token).
          .header('access-control-allow-headers', request.headers['access-control-request-headers'] ?? 'content-type, authorization')
          .header('vary', 'Origin, Access-Control-Request-Headers')
          .header('access-control-max-age', '600')
          .send(),
      );

      v2.get('/job', async (request, reply) => {
        auth.identify(request, reply);
        return requireJob();
      });

      v2.post('/job', async (request, reply) => {
        const choices = requireJob();
        const user = userOf(request, reply);
        const checked = validateJob(choices, request.body);
        if ('error' in checked) throw new V2Error(400, checked.error);
        const passcode = await byUser.run(user, async () => {
          const existing = (await jobsOf(user))[0];
          if (existing !== undefined) {
            log.debug({ session: existing.id, user }, 'v2 job requested again; answering with its passcode');
            return existing.passcode;
          }
          const fresh = newPasscode();
          const { session } = await sessions.create(user, { template: v2Template, parameters: checked.parameters, labels: { [passcodeLabel]: fresh } });
          // Known at once, before this process's cache shows the new record: a repeated POST must find it.
          passcodes.set(session.metadata.id, fresh);
          return fresh;
        });
        return connection(passcode);
      });

      v2.delete('/job', async (request, reply) => {
        requireJob();
        const user = userOf(request, reply);
        const owner: Identity = { user, operator: false };
        await byUser.run(user, async () =>
          Promise.all(
            (await jobsOf(user)).map(({ id }) =>
              sessions.delete(owner, id).catch((error: unknown) => {
                // Gone between the cache and the store: nothing left to delete, as v2 answered.
                if (!(error instanceof ApiError && error.statusCode === 404)) throw error;
              }),
            ),
          ),
        );
        return reply.code(200).send();
      });

      v2.post('/info', async (request, reply) => {
        requireJob();
        const user = userOf(request, reply);
        const existing = await byUser.run(user, async () => (await jobsOf(user))[0]);
        // v2 answered an id it had no passcode for as an invalid one.
        if (existing === undefined) throw new V2Error(400, 'Invalid or missing id');
        return connection(existing.passcode);
      });
    },
    { prefix: '/api/v2' },
  );

  // The job websocket: `ws` in noServer mode on the front end's own server, so it shares the API's port
  // (as v2's did) and needs no plugin; this is the front end's only websocket, so it answers every upgrade.
  const server = new WebSocketServer({ noServer: true, maxPayload: 4096 });
  const open = new Set<JobSocket>();
  let closing = false;
  app.server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    const match = jobSocketPath.exec(request.url ?? '');
    if (match === null || closing) {
      refuseUpgrade(socket, closing ? '503 Service Unavailable' : '404 Not Found');
      return;
    }
    server.handleUpgrade(request, socket, head, (ws) => {
      // The client may send while its passcode is looked up and until a refusal's close handshake ends, and
      // a frame that breaks the protocol is an 'error' event, which crashes the process where nothing
      // listens. Such a client is not waited for.
      const broken = (error: Error): void => {
        log.debug({ err: error }, 'v2 job socket: the client broke the protocol before it was admitted');
        ws.terminate();
      };
      ws.on('error', broken);
      void sessionOfPasscode(match[1]!).then(
        (id) => {
          if (ws.readyState !== WebSocket.OPEN) return;
          if (closing) {
            ws.close(1001, 'the server is shutting down');
            return;
          }
          if (id === undefined) {
            log.debug('v2 job socket refused: unknown passcode');
            ws.close(1008, 'unknown passcode');
            return;
          }
          ws.off('error', broken);
          const jobSocket = new JobSocket(ws, id, sessions, streams, now, log, () => open.delete(jobSocket));
          open.add(jobSocket);
          jobSocket.start();
        },
        (error: unknown) => {
          log.warn({ err: error }, 'v2 job socket: looking up its passcode failed');
          ws.close(1011, 'the passcode could not be looked up; try again');
        },
      );
    });
  });
  app.addHook('preClose', async () => {
    closing = true;
    await Promise.all([...open].map((jobSocket) => jobSocket.shutdown('the server is shutting down')));
  });
}

/** The job options from the template's parameter enums, or why there are none. */
function jobOptionsOf(sessions: SessionService): { options: JobOptions } | { unavailable: string } {
  const template: SessionTemplate | undefined = sessions.templates.get(v2Template);
  if (template === undefined) return { unavailable: `the v2 API runs "${v2Template}" sessions, and this Manticore has no "${v2Template}" template` };
  const reason = sessions.unavailableReason(template);
  if (reason !== undefined) return { unavailable: `the v2 API is unavailable: ${reason}` };
  const enums = new Map(template.spec.parameters.map((parameter) => [parameter.name, parameter.enum]));
  const missing = parameterNames.find((name) => !enums.has(name));
  if (missing !== undefined) return { unavailable: `the v2 API is unavailable: template "${v2Template}" has no parameter "${missing}"` };
  const values = (name: (typeof parameterNames)[number]): string[] => enums.get(name) ?? [];
  return { options: { core: { versions: values('coreVersion'), builds: values('coreBuild') }, hmis: values('hmiType').map((type) => ({ type, versions: values('hmiVersion') })) } };
}

/** v2's checks, in v2's order and words; on success the template parameters they choose. */
function validateJob(options: JobOptions, body: unknown): { parameters: Record<string, string> } | { error: string } {
  const core = field(body, 'core');
  const hmi = field(body, 'hmi');
  // v2 tested truthiness: a `core` of 5 passes here and fails on its version.
  if (!body || !core || !hmi) return { error: 'Request body is invalid' };
  const [version, build, type, hmiVersion] = [field(core, 'version'), field(core, 'build'), field(hmi, 'type'), field(hmi, 'version')];
  const known = (values: readonly string[], value: unknown): value is string => typeof value === 'string' && values.includes(value);
  if (!known(options.core.versions, version)) return { error: `Not a valid core version: ${shown(version)}` };
  if (!known(options.core.builds, build)) return { error: `Not a valid core build option: ${shown(build)}` };
  const hmiOption = typeof type === 'string' ? options.hmis.find((option) => option.type === type) : undefined;
  if (hmiOption === undefined) return { error: `Not a valid hmi type: ${shown(type)}` };
  if (!known(hmiOption.versions, hmiVersion)) return { error: `Not a valid hmi version: ${shown(hmiVersion)}` };
  return { parameters: { coreVersion: version, coreBuild: build, hmiType: hmiOption.type, hmiVersion } };
}

/** The user a v2 request acts for: a verified identity's, else the body's `id` (in v2 the id is the identity). */
class V2Caller implements Authenticator {
  constructor(private readonly inner: Authenticator) {}

  identify(request: FastifyRequest, reply: FastifyReply): Identity {
    const identity = this.inner.identify(request, reply);
    if (identity.verified === true) return identity;
    const raw = field(request.body, 'id');
    // v2's wiki and its job module's example send a number (`"id": 3`), which v2 refused: read as its
    // decimal string, as a token's numeric user claim is, so 3 and "3" are one user.
    const id = typeof raw === 'number' && Number.isSafeInteger(raw) ? String(raw) : raw;
    if (typeof id !== 'string' || !idPattern.test(id)) throw new V2Error(400, 'Invalid or missing id');
    return { user: id, operator: false };
  }
}

/**
 * A value as v2's messages showed it (JavaScript's string conversion); as JSON when that throws, as it does
 * for an object whose `toString` is not a function.
 */
function shown(value: unknown): string {
  try {
    return String(value);
  } catch {
    return JSON.stringify(value);
  }
}

/** A refusal in v2's shape, `{error}` alone, as v2 clients read it. */
class V2Error extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * A form body, which v2's body parser read as well as JSON, with nested fields named as qs names them
 * (`core[version]=…`). The objects have no prototype, so a field named `__proto__` is just a field.
 */
function parseForm(body: string): Record<string, unknown> {
  const root = Object.create(null) as Record<string, unknown>;
  for (const [name, value] of new URLSearchParams(body)) {
    const bracketed = bracketedName.exec(name);
    const path = bracketed === null ? [name] : [bracketed[1]!, ...bracketed[2]!.slice(1, -1).split('][')];
    let target = root;
    for (const key of path.slice(0, -1)) {
      const next = target[key];
      target = typeof next === 'object' && next !== null ? (next as Record<string, unknown>) : (target[key] = Object.create(null) as Record<string, unknown>);
    }
    target[path.at(-1)!] = value;
  }
  return root;
}

/** An own property of a JSON object, or undefined for anything else (as reading it in JavaScript gave v2). */
function field(value: unknown, name: string): unknown {
  return typeof value === 'object' && value !== null && Object.hasOwn(value, name) ? (value as Record<string, unknown>)[name] : undefined;
}

function newPasscode(): string {
  return Array.from({ length: 16 }, () => passcodeAlphabet[randomInt(passcodeAlphabet.length)]).join('');
}

function passcodeOf(record: SessionRecord | undefined): string | undefined {
  const passcode = record?.metadata.labels?.[passcodeLabel];
  return passcode !== undefined && passcodePattern.test(passcode) ? passcode : undefined;
}

function refuseUpgrade(socket: Duplex, status: string): void {
  // Node's HTTP server leaves an upgraded connection without an 'error' listener, so a client resetting it
  // would crash the process; it is done with either way.
  socket.on('error', () => socket.destroy());
  socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}

/** Passcode ↔ session id, in both directions, so neither a connection nor a POST scans the sessions. */
class PasscodeIndex {
  private readonly sessionByPasscode = new Map<string, string>();
  private readonly passcodeBySession = new Map<string, string>();

  set(id: string, passcode: string | undefined): void {
    const previous = this.passcodeBySession.get(id);
    if (previous === passcode) return;
    if (previous !== undefined) {
      this.passcodeBySession.delete(id);
      if (this.sessionByPasscode.get(previous) === id) this.sessionByPasscode.delete(previous);
    }
    if (passcode !== undefined) {
      this.passcodeBySession.set(id, passcode);
      this.sessionByPasscode.set(passcode, id);
    }
  }

  sessionOf(passcode: string): string | undefined {
    return this.sessionByPasscode.get(passcode);
  }

  passcodeOf(id: string): string | undefined {
    return this.passcodeBySession.get(id);
  }
}

interface Position {
  readonly position: number;
  readonly wait: boolean;
}

/** v2's `position`: users ahead while waiting; 0, no longer waiting, once admitted; nothing before the controller has looked. */
function positionOf(status: SessionStatus): Position | undefined {
  if (status.phase === 'Waiting') return { position: Math.max(0, (status.queuePosition ?? 1) - 1), wait: true };
  if (status.phase === 'Starting' || status.phase === 'Ready') return { position: 0, wait: false };
  return undefined;
}

/**
 * v2's `services`: its names for the session's endpoints, as v2 gave them: core-tcp as `host:port`, the
 * others as `scheme://host[:port]` without a trailing slash (clients append paths to them).
 */
function servicesOf(status: SessionStatus): Record<string, string> {
  const services: Record<string, string> = {};
  for (const [v2Name, service] of serviceNames) {
    const endpoint = status.endpoints[service];
    if (endpoint !== undefined) services[v2Name] = endpoint.protocol === 'tcp' ? new URL(endpoint.url).host : endpoint.url.replace(rootPath, '$1');
  }
  return services;
}

/** The idle warning v2 clients can answer: a warning about the lifetime cap cannot be put off, so it is not sent. */
function idleWarningOf(status: SessionStatus): Condition | undefined {
  return status.conditions.find((condition) => condition.type === 'IdleWarning' && condition.status === 'True' && condition.reason === 'Idle');
}

/**
 * v2's `activity` numbers (seconds idle, seconds left) as they stand, by the session's idle clock (its own
 * timeout or the operator's): a client that connects during a warning, or is told it late, has less than the
 * whole warning left. Without a deadline, the whole warning.
 */
function idleTimes(policy: ExpiryPolicy, expiresAt: string | undefined, now: number): { inactivityTime: number; remainingTime: number } {
  const warningSeconds = Math.round(policy.idleWarningMs / 1000);
  const left = expiresAt === undefined ? Number.NaN : Math.round((Date.parse(expiresAt) - now) / 1000);
  const remainingTime = Number.isNaN(left) ? warningSeconds : Math.min(warningSeconds, Math.max(0, left));
  return { inactivityTime: Math.round(policy.idleTimeoutMs / 1000) - remainingTime, remainingTime };
}

function ended(session: Session | undefined): boolean {
  return session === undefined || session.metadata.deletionRequestedAt !== undefined || session.status.phase === 'Terminating' || session.status.phase === 'Failed';
}

/**
 * One client's websocket on one session: v2's messages, each sent when what it says changes as seen by
 * this connection, so a (re)connect starts by replaying the current position and services.
 */
class JobSocket {
  private subscription: Subscription | undefined;
  private closed = false;
  private owner: string | undefined;
  private lastPosition: string | undefined;
  private servicesSent = false;
  /** The transition time of the last idle warning announced: one `activity` per warning. */
  private warningAnnounced: string | undefined;
  private keepaliveRunning = false;
  private keepaliveAgain = false;
  private heartbeat: NodeJS.Timeout | undefined;
  /** Whether the client answered the last ping. */
  private answered = true;
  /** Counts this socket among its owner's status streams no more. */
  private releaseStream: (() => void) | undefined;

  constructor(
    private readonly socket: WebSocket,
    private readonly sessionId: string,
    private readonly sessions: SessionService,
    private readonly streams: StreamCounts,
    private readonly now: () => number,
    private readonly log: FastifyBaseLogger,
    private readonly onClose: () => void,
  ) {}

  /** Follows the session: its current state at once, then every change. */
  start(): void {
    this.socket.on('message', (data: RawData, isBinary: boolean) => this.receive(data, isBinary));
    this.socket.on('error', (error: Error) => this.log.debug({ err: error, session: this.sessionId }, 'v2 job socket failed'));
    this.socket.on('close', () => this.dispose());
    this.socket.on('pong', () => (this.answered = true));
    // A socket may have nothing to say for many minutes (a long wait in the queue, a Ready session): pings keep
    // proxies and load balancers in front of the front end from closing it as idle, and find clients that
    // vanished without closing, whose subscriptions would otherwise stay until their session ends.
    this.heartbeat = setInterval(() => this.beat(), heartbeatMs);
    this.heartbeat.unref();
    this.log.debug({ session: this.sessionId }, 'v2 job socket opened');
    void this.follow();
  }

  private async follow(): Promise<void> {
    // A session this process created a moment ago (a client connects right after its POST) may not be in the
    // cache yet: read from the store, its absence there means "not seen yet", not "gone".
    let read: Session | undefined;
    if (this.sessions.sessions.cache.get(this.sessionId)?.value === undefined) {
      try {
        read = (await this.sessions.read(passcodeHolder, this.sessionId)).session;
      } catch (error) {
        if (!(error instanceof ApiError && error.statusCode === 404)) {
          this.log.warn({ err: error, session: this.sessionId }, 'v2 job socket: reading the session failed');
          this.close(1011, 'the session could not be read; try again');
          return;
        }
      }
      if (this.closed) return;
    }
    // The passcode acts for the session's owner, so the socket counts among the owner's status streams.
    // A session that is gone counts for no one: the watch tells `dead` at once.
    const owner = (read?.metadata ?? this.sessions.sessions.cache.get(this.sessionId)?.value?.metadata)?.owner;
    if (owner !== undefined) {
      this.releaseStream = this.streams.tryAcquire(owner);
      if (this.releaseStream === undefined) {
        this.log.debug({ session: this.sessionId, owner }, 'v2 job socket refused: too many status streams');
        this.close(1008, `too many status streams open for this user (at most ${this.streams.limit}); close one first`);
        return;
      }
    }
    const subscription = this.sessions.watch(this.sessionId, read).subscribe((session) => this.update(session));
    // The first state is delivered during subscribe and may already have ended the connection.
    if (this.closed) subscription.unsubscribe();
    else this.subscription = subscription;
  }

  /** Closes with `reason` and resolves once the socket is closed, cutting it if the client does not answer in time. */
  async shutdown(reason: string): Promise<void> {
    if (this.socket.readyState === WebSocket.CLOSED) return;
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    this.close(1001, reason);
    const cut = setTimeout(() => this.socket.terminate(), closeGraceMs);
    await closed;
    clearTimeout(cut);
  }

  private update(session: Session | undefined): void {
    if (this.closed) return;
    if (session === undefined || ended(session)) {
      this.send('dead', {});
      this.close(1000, 'the session has ended');
      return;
    }
    this.owner = session.metadata.owner;
    const position = positionOf(session.status);
    if (position !== undefined && JSON.stringify(position) !== this.lastPosition) {
      this.lastPosition = JSON.stringify(position);
      this.send('position', position);
    }
    if (!this.servicesSent && session.status.phase === 'Ready') {
      this.servicesSent = true;
      this.send('services', servicesOf(session.status));
    }
    const warning = idleWarningOf(session.status);
    if (warning !== undefined && warning.lastTransitionTime !== this.warningAnnounced) {
      this.warningAnnounced = warning.lastTransitionTime;
      this.send('activity', idleTimes(this.sessions.expiryPolicyOf(session), session.status.expiresAt, this.now()));
    }
  }

  private beat(): void {
    // ping() throws on a socket that is closing; its 'close' is on its way.
    if (this.socket.readyState !== WebSocket.OPEN) return;
    if (!this.answered) {
      this.log.debug({ session: this.sessionId }, 'v2 job socket: the client did not answer a ping; cutting it');
      this.socket.terminate();
      return;
    }
    this.answered = false;
    this.socket.ping();
  }

  private receive(data: RawData, isBinary: boolean): void {
    let message: unknown;
    try {
      message = isBinary ? undefined : JSON.parse(data.toString());
    } catch {
      message = undefined;
    }
    if (field(message, 'type') === 'activity') this.keepalive();
    else this.log.debug({ session: this.sessionId }, 'v2 job socket: ignored a message that is not {"type":"activity"}');
  }

  /** Records activity; at most one store round trip per socket at a time, and activity during one is recorded after it. */
  private keepalive(): void {
    if (this.owner === undefined || this.closed) return;
    if (this.keepaliveRunning) {
      this.keepaliveAgain = true;
      return;
    }
    this.keepaliveRunning = true;
    void this.sessions
      .keepalive({ user: this.owner, operator: false }, this.sessionId)
      .catch((error: unknown) => {
        // A session being deleted or gone is told `dead` by its watch; anything else is worth a look.
        if (error instanceof ApiError && (error.statusCode === 404 || error.statusCode === 409)) return;
        this.log.warn({ err: error, session: this.sessionId }, 'v2 job socket: recording activity failed');
      })
      .finally(() => {
        this.keepaliveRunning = false;
        if (this.keepaliveAgain) {
          this.keepaliveAgain = false;
          this.keepalive();
        }
      });
  }

  private send(type: string, data: object): void {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify({ type, data }));
  }

  private close(code: number, reason: string): void {
    if (this.socket.readyState === WebSocket.OPEN || this.socket.readyState === WebSocket.CONNECTING) this.socket.close(code, reason);
    this.dispose();
  }

  private dispose(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    this.subscription?.unsubscribe();
    this.releaseStream?.();
    this.onClose();
    this.log.debug({ session: this.sessionId }, 'v2 job socket closed');
  }
}
