import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest, type onRequestHookHandler } from 'fastify';
import type { ErrorObject } from 'ajv';
import { describeErrors, ValidationError } from '../api/schemas.js';
import type { SessionTemplate } from '../api/types.js';
import type { Keys } from '../controller/keys.js';
import type { ExpiryPolicy } from '../controller/lifecycle.js';
import type { Store } from '../store/store.js';
import type { Logger } from '../util/log.js';
import { registerApiV1 } from './api-v1.js';
import { AnonymousOrHeaderAuthenticator } from './auth.js';
import { ApiError } from './errors.js';
import { instrumentHttp } from '../metrics/http.js';
import { jsonBodyParser } from './json-body.js';
import { registerCluster, type ClusterOptions } from './cluster.js';
import { DEFAULT_STATUS_STREAMS_PER_USER, registerEvents } from './events.js';
import { DEFAULT_LOG_STREAMS_PER_USER, registerLogs } from './logs.js';
import type { TaskLogs } from '../scheduler/task-logs.js';
import { registerOpenApi } from './openapi.js';
import { RouteMethods } from './route-methods.js';
import type { Authenticator } from './identity.js';
import { RateLimitedAuthenticator, RateLimiter, type RateLimit } from './rate-limit.js';
import { StoreReadiness } from './readiness.js';
import { SessionService } from './sessions.js';
import { StreamCounts } from './stream-limit.js';
import { registerApiV2, type ApiV2Options } from './v2.js';
import { registerWebPage } from './web.js';

/**
 * How long a client may take to send a whole request, headers and body (Node answers 408 and closes the
 * connection after it). Fastify turns Node's own bound off, so a client trickling a body a byte at a time
 * held a connection, and its socket, for as long as it liked, with or without credentials. A body is at most
 * bodyLimitBytes of JSON; streams (events, logs, the v2 websocket) are not affected, their requests being
 * complete once their headers are.
 */
export const REQUEST_TIMEOUT_MS = 30_000;

/**
 * Fastify's router gives a parameter an empty value (`/api/v1/sessions/` matches `/api/v1/sessions/:id`);
 * trailing slashes are not ignored here, so such a path is no route, not an empty id.
 */
const refuseEmptyParams: onRequestHookHandler = (request, reply, done) => {
  const params = request.params as Record<string, string>;
  for (const name in params) {
    if (params[name] === '') {
      reply.callNotFound();
      return;
    }
  }
  done();
};

export interface FrontendOptions {
  readonly store: Store;
  readonly keys: Keys;
  readonly templates: ReadonlyMap<string, SessionTemplate>;
  /** The template backend this deployment runs (`spec.backends.<kind>`). */
  readonly backend: 'embedded' | 'nomad';
  readonly bodyLimitBytes: number;
  /**
   * The proxies in front of this front end whose X-Forwarded-* headers are believed (Fastify's trustProxy:
   * addresses, CIDR ranges, proxy-addr's names); none when absent or empty.
   */
  readonly trustedProxies?: readonly string[];
  /** Live sessions one user may have (not being deleted, not Failed). */
  readonly sessionsPerUser: number;
  /** Activity is stored at most this often per session, except while the session is being warned. */
  readonly activityWriteIntervalMs: number;
  /** The controller's idle and lifetime limits (lifecyclePolicy(config)): what a create may ask for, the expiry a keepalive answers and v2's idle times. */
  readonly expiry: ExpiryPolicy;
  readonly log: Logger;
  /** Who the caller is (`createAuthenticator(config.auth)`); by default the X-Manticore-User header, else an anonymous cookie. */
  readonly authenticator?: Authenticator;
  /** Requests per user, counted wherever a route asks who the caller is; unlimited when absent. */
  readonly rateLimit?: RateLimit;
  /** Where task logs are read, and how many log responses one user may hold open; absent, the logs route says they are unavailable. */
  readonly logs?: { readonly source: TaskLogs; readonly streamsPerUser: number };
  /** Status streams (v1 event streams and v2 job sockets together) one user may hold open at once; 20 when absent. */
  readonly statusStreamsPerUser?: number;
  /** The Manticore v2 compatibility API (`/api/v2/*` and its job websocket); not served when absent. */
  readonly v2?: ApiV2Options;
  /** When replicas and routers count as stale in `GET /api/v1/cluster` (default 30 s each). */
  readonly cluster?: ClusterOptions;
  readonly now?: () => number;
}

/**
 * The thin HTTP front end: it validates requests, writes session records and reads sessions back. It
 * holds no state of its own beyond the watch-fed caches every request and stream of the process shares,
 * so any number of replicas can serve the same users.
 */
export class Frontend {
  readonly app: FastifyInstance;
  readonly sessions: SessionService;
  private listening: Promise<string> | undefined;
  /** Set once the caches have been filled (start()). */
  private synced = false;

  constructor(options: FrontendOptions) {
    const log = options.log.child({ component: 'frontend' });
    this.sessions = new SessionService({ ...options, log, now: options.now ?? Date.now });
    this.app = Fastify({
      loggerInstance: log as FastifyBaseLogger,
      bodyLimit: options.bodyLimitBytes,
      requestTimeout: REQUEST_TIMEOUT_MS,
      // request.protocol then says https for what a trusted proxy received over TLS (the cookie's Secure).
      ...(options.trustedProxies !== undefined && options.trustedProxies.length > 0 ? { trustProxy: [...options.trustedProxies] } : {}),
      // Each request is not logged; the handlers log what changed (created, deleted) and every failure.
      logController: new LogController({ disableRequestLogging: true }),
      // Reject what the schemas do not allow instead of silently dropping or coercing it.
      ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: true } },
      // The router's own refusals (a URL that does not decode, a path part over 100 characters) in the API's
      // shape, without echoing the URL back.
      frameworkErrors: (error, _request, reply: FastifyReply) => {
        const message = error.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 'a part of the path is longer than 100 characters' : 'the URL is malformed';
        void reply.code(error.statusCode ?? 400).send({ error: message, details: [] });
      },
    });
    // JSON only: anything else is answered 415 rather than read as text.
    this.app.removeContentTypeParser(['text/plain', 'application/json']);
    this.app.addContentTypeParser('application/json', { parseAs: 'string' }, jsonBodyParser(this.app));
    this.app.setErrorHandler((error: FastifyError, request, reply) => this.sendError(error, request, reply));
    const routeMethods = new RouteMethods();
    this.app.addHook('onRoute', (route) => {
      routeMethods.add(route.url, route.method);
      // Only routes with parameters can take an empty one: the others (the ceiling of every request) pay nothing.
      if (route.url.includes('/:')) route.onRequest = [refuseEmptyParams, ...[route.onRequest ?? []].flat()];
    });
    const answerNoRoute = (request: FastifyRequest, reply: FastifyReply): void => {
      // The path alone: a query string may carry an access token.
      const path = request.url.split('?', 1)[0]!;
      const allowed = routeMethods.allowed(path);
      if (allowed.length > 0) {
        const allow = allowed.join(', ');
        void reply.code(405).header('allow', allow).send({ error: `${path} does not take ${request.method}; it takes ${allow}`, details: [] });
        return;
      }
      void reply.code(404).send({ error: `no route ${request.method} ${path}`, details: [] });
    };
    this.app.setNotFoundHandler(answerNoRoute);
    instrumentHttp(this.app, 'frontend');
    // Liveness: the process answers. Readiness: it can serve users (caches synced, the store answering).
    this.app.get('/healthz', async () => ({ ok: true }));
    const storeReadiness = new StoreReadiness(options.store, options.keys.leader, log);
    this.app.get('/readyz', async (_request, reply) => {
      const reason = this.synced ? await storeReadiness.check() : 'the caches are not synced yet';
      return reply.code(reason === undefined ? 200 : 503).send(reason === undefined ? { ready: true } : { ready: false, reason });
    });
    const identify = options.authenticator ?? new AnonymousOrHeaderAuthenticator();
    registerWebPage(this.app, identify);
    const limiter = options.rateLimit === undefined ? undefined : new RateLimiter(options.rateLimit, options.now ?? Date.now);
    // One limiter for every API: a user's v1 and v2 requests draw on the same bucket.
    const limit = (inner: Authenticator): Authenticator => new RateLimitedAuthenticator(inner, limiter);
    const authenticator = limit(identify);
    registerApiV1(this.app, this.sessions, authenticator);
    const statusStreams = new StreamCounts(options.statusStreamsPerUser ?? DEFAULT_STATUS_STREAMS_PER_USER, 'status streams');
    registerEvents(this.app, this.sessions, authenticator, statusStreams, options.now ?? Date.now);
    registerLogs(this.app, this.sessions, authenticator, { logs: options.logs?.source, streamsPerUser: options.logs?.streamsPerUser ?? DEFAULT_LOG_STREAMS_PER_USER, now: options.now ?? Date.now });
    registerCluster(this.app, options.store, options.keys, this.sessions, authenticator, options.cluster ?? { replicaStaleMs: 30_000, routerStaleMs: 30_000 }, options.now ?? Date.now);
    registerOpenApi(this.app);
    if (options.v2 !== undefined) registerApiV2(this.app, this.sessions, identify, limit, options.v2, statusStreams, options.now ?? Date.now, answerNoRoute);
  }

  /**
   * Syncs the caches, then listens; returns the address. If that fails (the port is taken), what it started
   * is stopped again before the error is thrown: the watches would otherwise retry, and keep the process
   * alive, for ever.
   */
  async start(host: string, port: number): Promise<string> {
    try {
      await this.sessions.start();
      this.synced = true;
      this.listening = this.app.listen({ host, port });
      return await this.listening;
    } catch (error) {
      await this.stop();
      throw error;
    }
  }

  async stop(): Promise<void> {
    // A stop that comes while it is starting (a signal): Fastify still opens the port when close() comes during listen().
    await this.listening?.catch(() => undefined);
    await this.app.close();
    this.sessions.stop();
  }

  private sendError(error: FastifyError | ApiError | ValidationError | Error, request: FastifyRequest, reply: FastifyReply): void {
    if (error instanceof ApiError) {
      void reply.code(error.statusCode).headers(error.headers).send({ error: error.message, details: error.details, ...error.extra });
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
    // The route, not the URL: a query string may carry an access token.
    request.log.error({ err: error, url: request.routeOptions.url, method: request.method }, 'request failed');
    void reply.code(503).send({ error: 'the service could not complete the request; try again', details: [] });
  }
}
