import type { Session } from '../../api/types.js';
import type { Limits } from '../../frontend/api-v1.js';
import type { ClusterStatus } from '../../frontend/cluster.js';
import { tokenExpiredReason } from '../../frontend/events.js';

export interface FrontendClientOptions {
  /** The front end's base URL, e.g. `http://127.0.0.1:4000`. */
  readonly url: string;
  /** Sent as `Authorization: Bearer` (a JWT, or the operators' admin token). */
  readonly token?: string;
  /**
   * Sent as `X-Manticore-User` (auth mode `none` names callers by it), with a token too: a front end that does
   * not take the token (mode `none`, not the admin token) names the caller by it instead of making a new anonymous user.
   */
  readonly user?: string;
  /** Aborts any request in flight (Ctrl-C): one it cuts short throws InterruptedError; a stream given a signal of its own ends quietly. */
  readonly signal?: AbortSignal;
}

export interface TemplateSummary {
  name: string;
  description: string;
  parameters: Array<{ name: string; description: string; enum: string[]; default: string }>;
  services: Array<{ name: string; description: string; protocol: string }>;
  /** The tasks a session runs, whose logs `sessions logs --task` reads. */
  tasks: string[];
  available: boolean;
  unavailableReason?: string;
}

/** The answer to a keepalive: the activity recorded and when the session now ends without another. */
export interface KeepaliveAnswer {
  id: string;
  lastActivityAt: string;
  /** Absent when nothing ends the session (no idle timeout, no lifetime cap). */
  expiresAt?: string;
}

export interface NewSessionRequest {
  template: string;
  parameters?: Record<string, string>;
  labels?: Record<string, string>;
  /** The session's own idle timeout, within the operator's limits. */
  idle?: { timeoutSeconds: number };
}

/**
 * The front end's keep-alive comment (every 15 s): no news, but word that the stream still works, which a
 * stream quiet for long (a session waiting, a task printing nothing) hears of only this way.
 */
export interface Alive {
  kind: 'alive';
}

/** One message of a session's event stream: its latest state, the news that it is gone, the server closing the stream (shutting down), or its keep-alive. */
export type SessionUpdate = { kind: 'session'; session: Session } | { kind: 'gone' } | { kind: 'closing'; reason: string } | Alive;

/** Which log `logText` and `followLogs` read; the front end's defaults where absent (the first task, stdout, all). */
export interface LogQuery {
  readonly task?: string;
  readonly stream?: string;
  readonly tail?: number;
}

/**
 * One message of a followed log: output (with the event id to resume after it), output lost to rotation,
 * the server ending the stream (shutting down, the workload replaced or failed: reconnect), the whole log
 * read (a failed session's stopped workload writes no more), the session gone.
 */
export type LogUpdate =
  | { kind: 'log'; id: string; text: string; end: number }
  | { kind: 'gap'; message: string }
  | { kind: 'closing'; reason: string }
  | { kind: 'ended'; reason: string }
  | { kind: 'gone' }
  | Alive;

/** An answer the front end gave with an error status, with its message and the fields it named. */
export class FrontendError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
    readonly details: string[],
  ) {
    super(message);
  }
}

/** The front end could not be reached, or answered something that is not its API. */
export class UnreachableError extends Error {}

/** A request cut short by the client's signal (Ctrl-C) before the front end answered it. */
export class InterruptedError extends Error {}

/** The front end closed a stream because the bearer token it was opened with expired: reconnecting with it would be refused. */
export class TokenExpiredError extends Error {}

/** A typed client of the front end's `/api/v1` (what the `manticore sessions|templates|limits|status` commands use). */
export class FrontendClient {
  private readonly base: URL;

  constructor(private readonly options: FrontendClientOptions) {
    try {
      this.base = new URL(options.url);
    } catch {
      throw new TypeError(`"${options.url}" is not a URL (expected e.g. http://127.0.0.1:4000)`);
    }
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:') throw new TypeError(`"${options.url}" is not an http(s) URL`);
  }

  templates(): Promise<TemplateSummary[]> {
    return this.call('GET', '/api/v1/templates', shapes.templates);
  }

  template(name: string): Promise<TemplateSummary> {
    return this.call('GET', `/api/v1/templates/${encodeURIComponent(name)}`, shapes.template);
  }

  /** What the caller's creates are held to: sessions per user, the idle timeout a session gets and may ask for, the lifetime cap. */
  limits(): Promise<Limits> {
    return this.call('GET', '/api/v1/limits', shapes.limits);
  }

  async listSessions(): Promise<Session[]> {
    return (await this.call('GET', '/api/v1/sessions', shapes.sessions)).items;
  }

  getSession(id: string): Promise<Session> {
    return this.call('GET', `/api/v1/sessions/${encodeURIComponent(id)}`, shapes.session);
  }

  createSession(request: NewSessionRequest): Promise<Session> {
    return this.call('POST', '/api/v1/sessions', shapes.session, request);
  }

  deleteSession(id: string): Promise<Session> {
    return this.call('DELETE', `/api/v1/sessions/${encodeURIComponent(id)}`, shapes.session);
  }

  /** Records activity, which puts off the session's idle expiry. */
  keepalive(id: string): Promise<KeepaliveAnswer> {
    return this.call('POST', `/api/v1/sessions/${encodeURIComponent(id)}/keepalive`, shapes.keepalive);
  }

  /** Operators only: who leads, replicas, routers and their lag, sessions by phase. */
  cluster(): Promise<ClusterStatus> {
    return this.call('GET', '/api/v1/cluster', shapes.cluster);
  }

  /** Follows `GET /api/v1/sessions/{id}/events` until the stream ends, `signal` aborts, or the session is gone. */
  async *watch(id: string, signal?: AbortSignal): AsyncGenerator<SessionUpdate> {
    const path = `/api/v1/sessions/${encodeURIComponent(id)}/events`;
    const what = `the event stream of session ${id}`;
    for await (const event of this.serverSentEvents(path, what, signal)) {
      const update = event === undefined ? alive : sessionUpdateOf(event);
      if (update === undefined) continue;
      if (update.kind === 'closing') refuseExpiredToken(update.reason, what);
      yield update;
      if (update.kind !== 'session') return;
    }
  }

  /** A task's log as text (`GET /api/v1/sessions/{id}/logs`), read as it comes. */
  async logText(id: string, query: LogQuery, signal?: AbortSignal): Promise<AsyncIterable<Uint8Array>> {
    const response = await this.send('GET', `${logsPath(id)}?${logSearch(query)}`, undefined, signal, 'text/plain');
    if (!response.ok) throw await errorOf(response);
    if (!response.body) throw new UnreachableError('the log answer has no body');
    return response.body as unknown as AsyncIterable<Uint8Array>;
  }

  /**
   * Follows a task's log (`?follow=true`) until the stream ends or `signal` aborts; `lastEventId` resumes
   * just after the event of that id (as an EventSource reconnects).
   */
  async *followLogs(id: string, query: LogQuery, lastEventId?: string, signal?: AbortSignal): AsyncGenerator<LogUpdate> {
    const path = `${logsPath(id)}?${logSearch(query)}&follow=true`;
    const headers: Record<string, string> = lastEventId === undefined ? {} : { 'last-event-id': lastEventId };
    const what = `the log stream of session ${id}`;
    for await (const event of this.serverSentEvents(path, what, signal, headers)) {
      const update = event === undefined ? alive : logUpdateOf(event);
      if (update === undefined) continue;
      if (update.kind === 'closing') refuseExpiredToken(update.reason, what);
      yield update;
      if (update.kind === 'gone' || update.kind === 'closing' || update.kind === 'ended') return;
    }
  }

  /** The events of a server-sent event stream, undefined for a block of comments only (a keep-alive), until it ends (an end the server did not announce throws). */
  private async *serverSentEvents(path: string, what: string, signal?: AbortSignal, headers: Record<string, string> = {}): AsyncGenerator<ServerSentEvent | undefined> {
    let response: Response;
    try {
      response = await this.send('GET', path, undefined, signal, 'text/event-stream', headers);
    } catch (error) {
      // Aborted while connecting ends the stream as an abort while reading does: no failure.
      if (signal?.aborted) return;
      throw error;
    }
    if (!response.ok) throw await errorOf(response);
    if (!response.body) throw new UnreachableError(`${what} has no body`);
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        buffer += decoder.decode(chunk, { stream: true }).replace(/\r\n?/g, '\n');
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const event = parseServerSentEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          yield event;
        }
      }
    } catch (error) {
      if (signal?.aborted) return;
      throw new UnreachableError(`${what} broke: ${(error as Error).message}`);
    }
    if (!signal?.aborted) throw new UnreachableError(`${what} ended unexpectedly`);
  }

  private async call<T>(method: string, path: string, shape: Shape<T>, body?: unknown): Promise<T> {
    const response = await this.send(method, path, body);
    let answer: unknown;
    try {
      if (!response.ok) throw await errorOf(response);
      answer = await response.json();
    } catch (error) {
      if (this.options.signal?.aborted) throw interrupted(method, path);
      if (error instanceof FrontendError || error instanceof UnreachableError) throw error;
      throw new UnreachableError(`${method} ${path}: the answer is not JSON (${(error as Error).message}); is ${this.base.origin} a Manticore front end?`);
    }
    if (!shape.is(answer)) throw new UnreachableError(`${method} ${path}: the answer is not ${shape.what}; is ${this.base.origin} a Manticore front end?`);
    return answer;
  }

  /** `signal`: the stream's own, else the client's (Ctrl-C). */
  private async send(method: string, path: string, body: unknown, signal = this.options.signal, accept = 'application/json', extra: Record<string, string> = {}): Promise<Response> {
    const headers: Record<string, string> = { accept, ...extra };
    if (this.options.token !== undefined) headers.authorization = `Bearer ${this.options.token}`;
    if (this.options.user !== undefined) headers['x-manticore-user'] = this.options.user;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const url = new URL(path.replace(/^\//, ''), this.base.href.endsWith('/') ? this.base : new URL(`${this.base.href}/`));
    let response: Response;
    try {
      // Not followed: fetch resends a redirected POST as a GET (a create would list), and drops the token for another origin.
      response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal, redirect: 'manual' });
    } catch (error) {
      if (signal?.aborted) throw interrupted(method, path);
      const cause = (error as { cause?: { code?: string; message?: string } }).cause;
      throw new UnreachableError(`cannot reach the front end at ${this.base.origin}: ${cause?.code ?? cause?.message ?? (error as Error).message}`);
    }
    if (response.status >= 300 && response.status < 400) {
      await response.body?.cancel().catch(() => undefined);
      const location = response.headers.get('location');
      const target = location === null ? 'nowhere' : URL.canParse(location, url.href) ? new URL(location, url).href : location;
      throw new UnreachableError(
        `${method} ${withoutQuery(path)}: ${this.base.origin} answered ${response.status}, a redirect to ${target}, which is not followed: give the front end's own address (--url or MANTICORE_URL)`,
      );
    }
    // A success of another type is not the API's (a web server or proxy at a wrong --url): its page must not pass for a log.
    const type = (response.headers.get('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
    if (response.ok && type !== accept) {
      await response.body?.cancel().catch(() => undefined);
      throw new UnreachableError(`${method} ${withoutQuery(path)}: the answer is ${type === '' ? 'untyped' : type}, not ${accept}; is ${this.base.origin} a Manticore front end?`);
    }
    return response;
  }
}

/** What a request cut short leaves unknown: one that changes something may have been carried out all the same. */
function interrupted(method: string, path: string): InterruptedError {
  return new InterruptedError(
    `interrupted before the front end answered ${method} ${withoutQuery(path)}${method === 'GET' ? '' : ', which it may have carried out all the same'}`,
  );
}

/** A request's path without its query, as messages name it. */
function withoutQuery(path: string): string {
  return path.split('?')[0]!;
}

async function errorOf(response: Response): Promise<Error> {
  const text = await response.text().catch(() => '');
  let parsed: { error?: unknown; details?: unknown } | undefined;
  try {
    parsed = JSON.parse(text) as typeof parsed;
  } catch {
    parsed = undefined;
  }
  // The API's errors always carry details: another service's JSON error is not a refusal of the API (nor a "not found").
  if (typeof parsed?.error !== 'string' || !Array.isArray(parsed.details)) {
    return new UnreachableError(`HTTP ${response.status} ${response.statusText} from ${response.url}${text ? `: ${text.slice(0, 200)}` : ''}`);
  }
  const details = parsed.details.filter((detail): detail is string => typeof detail === 'string');
  return new FrontendError(response.status, parsed.error, details);
}

const alive: Alive = { kind: 'alive' };

/**
 * What an answer must look like to be the API's, for an answer of another JSON service (a wrong --url) to
 * fail as such: the fields the commands read, not a validation of every one.
 */
interface Shape<T> {
  /** What the answer should have been, in words. */
  readonly what: string;
  readonly is: (value: unknown) => value is T;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function shape<T>(what: string, test: (value: Record<string, unknown>) => boolean): Shape<T> {
  return { what, is: (value: unknown): value is T => isObject(value) && test(value) };
}

function isSession(value: unknown): value is Session {
  if (!isObject(value) || !isObject(value.metadata) || !isObject(value.spec) || !isObject(value.status)) return false;
  const { metadata, spec, status } = value;
  return (
    typeof metadata.id === 'string' &&
    isObject(spec.parameters) &&
    typeof status.phase === 'string' &&
    Array.isArray(status.conditions) &&
    Array.isArray(status.events) &&
    isObject(status.endpoints)
  );
}

function isTemplate(value: unknown): value is TemplateSummary {
  return isObject(value) && typeof value.name === 'string' && typeof value.available === 'boolean' && Array.isArray(value.parameters) && Array.isArray(value.services);
}

const shapes = {
  session: { what: 'a session', is: isSession } satisfies Shape<Session>,
  sessions: shape<{ items: Session[] }>('a list of sessions', (value) => Array.isArray(value.items) && value.items.every(isSession)),
  template: { what: 'a template', is: isTemplate } satisfies Shape<TemplateSummary>,
  templates: { what: 'a list of templates', is: (value: unknown): value is TemplateSummary[] => Array.isArray(value) && value.every(isTemplate) } satisfies Shape<TemplateSummary[]>,
  limits: shape<Limits>('the limits', (value) => typeof value.sessionsPerUser === 'number' && isObject(value.idle) && typeof value.maxLifetimeSeconds === 'number'),
  keepalive: shape<KeepaliveAnswer>('a keepalive answer', (value) => typeof value.id === 'string' && typeof value.lastActivityAt === 'string'),
  cluster: shape<ClusterStatus>('the cluster status', (value) => Array.isArray(value.replicas) && Array.isArray(value.routers) && isObject(value.sessions) && isObject(value.sessions.byPhase)),
};

interface ServerSentEvent {
  readonly event: string;
  readonly data: string;
  readonly id?: string;
}

/** One server-sent event block: its event name, id and `data:` lines; a block of comments (keepalives) gives undefined. */
function parseServerSentEvent(block: string): ServerSentEvent | undefined {
  let event = 'message';
  let id: string | undefined;
  const data: string[] = [];
  let fields = 0;
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    fields++;
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
  }
  return fields === 0 ? undefined : { event, data: data.join('\n'), ...(id === undefined ? {} : { id }) };
}

/** Throws TokenExpiredError when `what` (a stream) was closed because its token expired. */
function refuseExpiredToken(reason: string, what: string): void {
  if (reason === tokenExpiredReason) throw new TokenExpiredError(`the front end closed ${what}: ${reason}`);
}

function sessionUpdateOf({ event, data }: ServerSentEvent): SessionUpdate | undefined {
  if (event === 'gone') return { kind: 'gone' };
  if (event === 'closing') return { kind: 'closing', reason: String((JSON.parse(data || '{}') as { reason?: unknown }).reason ?? 'the server closed the stream') };
  if (event !== 'session' || data === '') return undefined;
  return { kind: 'session', session: JSON.parse(data) as Session };
}

function logUpdateOf({ event, data, id }: ServerSentEvent): LogUpdate | undefined {
  const fields = (data === '' ? {} : JSON.parse(data)) as Record<string, unknown>;
  switch (event) {
    case 'log':
      return { kind: 'log', id: id ?? '', text: String(fields.text ?? ''), end: Number(fields.end) };
    case 'gap':
      return { kind: 'gap', message: String(fields.message ?? 'part of the log was rotated away before it was read') };
    case 'closing':
      return { kind: 'closing', reason: String(fields.reason ?? 'the server closed the stream') };
    case 'ended':
      return { kind: 'ended', reason: String(fields.reason ?? 'the log has ended') };
    case 'gone':
      return { kind: 'gone' };
    default:
      return undefined;
  }
}

function logsPath(id: string): string {
  return `/api/v1/sessions/${encodeURIComponent(id)}/logs`;
}

function logSearch(query: LogQuery): string {
  const search = new URLSearchParams();
  if (query.task !== undefined) search.set('task', query.task);
  if (query.stream !== undefined) search.set('stream', query.stream);
  if (query.tail !== undefined) search.set('tail', String(query.tail));
  return search.toString();
}
