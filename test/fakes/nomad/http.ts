import type http from 'node:http';
import type { Logger } from '../../../controller/util/log.js';
import { seededRandom } from '../../support/random.js';
import { parseSubscribeRequest, type SubscribeRequest } from './events.js';
import { checkLogsRequest, parseLogsRequest, serveLogs, type LogsRequest } from './logs.js';
import { allocFull, allocStub, evalJson, jobActivity, jobFull, jobStub, nodeFull, nodeStub } from './render.js';
import type { NomadState, Table } from './state.js';
import { HttpError, type JsonObject } from './types.js';
import { parseGoDuration } from './validate.js';

/**
 * Routing of Nomad's HTTP API onto the double's state: headers, ACL, fault injection, blocking queries
 * (`?index=N&wait=D`: hold while the table's index is ≤ N, up to D plus up to D/16 of jitter, as Nomad's
 * blockingRPC does) and the event stream (newline-delimited JSON: a heartbeat `{}` at once, then every
 * heartbeat interval, and the frames of the subscription). A query already held when reset() drops the
 * state answers at once with the new, lower index (Nomad would hold it until the wait elapses; see
 * NomadDouble.reset); an open event stream ends.
 */

export interface Faults {
  /** Added before every request is handled. */
  latencyMs: number;
  /** Share (0..1) of requests answered 500 before they are handled (a failed write changes nothing). */
  errorRate: number;
  /**
   * Share (0..1) of requests never answered: the connection is held until the client gives up or the
   * double stops. Half of the writes among them are applied first (done, but the client never hears of
   * it), the other half never reach the state. Drawn together with errorRate, so the two shares add up.
   */
  timeoutRate: number;
}

/** How many requests the faults hit so far. */
export interface InjectedFaults {
  errors: number;
  timeouts: number;
  /** Timed-out writes that were applied before their answer was lost. */
  appliedWrites: number;
}

export interface ApiContext {
  /** The current state (replaced by reset()). */
  state(): NomadState;
  readonly faults: Faults;
  readonly aclToken: string | undefined;
  readonly hostIP: string;
  /** Between event stream heartbeats (Nomad: 30 s). */
  readonly heartbeatMs: number;
  /** Between log stream heartbeats (Nomad: 1 s). */
  readonly logHeartbeatMs: number;
  /** Where an allocation's task logs are. */
  logsDir(allocId: string): string;
  /** A task's logs are asked for (a simulated container starts writing). */
  observeLogs(allocId: string, task: string): void;
  readonly log: Logger;
}

/** Nomad's DefaultBlockingRPCQueryTime and MaxBlockingRPCQueryTime: both 300 s (Consul's cap is 10 minutes). */
const DEFAULT_WAIT_MS = 5 * 60_000;
const MAX_WAIT_MS = 5 * 60_000;

/** How long a blocking read with `?wait=` holds at most: the wait (default and cap 300 s) plus up to 1/16 of jitter. */
export function blockingWaitMs(waitText: string | null, random: () => number = Math.random): number {
  let waitMs = DEFAULT_WAIT_MS;
  if (waitText !== null && waitText !== '') {
    const parsed = parseGoDuration(waitText);
    if (parsed === undefined) throw new HttpError(400, `Invalid wait time: time: invalid duration "${waitText}"`);
    waitMs = Math.min(MAX_WAIT_MS, parsed);
  }
  return waitMs + random() * (waitMs / 16);
}
const MAX_BODY_BYTES = 16 * 1024 * 1024;
const LEADER = '127.0.0.1:4647';
/** Readable without a token even when ACLs are enforced, as in Nomad. */
const PUBLIC = new Set(['/v1/status/leader', '/v1/status/peers', '/v1/regions']);

interface Answer {
  body: unknown;
  /** X-Nomad-Index of a read; writes give their own index. */
  index?: number;
}

/** `GET /v1/event/stream`: answered as a stream, not a body. */
interface StreamAnswer {
  stream: SubscribeRequest;
}

/** `GET /v1/client/fs/logs/:alloc_id`: answered as a stream of frames (checked already). */
interface LogsAnswer {
  logs: LogsRequest;
}

type Query = URLSearchParams;

export class NomadApi {
  /** Blocking queries being held right now. */
  held = 0;
  /** Event streams open right now. */
  streams = 0;
  readonly injected: InjectedFaults = { errors: 0, timeouts: 0, appliedWrites: 0 };
  /** Which requests the faults hit, and which timed-out writes are applied: a seeded draw, so a run's longest streak of faults is the same every time. */
  private readonly faultDraw = seededRandom(11);

  constructor(private readonly ctx: ApiContext) {}

  /** Handles one request; never throws. */
  async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const closed = new AbortController();
    res.on('close', () => closed.abort());
    try {
      const { latencyMs, errorRate, timeoutRate } = this.ctx.faults;
      if (latencyMs > 0) await new Promise((resolve) => setTimeout(resolve, latencyMs));
      // Drawn only while a fault is set: the draws then follow the faulty requests alone.
      const draw = errorRate + timeoutRate > 0 ? this.faultDraw() : 1;
      if (draw < errorRate) {
        this.injected.errors++;
        req.resume();
        throw new HttpError(500, 'rpc error: injected fault (Nomad double)');
      }
      if (draw < errorRate + timeoutRate) return await this.neverAnswer(req, closed.signal);
      const answer = await this.answer(req, closed.signal);
      if (res.destroyed) return;
      if ('stream' in answer) return await this.serveStream(answer.stream, res, closed.signal);
      if ('logs' in answer) return await serveLogs(answer.logs, res, closed.signal, { ...this.ctx, heartbeatMs: this.ctx.logHeartbeatMs });
      const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/json', 'x-nomad-knownleader': 'true', 'x-nomad-lastcontact': '0' };
      if (answer.index !== undefined) headers['x-nomad-index'] = String(answer.index);
      res.writeHead(200, headers);
      res.end(JSON.stringify(answer.body));
    } catch (error) {
      if (res.destroyed || res.headersSent) return;
      const status = error instanceof HttpError ? error.status : 500;
      if (!(error instanceof HttpError)) this.ctx.log.error({ err: error, method: req.method, url: req.url }, 'nomad double: request failed');
      const headers: http.OutgoingHttpHeaders = { 'content-type': 'text/plain; charset=utf-8' };
      if (error instanceof HttpError && error.index !== undefined) Object.assign(headers, { 'x-nomad-index': String(error.index), 'x-nomad-knownleader': 'true', 'x-nomad-lastcontact': '0' });
      res.writeHead(status, headers);
      res.end((error as Error).message);
    }
  }

  /** The timeout fault: a write applied or not (even odds), and no answer until the connection closes. */
  private async neverAnswer(req: http.IncomingMessage, closed: AbortSignal): Promise<void> {
    this.injected.timeouts++;
    const write = req.method === 'PUT' || req.method === 'POST' || req.method === 'DELETE';
    if (write && this.faultDraw() < 0.5) {
      this.injected.appliedWrites++;
      // Whatever it would have answered (even a refusal) is lost with the connection.
      await this.answer(req, closed).catch(() => undefined);
    } else {
      req.resume();
    }
    if (!closed.aborted) await new Promise((resolve) => closed.addEventListener('abort', resolve, { once: true }));
  }

  /**
   * Nomad's event stream handler: the first heartbeat as soon as the subscription exists (so a client knows
   * it is live), the buffered frames from the start index, then new frames and a heartbeat every interval,
   * until the client goes or the state is dropped.
   */
  private async serveStream(request: SubscribeRequest, res: http.ServerResponse, closed: AbortSignal): Promise<void> {
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-cache' });
    const send = (line: string): void => {
      if (!res.destroyed) res.write(`${line}\n`);
    };
    this.streams++;
    try {
      await new Promise<void>((resolve) => {
        let unsubscribe = (): void => undefined;
        const heartbeat = setInterval(() => send('{}'), this.ctx.heartbeatMs);
        const done = (): void => {
          clearInterval(heartbeat);
          unsubscribe();
          closed.removeEventListener('abort', done);
          resolve();
        };
        closed.addEventListener('abort', done, { once: true });
        send('{}');
        unsubscribe = this.ctx.state().events.subscribe(request, send, () => {
          done();
          res.end();
        });
      });
    } finally {
      this.streams--;
    }
  }

  /** Parses, authorizes and routes one request: its answer, or an HttpError. */
  private async answer(req: http.IncomingMessage, closed: AbortSignal): Promise<Answer | StreamAnswer | LogsAnswer> {
    const url = new URL(req.url ?? '/', 'http://nomad.invalid');
    this.authorize(req, url.pathname);
    const region = url.searchParams.get('region');
    if (region !== null && region !== '' && region !== 'global') throw new HttpError(500, 'No path to region');
    const body = req.method === 'PUT' || req.method === 'POST' ? await readJson(req) : (req.resume(), undefined);
    return this.route(req.method ?? 'GET', url.pathname, url.searchParams, body, closed);
  }

  private authorize(req: http.IncomingMessage, path: string): void {
    const required = this.ctx.aclToken;
    if (required === undefined || PUBLIC.has(path)) return;
    const header = req.headers['x-nomad-token'];
    const bearer = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1];
    const token = (Array.isArray(header) ? header[0] : header) ?? bearer;
    if (token !== required) throw new HttpError(403, 'Permission denied');
  }

  private async route(method: string, path: string, query: Query, body: unknown, signal: AbortSignal): Promise<Answer | StreamAnswer | LogsAnswer> {
    const parts = path.split('/').filter((part) => part !== '').map((part) => decodeURIComponent(part));
    if (parts[0] !== 'v1') throw new HttpError(404, 'Invalid URL path');
    const [, resource, id, sub, item] = parts;
    const namespace = query.get('namespace') || 'default';
    const only = (...methods: string[]): void => {
      if (!methods.includes(method)) throw new HttpError(405, 'Invalid method');
    };
    const state = (): NomadState => this.ctx.state();
    switch (resource) {
      case 'status':
        only('GET');
        if (id === 'leader') return { body: LEADER };
        if (id === 'peers') return { body: [LEADER] };
        break;
      case 'regions':
        only('GET');
        return { body: ['global'] };
      case 'client': {
        if (id !== 'fs' || sub !== 'logs' || parts.length > 5) break;
        only('GET');
        const logs = parseLogsRequest(item, query);
        await checkLogsRequest(logs, { ...this.ctx, heartbeatMs: this.ctx.logHeartbeatMs });
        return { logs };
      }
      case 'event':
        if (id !== 'stream' || sub !== undefined) break;
        only('GET');
        return { stream: parseSubscribeRequest(query) };
      case 'jobs':
        if (id !== undefined) break;
        if (method === 'PUT' || method === 'POST') return this.write(state().register(body, namespace));
        only('GET');
        return this.read('jobs', query, signal, (s) => {
          const activity = jobActivity(s);
          return sortById([...s.jobs.values()].filter((job) => inNamespace(job.spec.namespace, namespace) && job.spec.id.startsWith(query.get('prefix') ?? '')))
            .map((job) => jobStub(activity, job, query.get('meta') === 'true'));
        });
      case 'job': {
        if (id === undefined) break;
        if (sub === undefined) {
          if (method === 'PUT' || method === 'POST') return this.write(state().register(body, namespace, id));
          if (method === 'DELETE') return this.write(state().deregister(id, query.get('purge') === 'true'));
          only('GET');
          return this.read('jobs', query, signal, (s) => {
            const job = s.jobs.get(id);
            if (!job || !inNamespace(job.spec.namespace, namespace)) throw new HttpError(404, 'job not found');
            return jobFull(s, job);
          });
        }
        if (sub === 'evaluate') {
          only('PUT', 'POST');
          return this.write(state().evaluate(id, body, namespace));
        }
        only('GET');
        if (sub === 'allocations') {
          return this.read('allocs', query, signal, (s) => {
            const job = s.jobs.get(id);
            const all = query.get('all') === 'true';
            // Without all=true only the allocations of this instance of the job (not of a purged namesake).
            return sortById([...s.allocs.values()].filter((alloc) => alloc.JobID === id && (all || (job !== undefined && alloc.job.createIndex === job.createIndex))))
              .map((alloc) => allocStub(alloc, { resources: query.get('resources') === 'true', taskStates: query.get('task_states') !== 'false' }));
          });
        }
        if (sub === 'evaluations') {
          return this.read('evals', query, signal, (s) => sortById([...s.evals.values()].filter((evaluation) => evaluation.JobID === id)).map(evalJson));
        }
        break;
      }
      case 'allocations':
        only('GET');
        if (id !== undefined) break;
        return this.read('allocs', query, signal, (s) =>
          sortById([...s.allocs.values()].filter((alloc) => inNamespace(alloc.Namespace, namespace) && alloc.ID.startsWith(query.get('prefix') ?? '')))
            .map((alloc) => allocStub(alloc, { resources: query.get('resources') === 'true', taskStates: query.get('task_states') !== 'false' })),
        );
      case 'allocation':
        only('GET');
        if (id === undefined || sub !== undefined) break;
        return this.read('allocs', query, signal, (s) => {
          const alloc = s.allocs.get(id);
          if (!alloc) throw new HttpError(404, 'alloc not found');
          return allocFull(alloc);
        });
      case 'evaluations':
        only('GET');
        if (id !== undefined) break;
        return this.read('evals', query, signal, (s) =>
          sortById([...s.evals.values()].filter((evaluation) =>
            inNamespace(evaluation.Namespace, namespace) &&
            evaluation.ID.startsWith(query.get('prefix') ?? '') &&
            (query.get('job') === null || evaluation.JobID === query.get('job')) &&
            (query.get('status') === null || evaluation.Status === query.get('status')),
          )).map(evalJson),
        );
      case 'evaluation':
        only('GET');
        if (id === undefined || sub !== undefined) break;
        return this.read('evals', query, signal, (s) => {
          const evaluation = s.evals.get(id);
          if (!evaluation) throw new HttpError(404, 'eval not found');
          return evalJson(evaluation);
        });
      case 'nodes':
        only('GET');
        if (id !== undefined) break;
        return this.read('nodes', query, signal, (s) =>
          sortById([...s.nodes.values()].map((node) => ({ ID: node.id, node }))).filter((item) => item.ID.startsWith(query.get('prefix') ?? '')).map((item) => nodeStub(item.node, this.ctx.hostIP)),
        );
      case 'node': {
        only('GET');
        if (id === undefined) break;
        if (sub === 'allocations') {
          return this.read('allocs', query, signal, (s) => sortById([...s.allocs.values()].filter((alloc) => alloc.NodeID === id)).map((alloc) => allocFull(alloc)));
        }
        if (sub !== undefined) break;
        return this.read('nodes', query, signal, (s) => {
          const node = s.nodes.get(id);
          if (!node) throw new HttpError(404, 'node not found');
          return nodeFull(node, this.ctx.hostIP);
        });
      }
    }
    throw new HttpError(404, `Invalid URL path ${path}`);
  }

  private write(result: { Index: number } & object): Answer {
    return { body: result, index: result.Index };
  }

  /** A read, blocking while `?index=` is at least the table's index. */
  private async read(table: Table, query: Query, signal: AbortSignal, build: (state: NomadState) => unknown): Promise<Answer> {
    const min = Number(query.get('index') ?? '0');
    if (!Number.isSafeInteger(min) || min < 0) throw new HttpError(400, `Failed to parse index parameter: ${query.get('index')}`);
    if (min > 0) {
      const waitMs = blockingWaitMs(query.get('wait'));
      // A state dropped by reset() releases its waiters: the query answers at once with the new, lower
      // index, so a client sees the index go backwards even if the new state later reaches its index.
      this.held++;
      try {
        await this.ctx.state().waitForIndex(table, min, waitMs, signal);
      } finally {
        this.held--;
      }
    }
    const state = this.ctx.state();
    try {
      return { body: build(state), index: state.indexOf(table) };
    } catch (error) {
      if (error instanceof HttpError) error.index = state.indexOf(table);
      throw error;
    }
  }
}

function inNamespace(item: string, asked: string): boolean {
  return asked === '*' || item === asked;
}

function sortById<T extends { ID?: string } | { spec: { id: string } }>(items: T[]): T[] {
  const key = (item: T): string => ('spec' in item ? item.spec.id : (item.ID ?? ''));
  return items.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

function readJson(req: http.IncomingMessage): Promise<unknown> {
  return new Promise<unknown>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) reject(new HttpError(413, 'Request body too large'));
      else chunks.push(chunk);
    });
    req.on('error', reject);
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      if (text.trim() === '') return resolve(undefined);
      try {
        resolve(JSON.parse(text) as JsonObject);
      } catch (error) {
        reject(new HttpError(400, `Request decode failed: ${(error as Error).message}`));
      }
    });
  });
}
