import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { SessionTemplate } from '../api/types.js';
import { ApiError } from './errors.js';
import type { Authenticator } from './identity.js';
import type { NewSession, SessionService } from './sessions.js';
import { templateTasks } from './logs.js';
import { passcodeLabel } from './v2.js';

export const createBodySchema = {
  type: 'object',
  additionalProperties: false,
  required: ['template'],
  properties: {
    template: { type: 'string', minLength: 1, maxLength: 64 },
    parameters: { type: 'object', maxProperties: 64, additionalProperties: { type: 'string', maxLength: 256 } },
    labels: { type: 'object' },
    idle: {
      type: 'object',
      additionalProperties: false,
      required: ['timeoutSeconds'],
      description: "The session's own idle policy, within the operator's limits (idle.maxTimeoutSeconds, above idle.warningSeconds); a request outside them is refused 400.",
      properties: { timeoutSeconds: { type: 'integer', minimum: 0, maximum: 31536000, description: 'Idle this long, the session is deleted (0: never, where the operator sets no maximum).' } },
    },
  },
} as const;

/** What a user's create is held to (`GET /api/v1/limits`), in seconds; 0 turns a limit off as each field says. */
export interface Limits {
  /** Live sessions one user may have (not being deleted, not Failed); another create is answered 409. */
  readonly sessionsPerUser: number;
  readonly idle: {
    /** The idle timeout of a session that asks for none (0: such a session never ends for idleness). */
    readonly defaultTimeoutSeconds: number;
    /** The longest idle timeout a session may ask for (0: no limit; only then may it ask for 0, never). */
    readonly maxTimeoutSeconds: number;
    /** How long before its idle end a session is warned; a timeout a session asks for must be longer. */
    readonly warningSeconds: number;
  };
  /** A session ends this long after it was first Ready, whatever its activity (0: no cap). */
  readonly maxLifetimeSeconds: number;
}

function limitsOf(sessions: SessionService): Limits {
  const { sessionsPerUser, expiry } = sessions.limits;
  return {
    sessionsPerUser,
    idle: { defaultTimeoutSeconds: expiry.idleTimeoutMs / 1000, maxTimeoutSeconds: expiry.idleMaxTimeoutMs / 1000, warningSeconds: expiry.idleWarningMs / 1000 },
    maxLifetimeSeconds: expiry.maxLifetimeMs / 1000,
  };
}

/**
 * The REST API: templates, the limits a create is held to, and sessions the caller may see (create, list,
 * read, keep alive, delete). Every route asks who the caller is, templates and limits included, so each is
 * authenticated and rate limited alike; `auth` must identify a request once however often it is asked
 * (RateLimitedAuthenticator does).
 */
export function registerApiV1(app: FastifyInstance, sessions: SessionService, auth: Authenticator): void {
  app.get('/api/v1/templates', async (request, reply) => {
    auth.identify(request, reply);
    return [...sessions.templates.values()].map((template) => describeTemplate(sessions, template));
  });

  app.get<{ Params: { name: string } }>('/api/v1/templates/:name', async (request, reply) => {
    auth.identify(request, reply);
    const template = sessions.templates.get(request.params.name);
    if (!template) throw new ApiError(404, `template "${request.params.name}" not found`);
    return describeTemplate(sessions, template);
  });

  // Fixed for the life of the process: a client offers choices within them before it creates (the web page's idle timeout).
  const limits = limitsOf(sessions);
  app.get('/api/v1/limits', async (request, reply): Promise<Limits> => {
    auth.identify(request, reply);
    return limits;
  });

  // Who the caller is before anything of the body is looked at (its size, its type, its content), on every
  // route that may carry one: without credentials it is 401 whatever the body, and a caller sending bodies
  // that are refused is rate limited like any other.
  const identifyFirst = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => void auth.identify(request, reply);
  app.post<{ Body: NewSession }>('/api/v1/sessions', { schema: { body: createBodySchema }, onRequest: identifyFirst }, async (request, reply) => {
    if (request.body.labels?.[passcodeLabel] !== undefined) {
      throw new ApiError(400, `label ${passcodeLabel} is reserved for the v2 API`, [`/labels/${passcodeLabel}: reserved`]);
    }
    const { session, json } = await sessions.create(auth.identify(request, reply).user, request.body);
    return reply.code(201).header('location', `/api/v1/sessions/${session.metadata.id}`).type('application/json; charset=utf-8').send(json);
  });

  app.get('/api/v1/sessions', async (request, reply) => ({ items: sessions.list(auth.identify(request, reply)) }));

  app.get<{ Params: { id: string } }>('/api/v1/sessions/:id', async (request, reply) => sessions.show(auth.identify(request, reply), request.params.id));

  app.delete<{ Params: { id: string } }>('/api/v1/sessions/:id', { onRequest: identifyFirst }, async (request, reply) => {
    const session = await sessions.delete(auth.identify(request, reply), request.params.id);
    return reply.code(202).send(session);
  });

  app.post<{ Params: { id: string } }>('/api/v1/sessions/:id/keepalive', { onRequest: identifyFirst }, async (request, reply) => {
    const { session, lastActivityAt, expiresAt } = await sessions.keepalive(auth.identify(request, reply), request.params.id);
    return { id: session.metadata.id, lastActivityAt, ...(expiresAt === undefined ? {} : { expiresAt }) };
  });
}

function describeTemplate(sessions: SessionService, template: SessionTemplate): object {
  const unavailableReason = sessions.unavailableReason(template);
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
    // The tasks a session runs here, whose logs GET /api/v1/sessions/{id}/logs?task= serves.
    tasks: templateTasks(template, sessions.backend),
    available: unavailableReason === undefined,
    ...(unavailableReason === undefined ? {} : { unavailableReason }),
  };
}
