import http from 'node:http';
import https from 'node:https';
import { outcomeOfStatus, recordBackendCall } from '../metrics/metrics.js';
import { ExchangeTimer, readBody, readJsonArray } from '../util/http-body.js';
import { loadTlsMaterial, type TlsFiles, type TlsMaterial } from '../util/tls.js';

/**
 * Nomad's HTTP API as the scheduler calls it: the token, region and namespace on every call, Nomad's
 * error texts in the errors, a bound on every call, and each call counted in the backend metrics.
 */

/** A Nomad API call that failed, with the HTTP status (0 when Nomad was not reached) and Nomad's message. */
export class NomadApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly nomadMessage: string,
    /** Set when an EnforceIndex check failed: the job changed since it was last seen; retry. */
    readonly conflict = false,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'NomadApiError';
  }
}

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface NomadHttpOptions {
  base: URL;
  token?: string;
  region?: string;
  namespace?: string;
  tls: TlsMaterial;
  agent: http.Agent;
  /** How long a call's answer may take to begin, and then pause (every call but a stream's). */
  requestTimeoutMs: number;
  /** Aborts every call (the scheduler closing). */
  signal: AbortSignal;
}

/** Query parameters; a list repeats its parameter. */
export type Query = Readonly<Record<string, string | readonly string[]>>;

const MAX_MESSAGE_CHARS = 500;

export class NomadHttp {
  constructor(private readonly options: NomadHttpOptions) {}

  /** A call answered with JSON (or nothing). `signal` aborts it (close() always does). */
  async json(method: string, path: string, query: Query, body?: unknown, signal?: AbortSignal): Promise<unknown> {
    const result = await this.request(method, path, query, body, signal);
    try {
      return result.body === '' ? undefined : (JSON.parse(result.body) as unknown);
    } catch (error) {
      throw new NomadApiError(`${method} ${path}: Nomad answered with invalid JSON`, result.status, result.body.slice(0, MAX_MESSAGE_CHARS), false, { cause: error });
    }
  }

  /** One HTTP request to Nomad; non-2xx answers become NomadApiError with Nomad's message. `signal` aborts it (close() always does). */
  request(method: string, path: string, query: Query, body?: unknown, signal?: AbortSignal): Promise<HttpResult> {
    return this.send(method, path, query, body, signal, readBody);
  }

  /**
   * A GET answered with a JSON array, each element handed to `project` as it arrives: a list of 10,000
   * allocations is tens of megabytes, and read whole it would sit in the heap twice over (as text and as
   * objects) although only what `project` keeps of each element is needed. Returns what `project` returned
   * for each element, and the answer's X-Nomad-Index.
   */
  async list<T>(path: string, query: Query, project: (item: unknown) => T, signal?: AbortSignal): Promise<{ items: T[]; index: number }> {
    const items: T[] = [];
    const result = await this.send('GET', path, query, undefined, signal, (res) => {
      const complete = readJsonArray(res, (text) => items.push(project(JSON.parse(text))));
      return () => {
        complete();
        return '';
      };
    });
    const index = Number(result.headers['x-nomad-index']);
    if (!Number.isSafeInteger(index) || index < 0) throw new NomadApiError(`GET ${path}: no valid X-Nomad-Index in the answer`, result.status, '');
    return { items, index };
  }

  /** `read` takes a 2xx answer's body as it arrives; other answers are read as text for their message. */
  private send(method: string, path: string, query: Query, body: unknown, signal: AbortSignal | undefined, read: (res: http.IncomingMessage) => () => string): Promise<HttpResult> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers = this.headers();
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = payload.length;
    }
    const { url, transport, operation } = this.target(method, path, query);
    const startedAt = performance.now();
    const result = new Promise<HttpResult>((resolve, reject) => {
      const fail = (status: number, message: string, cause?: unknown): void =>
        reject(new NomadApiError(`${method} ${url.pathname}: ${message}`, status, message, false, { cause }));
      const req = transport.request(url, { method, headers, agent: this.options.agent, signal: this.signal(signal), ...this.options.tls }, (res) => {
        timer.answering(res);
        const status = res.statusCode ?? 0;
        const success = status >= 200 && status < 300;
        const text = success ? read(res) : readBody(res);
        res.on('error', (error) => {
          timer.stop();
          fail(0, error.message, error);
        });
        res.on('end', () => {
          timer.stop();
          if (!success) return fail(status, nomadMessage(text()) || `HTTP ${status}`);
          try {
            resolve({ status, headers: res.headers, body: text() });
          } catch (error) {
            fail(status, `Nomad answered something that cannot be understood (${error instanceof Error ? error.message : String(error)})`, error);
          }
        });
      });
      const { requestTimeoutMs } = this.options;
      const timer = new ExchangeTimer(req, { beginMs: requestTimeoutMs, idleMs: requestTimeoutMs }, (what) => new Error(what));
      req.on('error', (error) => {
        timer.stop();
        fail(0, error.message, error);
      });
      req.end(payload);
    });
    this.count(result, operation, startedAt, signal);
    return result;
  }

  /**
   * A long-lived GET (the event stream): the answer as soon as its status is in, to be read as it comes;
   * a non-2xx answer becomes NomadApiError. Unbounded: the caller watches it and aborts it with `signal`.
   */
  stream(path: string, query: Query, signal: AbortSignal): Promise<http.IncomingMessage> {
    const { url, transport, operation } = this.target('GET', path, query);
    const startedAt = performance.now();
    const opened = new Promise<http.IncomingMessage>((resolve, reject) => {
      const fail = (status: number, message: string, cause?: unknown): void =>
        reject(new NomadApiError(`GET ${url.pathname}: ${message}`, status, message, false, { cause }));
      const req = transport.request(url, { method: 'GET', headers: this.headers(), agent: this.options.agent, signal: this.signal(signal), ...this.options.tls }, (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) return resolve(res);
        const text = readBody(res);
        res.on('error', (error) => fail(status, error.message, error));
        res.on('end', () => fail(status, nomadMessage(text()) || `HTTP ${status}`));
      });
      req.on('error', (error) => fail(0, error.message, error));
      req.end();
    });
    this.count(opened, `${operation} (stream)`, startedAt, signal);
    return opened;
  }

  private headers(): http.OutgoingHttpHeaders {
    const headers: http.OutgoingHttpHeaders = { accept: 'application/json' };
    if (this.options.token) headers['x-nomad-token'] = this.options.token;
    return headers;
  }

  private target(method: string, path: string, query: Query): { url: URL; transport: typeof http | typeof https; operation: string } {
    const url = new URL(path, this.options.base);
    if (this.options.namespace !== undefined) url.searchParams.set('namespace', this.options.namespace);
    if (this.options.region !== undefined) url.searchParams.set('region', this.options.region);
    for (const [key, value] of Object.entries(query)) {
      url.searchParams.delete(key);
      for (const item of typeof value === 'string' ? [value] : value) url.searchParams.append(key, item);
    }
    const operation = `${method} ${url.pathname.replace(/^(\/v1\/(?:job|allocation|evaluation|node|client\/allocation|client\/fs\/logs))\/[^/]+/, '$1/:id')}`;
    return { url, transport: url.protocol === 'https:' ? https : http, operation };
  }

  /** The call's own signal, if any, and close(). */
  private signal(signal: AbortSignal | undefined): AbortSignal {
    return signal ? AbortSignal.any([signal, this.options.signal]) : this.options.signal;
  }

  private count(call: Promise<unknown>, operation: string, startedAt: number, signal: AbortSignal | undefined): void {
    call.then(
      () => recordBackendCall('nomad', operation, 'ok', startedAt),
      (error: unknown) => {
        const status = error instanceof NomadApiError ? error.status : 0;
        const aborted = this.options.signal.aborted || signal?.aborted === true;
        recordBackendCall('nomad', operation, status === 0 ? (aborted ? 'aborted' : 'unreachable') : outcomeOfStatus(status), startedAt);
      },
    );
  }
}

/** A Nomad agent's address, checked: an http(s) URL. */
export function nomadBaseUrl(address: string): URL {
  let base: URL;
  try {
    base = new URL(address);
  } catch (error) {
    throw new Error(`Nomad address "${address}" is not a URL`, { cause: error });
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new Error(`Nomad address "${address}" must start with http:// or https://`);
  return base;
}

export interface NomadConnectionOptions {
  readonly address: string;
  readonly token?: string;
  readonly region?: string;
  readonly namespace?: string;
  /** Read now: a missing file stops start-up with its name. */
  readonly tls?: TlsFiles;
  readonly requestTimeoutMs: number;
  /** Aborts every call. */
  readonly signal: AbortSignal;
}

/** A NomadHttp over its own keep-alive agent (TLS from the configured files); destroy the agent when done. */
export function connectNomad(options: NomadConnectionOptions): { http: NomadHttp; agent: http.Agent } {
  const base = nomadBaseUrl(options.address);
  const tls = loadTlsMaterial(options.tls, 'Nomad');
  const agent = base.protocol === 'https:' ? new https.Agent({ keepAlive: true, ...tls }) : new http.Agent({ keepAlive: true });
  const { token, region, namespace, requestTimeoutMs, signal } = options;
  return { http: new NomadHttp({ base, token, region, namespace, tls, agent, requestTimeoutMs, signal }), agent };
}

/** Nomad's HTTP errors are plain text; some proxies and versions send JSON with a message. */
function nomadMessage(text: string): string {
  const trimmed = text.trim();
  try {
    const parsed: unknown = JSON.parse(trimmed);
    if (typeof parsed === 'object' && parsed !== null && 'message' in parsed && typeof parsed.message === 'string') return parsed.message.slice(0, MAX_MESSAGE_CHARS);
  } catch {
    // Plain text, as Nomad sends it.
  }
  return trimmed.slice(0, MAX_MESSAGE_CHARS);
}
