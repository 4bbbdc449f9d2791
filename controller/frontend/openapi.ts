import type { FastifyInstance } from 'fastify';
import { schemaOf, type SchemaName } from '../api/schemas.js';
import { createBodySchema } from './api-v1.js';
import { MAX_TAIL_LINES } from './logs.js';

type JsonObject = Record<string, unknown>;

const ref = (name: string): JsonObject => ({ $ref: `#/components/schemas/${name}` });
const json = (schema: JsonObject, description: string): JsonObject => ({ description, content: { 'application/json': { schema } } });
const error = (description: string): JsonObject => json(ref('Error'), description);
const v2Error = (description: string): JsonObject => json(ref('V2Error'), description);

/** Refusals of the caller, on every authenticated route (v2's included, in the front end's shape). */
const callerErrors = {
  '401': error('Credentials are missing or invalid (auth mode jwt).'),
  '429': error('Too many requests from this user; see the Retry-After header.'),
};
/** Answers every route of the API may give for bad input or load. */
const clientErrors = { '400': error('The request is invalid; `details` names each offending field.'), ...callerErrors };
/** Routes that read or write the store: it could not be reached. */
const storeErrors = { '503': error('The store could not be reached; try again.') };
/** Refusals of a v2 route's body before v2's checks see it. */
const v2BodyErrors = { '413': error('The body is over the size limit.'), '415': error('The body is neither JSON nor a form.'), ...callerErrors };
/** A v2 request body: JSON, or a form naming nested fields as `core[version]` (deepObject), as v2 read both. */
const v2Body = (schema: string, nested: readonly string[] = []): JsonObject => ({
  required: true,
  content: {
    'application/json': { schema: ref(schema) },
    'application/x-www-form-urlencoded': { schema: ref(schema), encoding: Object.fromEntries(nested.map((name) => [name, { style: 'deepObject', explode: true }])) },
  },
});
/** v2's own 400 (`{error}` alone), or a body that is not JSON, refused by the front end in its shape. */
const v2BadRequest = (description: string): JsonObject =>
  json({ oneOf: [ref('V2Error'), ref('Error')] }, `${description} A body that is not JSON: \`{error, details}\`.`);
const sessionId = { name: 'id', in: 'path', required: true, schema: { type: 'string' }, description: 'The session id (someone else’s answers 404, like a missing one).' };

/**
 * A crd schema as an OpenAPI 3.1 component: OpenAPI 3.1 schemas are JSON Schema 2020-12, so the schema
 * is used as it is, without its `$id` and with its local `$defs` references pointing into the component.
 */
function component(name: SchemaName, as: string): JsonObject {
  const { $id: _id, ...schema } = schemaOf(name);
  return JSON.parse(JSON.stringify(schema).replaceAll('"#/$defs/', `"#/components/schemas/${as}/$defs/`)) as JsonObject;
}

/** A heartbeat record as the cluster status shows it: with `live` (heartbeat recent enough) and any other added fields. */
function withLive(heartbeat: JsonObject, added: JsonObject): JsonObject {
  return {
    ...heartbeat,
    required: [...(heartbeat.required as string[]), 'live', ...Object.keys(added)],
    properties: { ...(heartbeat.properties as JsonObject), live: { type: 'boolean' }, ...added },
  };
}

/** The API's description, built from the same schemas (`crds/`) that validate the records it serves. */
function openApiDocument(): JsonObject {
  const record = component('session', 'SessionRecord');
  const recordProperties = record.properties as JsonObject;
  return {
    openapi: '3.1.0',
    info: {
      title: 'Manticore',
      version: '1.0.0',
      description:
        'Private SmartDeviceLink Core + HMI sessions on demand. Sessions wait in a first-come-first-served list when the cluster is full, are warned when idle, then reclaimed. The v2 routes and the websocket /api/v2/job/{passcode} keep clients of the previous service working.',
    },
    security: [{}, { bearer: [] }, { user: [] }, { cookie: [] }],
    paths: {
      '/healthz': { get: { summary: 'Liveness of this front end.', responses: { '200': json({ type: 'object', required: ['ok'], properties: { ok: { const: true } } }, 'Alive.') } } },
      '/readyz': {
        get: {
          summary: 'Readiness of this front end: its caches are synced and its store answers now (a front end whose store is away cannot create, delete or keep a session alive).',
          responses: {
            '200': json({ type: 'object', required: ['ready'], properties: { ready: { const: true } } }, 'Ready.'),
            '503': json({ type: 'object', required: ['ready', 'reason'], properties: { ready: { const: false }, reason: { type: 'string' } } }, 'Not ready, and why.'),
          },
        },
      },
      '/api/v1/openapi.json': { get: { summary: 'This document.', responses: { '200': json({ type: 'object' }, 'The OpenAPI document.') } } },
      '/api/v1/templates': {
        get: { summary: 'The templates a session can be made from.', responses: { '200': json({ type: 'array', items: ref('Template') }, 'Every template, with whether it runs here.'), ...clientErrors } },
      },
      '/api/v1/templates/{name}': {
        get: {
          summary: 'One template.',
          parameters: [{ name: 'name', in: 'path', required: true, schema: { type: 'string' } }],
          responses: { '200': json(ref('Template'), 'The template.'), '404': error('No such template.'), ...clientErrors },
        },
      },
      '/api/v1/limits': {
        get: {
          summary: 'The limits the caller’s creates are held to: live sessions per user, the idle timeout a session gets or may ask for, the lifetime cap.',
          responses: { '200': json(ref('Limits'), 'The limits, in seconds.'), ...callerErrors },
        },
      },
      '/api/v1/sessions': {
        get: { summary: 'The caller’s sessions (an operator’s: everyone’s), oldest first.', responses: { '200': json(ref('SessionList'), 'The sessions.'), ...clientErrors } },
        post: {
          summary: 'Ask for a session; it waits in line when the cluster is full.',
          requestBody: { required: true, content: { 'application/json': { schema: ref('CreateSession') } } },
          responses: {
            '201': json(ref('Session'), 'Created (phase Pending); Location names it.'),
            '409': error('The user already has as many live sessions as allowed; `existing` lists their ids.'),
            '413': error('The body is over the size limit.'),
            '415': error('The body is not JSON.'),
            ...clientErrors,
            ...storeErrors,
          },
        },
      },
      '/api/v1/sessions/{id}': {
        parameters: [sessionId],
        get: { summary: 'One session with its status.', responses: { '200': json(ref('Session'), 'The session.'), '404': error('No such session.'), ...clientErrors, ...storeErrors } },
        delete: {
          summary: 'End the session: Terminating until everything it held is gone, then 404.',
          responses: { '202': json(ref('Session'), 'Deletion requested (repeating it is harmless).'), '404': error('No such session.'), '409': error('The session kept changing; try again.'), ...clientErrors, ...storeErrors },
        },
      },
      '/api/v1/sessions/{id}/keepalive': {
        parameters: [sessionId],
        post: {
          summary: 'Activity: clears an idle warning and moves the idle deadline.',
          responses: { '200': json(ref('Keepalive'), 'Recorded.'), '404': error('No such session.'), '409': error('The session is being deleted.'), ...clientErrors, ...storeErrors },
        },
      },
      '/api/v1/sessions/{id}/events': {
        parameters: [sessionId],
        get: {
          summary: 'The session’s status as server-sent events.',
          description:
            'On connect and on every change: `event: session` with the Session as JSON. When the session is gone: `event: gone`, then the stream ends; `event: closing` with a reason when the server shuts down, or when the bearer token it was opened with expires (authenticate again and reconnect). A comment line every 15 s keeps proxies from closing it. With auth mode jwt, browsers (EventSource) may pass the token as `?access_token=`. Each user may have `frontend.statusStreamsPerUser` status streams open at once (v2 job websockets of their sessions included).',
          responses: {
            '200': { description: 'The stream.', content: { 'text/event-stream': { schema: { type: 'string' } } } },
            '404': error('No such session.'),
            ...clientErrors,
            ...storeErrors,
            '429': error('Too many requests from this user, or too many status streams open; see the message.'),
          },
        },
      },
      '/api/v1/sessions/{id}/logs': {
        parameters: [sessionId],
        get: {
          summary: 'A task’s stdout or stderr: the log as text, or followed live as server-sent events.',
          description:
            'Positions (`offset`, and `start`/`end` in events) are `file × 2^32 + byte offset`: log files are rotated (the embedded default keeps 3 of 10 MiB per stream, Nomad its job’s LogConfig), and a position stays valid across rotations; within the first file it is the byte offset. Without `follow`: the log as `text/plain`, from the oldest output kept (or the last `tail` lines, or from `offset`). With `follow=true`: `text/event-stream`: `event: start` `{allocationId, task, stream}` (not `open`, which EventSource uses for itself); `event: log` `{start, end, text}` with `id: <allocationId>:<end>`, so a reconnecting EventSource resumes just after the last event it got (Last-Event-ID; after the workload was replaced it starts at the new allocation’s beginning); `event: gap` `{from, to, message}` when output was rotated away before it was read; `event: closing` `{reason}` when the stream ends (the workload was replaced, the session failed, the server shuts down, the bearer token it was opened with expired); `event: ended` `{reason}` once a Failed session’s log has been read to its end (its workload is stopped and writes no more: do not reconnect); `event: gone` when the session is. A comment line every 15 s keeps proxies from closing it. The log is read only as fast as the client takes it. Each user may have `frontend.logs.streamsPerUser` log responses open at once.',
          parameters: [
            { name: 'task', in: 'query', schema: { type: 'string' }, description: 'A task of the session’s template (its `tasks`); default the first.' },
            { name: 'stream', in: 'query', schema: { enum: ['stdout', 'stderr'], default: 'stdout' } },
            { name: 'follow', in: 'query', schema: { type: 'boolean', default: false } },
            { name: 'tail', in: 'query', schema: { type: 'integer', minimum: 0, maximum: MAX_TAIL_LINES }, description: 'Begin with the last this many lines (searched within the last few MB).' },
            { name: 'offset', in: 'query', schema: { type: 'integer', minimum: 0 }, description: 'Begin at this position (an event’s `end`); not with `tail`.' },
            { name: 'Last-Event-ID', in: 'header', schema: { type: 'string', pattern: '^[A-Za-z0-9-]+:[0-9]+$' }, description: 'With follow: resume after this event (sent by EventSource when it reconnects).' },
          ],
          responses: {
            '200': {
              description: 'The log.',
              content: { 'text/plain': { schema: { type: 'string' } }, 'text/event-stream': { schema: { type: 'string' } } },
            },
            '404': error('No such session, or this front end reads no task logs.'),
            '409': error('The session has no workload placed yet, the task has no log yet (not started), or its workload’s logs are gone (collected by the scheduler).'),
            '503': error('The session or its log could not be read (the store or the scheduler’s agent is unreachable); try again.'),
            ...clientErrors,
            '429': error('Too many requests from this user, or too many log streams open; see the message.'),
          },
        },
      },
      '/api/v1/cluster': {
        get: {
          summary: 'Operators: who leads, the controller replicas and routers (alive, how far behind), sessions by phase.',
          responses: { '200': json(ref('ClusterStatus'), 'The cluster as the store shows it now.'), '403': error('The caller is not an operator.'), ...clientErrors, ...storeErrors },
        },
      },
      '/api/v2/job': {
        get: { summary: 'v2: the job options (from the sdl template).', responses: { '200': json(ref('V2JobOptions'), 'The options.'), '404': v2Error('This deployment runs no sdl sessions.'), ...callerErrors } },
        post: {
          summary: 'v2: ask for a session; connect the websocket with the passcode.',
          description: 'The websocket `/api/v2/job/{passcode}` sends `{type, data}` messages `position`, `services`, `activity` and `dead`, and takes `{type:"activity"}` as a keepalive. It is pinged every 15 s; a client that leaves a ping unanswered until the next is cut.',
          requestBody: v2Body('V2JobRequest', ['core', 'hmi']),
          responses: {
            '200': json(ref('V2JobAnswer'), 'Where to connect.'),
            '400': v2BadRequest('Invalid id or job (v2 messages).'),
            '404': v2Error('This deployment runs no sdl sessions.'),
            '409': error('The user already has as many live sessions as allowed (other than this API’s).'),
            ...v2BodyErrors,
            ...storeErrors,
          },
        },
        delete: {
          summary: 'v2: end the user’s session (200 even when there is none).',
          requestBody: v2Body('V2Id'),
          responses: { '200': { description: 'Done (empty body).' }, '400': v2BadRequest('Invalid or missing id.'), '404': v2Error('This deployment runs no sdl sessions.'), ...v2BodyErrors, ...storeErrors },
        },
      },
      '/api/v2/info': {
        post: {
          summary: 'v2: where to connect for the user’s live session.',
          requestBody: v2Body('V2Id'),
          responses: { '200': json(ref('V2JobAnswer'), 'Where to connect.'), '400': v2BadRequest('Invalid or missing id, or no live session.'), '404': v2Error('This deployment runs no sdl sessions.'), ...v2BodyErrors, ...storeErrors },
        },
      },
    },
    components: {
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'auth mode jwt; also the operator’s admin token.' },
        user: { type: 'apiKey', in: 'header', name: 'X-Manticore-User', description: 'auth mode none: names the user.' },
        cookie: { type: 'apiKey', in: 'cookie', name: 'manticore_user', description: 'auth mode none: the anonymous user id the front end hands out.' },
      },
      schemas: {
        SessionRecord: record,
        SessionStatus: component('session-status', 'SessionStatus'),
        Session: {
          type: 'object',
          additionalProperties: false,
          required: ['metadata', 'spec', 'status'],
          properties: { metadata: recordProperties.metadata, spec: recordProperties.spec, status: ref('SessionStatus') },
        },
        SessionList: { type: 'object', additionalProperties: false, required: ['items'], properties: { items: { type: 'array', items: ref('Session') } } },
        CreateSession: createBodySchema,
        Limits: {
          type: 'object',
          additionalProperties: false,
          required: ['sessionsPerUser', 'idle', 'maxLifetimeSeconds'],
          properties: {
            sessionsPerUser: { type: 'integer', minimum: 1, description: 'Live sessions one user may have (not being deleted, not Failed); another create is answered 409.' },
            idle: {
              type: 'object',
              additionalProperties: false,
              required: ['defaultTimeoutSeconds', 'maxTimeoutSeconds', 'warningSeconds'],
              properties: {
                defaultTimeoutSeconds: { type: 'integer', minimum: 0, description: 'The idle timeout of a session that asks for none (idle.timeoutSeconds; 0: such a session never ends for idleness).' },
                maxTimeoutSeconds: {
                  type: 'integer',
                  minimum: 0,
                  description: 'The longest idle timeout a session may ask for in `idle.timeoutSeconds` (idle.maxTimeoutSeconds; 0: no limit, and only then may it ask for 0, never).',
                },
                warningSeconds: { type: 'integer', minimum: 0, description: 'How long before its idle end a session is warned (idle.warningSeconds); a timeout a session asks for must be longer.' },
              },
            },
            maxLifetimeSeconds: { type: 'integer', minimum: 0, description: 'A session ends this long after it was first Ready, whatever its activity (lifecycle.maxLifetimeSeconds; 0: no cap).' },
          },
        },
        Keepalive: {
          type: 'object',
          additionalProperties: false,
          required: ['id', 'lastActivityAt'],
          properties: {
            id: { type: 'string' },
            lastActivityAt: { type: 'string', format: 'date-time' },
            expiresAt: { type: 'string', format: 'date-time', description: 'When the session expires now that this activity counts (the idle deadline or the lifetime cap, the earlier); absent before it first serves or with neither limit.' },
          },
        },
        Template: {
          type: 'object',
          additionalProperties: false,
          required: ['name', 'description', 'parameters', 'services', 'tasks', 'available'],
          properties: {
            name: { type: 'string' },
            description: { type: 'string' },
            parameters: {
              type: 'array',
              items: {
                type: 'object',
                additionalProperties: false,
                required: ['name', 'description', 'enum', 'default'],
                properties: { name: { type: 'string' }, description: { type: 'string' }, enum: { type: 'array', items: { type: 'string' } }, default: { type: 'string' } },
              },
            },
            services: {
              type: 'array',
              items: {
                type: 'object',
                additionalProperties: false,
                required: ['name', 'description', 'protocol'],
                properties: { name: { type: 'string' }, description: { type: 'string' }, protocol: { enum: ['http', 'ws', 'tcp'] } },
              },
            },
            tasks: { type: 'array', items: { type: 'string' }, description: 'The tasks a session of this template runs here, whose logs can be read; empty when it cannot run here.' },
            available: { type: 'boolean' },
            unavailableReason: { type: 'string' },
          },
        },
        ClusterStatus: {
          type: 'object',
          additionalProperties: false,
          required: ['leader', 'replicas', 'routers', 'routes', 'sessions', 'unreadable'],
          properties: {
            leader: {
              oneOf: [
                { type: 'null' },
                { type: 'object', required: ['host', 'pid', 'since'], properties: { host: { type: 'string' }, pid: { type: 'integer' }, since: { type: 'string', format: 'date-time' } } },
              ],
            },
            replicas: { type: 'array', items: withLive(component('controller-heartbeat', 'ControllerHeartbeat'), {}) },
            routers: {
              type: 'array',
              items: withLive(component('router-heartbeat', 'RouterHeartbeat'), { unappliedRoutes: { type: 'integer', minimum: 0, description: 'Route records changed after the index the router has applied (0: up to date).' } }),
            },
            routes: { type: 'integer', minimum: 0, description: 'How many sessions have routes.' },
            sessions: {
              type: 'object',
              additionalProperties: false,
              required: ['total', 'byPhase', 'oldestWaitingSince'],
              properties: {
                total: { type: 'integer', minimum: 0 },
                byPhase: { type: 'object', additionalProperties: { type: 'integer', minimum: 0 } },
                oldestWaitingSince: { type: ['string', 'null'], format: 'date-time' },
              },
            },
            unreadable: {
              type: 'array',
              description: 'Records that cannot be read, with the problem: heartbeats (left out of replicas and routers), the leader key (leader is then null), and session records.',
              items: {
                type: 'object',
                additionalProperties: false,
                required: ['key', 'problem'],
                properties: { key: { type: 'string' }, problem: { type: 'string' } },
              },
            },
          },
        },
        Error: {
          type: 'object',
          required: ['error', 'details'],
          properties: {
            error: { type: 'string' },
            details: { type: 'array', items: { type: 'string' } },
            existing: { type: 'array', items: { type: 'string' }, description: 'With 409 on create: the user’s live sessions.' },
          },
        },
        V2Error: { type: 'object', additionalProperties: false, required: ['error'], properties: { error: { type: 'string' } } },
        V2Id: { type: 'object', required: ['id'], properties: { id: ref('V2UserId') } },
        V2UserId: { oneOf: [{ type: 'string', pattern: '^[A-Za-z0-9-]{1,256}$' }, { type: 'integer', description: 'Read as its decimal string.' }] },
        V2JobOptions: {
          type: 'object',
          required: ['core', 'hmis'],
          properties: {
            core: { type: 'object', required: ['versions', 'builds'], properties: { versions: { type: 'array', items: { type: 'string' } }, builds: { type: 'array', items: { type: 'string' } } } },
            hmis: { type: 'array', items: { type: 'object', required: ['type', 'versions'], properties: { type: { type: 'string' }, versions: { type: 'array', items: { type: 'string' } } } } },
          },
        },
        V2JobRequest: {
          type: 'object',
          required: ['id', 'core', 'hmi'],
          properties: {
            id: ref('V2UserId'),
            core: { type: 'object', required: ['version', 'build'], properties: { version: { type: 'string' }, build: { type: 'string' } } },
            hmi: { type: 'object', required: ['type', 'version'], properties: { type: { type: 'string' }, version: { type: 'string' } } },
          },
        },
        V2JobAnswer: {
          type: 'object',
          required: ['path', 'protocol', 'passcode'],
          properties: {
            path: { const: '/api/v2/job/' },
            protocol: { enum: ['ws', 'wss'] },
            passcode: { type: 'string', pattern: '^[A-Za-z0-9]{16}$' },
            port: { type: 'integer' },
            domain: { type: 'string' },
          },
        },
      },
    },
  };
}

export function registerOpenApi(app: FastifyInstance): void {
  const document = JSON.stringify(openApiDocument());
  app.get('/api/v1/openapi.json', async (_request, reply) => reply.type('application/json; charset=utf-8').send(document));
}
