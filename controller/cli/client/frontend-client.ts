import type { Session } from '../../api/types.js';
import type { ClusterStatus } from '../../frontend/cluster.js';

export interface FrontendClientOptions {
  /** The front end's base URL, e.g. `http://127.0.0.1:4000`. */
  readonly url: string;
  /** Sent as `Authorization: Bearer` (a JWT, or the operators' admin token). */
  readonly token?: string;
  /** Sent as `X-Manticore-User` when there is no token (auth mode `none` names callers by it). */
  readonly user?: string;
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

export interface NewSessionRequest {
  template: string;
  parameters?: Record<string, string>;
  labels?: Record<string, string>;
}

/** One message of a session's event stream: its latest state, the news that it is gone, or the server closing the stream (shutting down). */
export type SessionUpdate = { kind: 'session'; session: Session } | { kind: 'gone' } | { kind: 'closing'; reason: string };

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

/** A typed client of the front end's `/api/v1` (what the `manticore sessions|templates|status` commands use). */
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
    return this.call('GET', '/api/v1/templates');
  }

  template(name: string): Promise<TemplateSummary> {
    return this.call('GET', `/api/v1/templates/${encodeURIComponent(name)}`);
  }

  async listSessions(): Promise<Session[]> {
    return (await this.call<{ items: Session[] }>('GET', '/api/v1/sessions')).items;
  }

  getSession(id: string): Promise<Session> {
    return this.call('GET', `/api/v1/sessions/${encodeURIComponent(id)}`);
  }

  createSession(request: NewSessionRequest): Promise<Session> {
    return this.call('POST', '/api/v1/sessions', request);
  }

  deleteSession(id: string): Promise<Session> {
    return this.call('DELETE', `/api/v1/sessions/${encodeURIComponent(id)}`);
  }

  /** Operators only: who leads, replicas, routers and their lag, sessions by phase. */
  cluster(): Promise<ClusterStatus> {
    return this.call('GET', '/api/v1/cluster');
  }

  /** Follows `GET /api/v1/sessions/{id}/events` until the stream ends, `signal` aborts, or the session is gone. */
  async *watch(id: string, signal?: AbortSignal): AsyncGenerator<SessionUpdate> {
    const response = await this.send('GET', `/api/v1/sessions/${encodeURIComponent(id)}/events`, undefined, signal, 'text/event-stream');
    if (!response.ok) throw await errorOf(response);
    if (!response.body) throw new UnreachableError('the event stream has no body');
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        buffer += decoder.decode(chunk, { stream: true }).replace(/\r\n?/g, '\n');
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const update = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (update === undefined) continue;
          yield update;
          if (update.kind !== 'session') return;
        }
      }
    } catch (error) {
      if (signal?.aborted) return;
      throw new UnreachableError(`the event stream of session ${id} broke: ${(error as Error).message}`);
    }
    if (!signal?.aborted) throw new UnreachableError(`the event stream of session ${id} ended unexpectedly`);
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await this.send(method, path, body);
    if (!response.ok) throw await errorOf(response);
    try {
      return (await response.json()) as T;
    } catch (error) {
      throw new UnreachableError(`${method} ${path}: the answer is not JSON (${(error as Error).message}); is ${this.base.origin} a Manticore front end?`);
    }
  }

  private async send(method: string, path: string, body: unknown, signal?: AbortSignal, accept = 'application/json'): Promise<Response> {
    const headers: Record<string, string> = { accept };
    if (this.options.token !== undefined) headers.authorization = `Bearer ${this.options.token}`;
    else if (this.options.user !== undefined) headers['x-manticore-user'] = this.options.user;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const url = new URL(path.replace(/^\//, ''), this.base.href.endsWith('/') ? this.base : new URL(`${this.base.href}/`));
    try {
      return await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
    } catch (error) {
      const cause = (error as { cause?: { code?: string; message?: string } }).cause;
      throw new UnreachableError(`cannot reach the front end at ${this.base.origin}: ${cause?.code ?? cause?.message ?? (error as Error).message}`);
    }
  }
}

async function errorOf(response: Response): Promise<Error> {
  const text = await response.text().catch(() => '');
  let parsed: { error?: unknown; details?: unknown } | undefined;
  try {
    parsed = JSON.parse(text) as typeof parsed;
  } catch {
    parsed = undefined;
  }
  if (typeof parsed?.error !== 'string') {
    return new UnreachableError(`HTTP ${response.status} ${response.statusText} from ${response.url}${text ? `: ${text.slice(0, 200)}` : ''}`);
  }
  const details = Array.isArray(parsed.details) ? parsed.details.filter((detail): detail is string => typeof detail === 'string') : [];
  return new FrontendError(response.status, parsed.error, details);
}

/** One server-sent event block: `event: session|gone` and its `data:` lines; comments (keepalives) give undefined. */
function parseEvent(block: string): SessionUpdate | undefined {
  let event = 'message';
  const data: string[] = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  if (event === 'gone') return { kind: 'gone' };
  if (event === 'closing') return { kind: 'closing', reason: String((JSON.parse(data.join('\n') || '{}') as { reason?: unknown }).reason ?? 'the server closed the stream') };
  if (event !== 'session' || data.length === 0) return undefined;
  return { kind: 'session', session: JSON.parse(data.join('\n')) as Session };
}
