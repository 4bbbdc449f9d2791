import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { randomUUID } from 'node:crypto';
import { silentLogger, type Logger } from '../../controller/util/log.js';
import { seededRandom } from '../support/random.js';

/**
 * A test double that speaks Consul's HTTP API for the parts Manticore uses: KV (with blocking queries,
 * CAS, locks), sessions (TTL, lock-delay, behaviors), /v1/txn, /v1/status and a minimal /v1/agent/self.
 * It is test infrastructure, never a production backend.
 *
 * Behaviour follows Consul's documentation and its open-source implementation (agent/kvs_endpoint.go,
 * agent/consul/state/kvs.go, agent/txn_endpoint.go, agent/consul/state/txn.go, agent/session_endpoint.go,
 * agent/blockingquery): status codes, bodies, headers, index rules (a prefix's X-Consul-Index is the
 * highest ModifyIndex or tombstone under it, deletes leave tombstones), the "unchanged write is skipped"
 * rule, lock-delay after invalidation, the abandon rule for blocking queries after a restore, and the agent's
 * limit on connections open at once from one client IP (limits.http_max_conns_per_client).
 *
 * Deliberate differences, each so that tests are deterministic or simpler:
 * - a TTL session is invalidated exactly TTL after its last renewal (Consul waits up to 2×TTL; the
 *   contract only promises "not before TTL", so exactly TTL is the strictest legal behaviour);
 * - tombstones are reaped only when a test calls reapTombstones() (Consul reaps them tombstone_ttl, ~15 min,
 *   after the delete);
 * - responses are never gzip-compressed; only KV operations are accepted in /v1/txn;
 * - the newest releases' key-character whitelist (validateKVKey) is not enforced.
 */

export interface ConsulDoubleOptions {
  readonly host?: string;
  /** 0 (the default) lets the OS pick a free port. */
  readonly port?: number;
  readonly log?: Logger;
  /** When set, ACLs are enforced with default-deny: this token may do everything, no token is anonymous. */
  readonly aclToken?: string;
  readonly datacenter?: string;
  readonly nodeName?: string;
  /** Consul Enterprise namespaces (`?ns=`). Off by default: like Consul CE, `ns` is then a 400. */
  readonly namespaces?: boolean;
  /** Serve HTTPS instead of HTTP; `requireClientCert` is Consul's verify_incoming. */
  readonly tls?: {
    readonly cert: string | Buffer;
    readonly key: string | Buffer;
    readonly ca?: string | Buffer;
    readonly requireClientCert?: boolean;
  };
}

export interface ConsulDoubleFaults {
  /** Added before every request is handled. */
  latencyMs: number;
  /** Share (0..1) of requests answered 500 before they are handled (so a failed write changes nothing). */
  errorRate: number;
  /**
   * How many of the next requests the servers' rate limiter (limits.request_limits, enforcing) refuses before
   * they are handled: 429 "try a different server" for a stale read, which any server may answer, else 503
   * "try again later" (writes and reads the leader must answer).
   */
  rateLimited: number;
  /** How many of the next requests are answered 500 before they are handled, as `errorRate` does at random. */
  failing: number;
  /**
   * How many of the next requests are handled as if their token had no permission (anonymous under
   * default-deny): a write is refused, a transaction's with 409 "Permission denied", applying nothing.
   */
  denied: number;
}

export interface RecordedRequest {
  readonly method: string;
  /** The URL path as sent (still percent-encoded). */
  readonly path: string;
  readonly query: Readonly<Record<string, string>>;
  readonly headers: Readonly<http.IncomingHttpHeaders>;
  /** The ACL token the request carried (query, X-Consul-Token or bearer), if any. */
  readonly token: string | undefined;
  /** The status answered; 0 while a blocking query is still held (or if the connection was dropped). */
  status: number;
}

// Consul's limits and defaults (agent config defaults and structs constants).
const KV_MAX_VALUE_SIZE = 512 * 1024;
const TXN_MAX_REQ_LEN = 512 * 1024;
const MAX_TXN_OPS = 64;
const DEFAULT_QUERY_MS = 5 * 60_000;
const MAX_QUERY_MS = 10 * 60_000;
const JITTER_FRACTION = 16;
const NS_PER_MS = 1_000_000;
const NS_PER_S = 1_000_000_000;
const SESSION_TTL_MIN_NS = 10 * NS_PER_S;
const SESSION_TTL_MAX_NS = 24 * 3600 * NS_PER_S;
const MAX_LOCK_DELAY_NS = 60 * NS_PER_S;
const DEFAULT_LOCK_DELAY_NS = 15 * NS_PER_S;
/** Session/create converts numeric lock delays below this many nanoseconds to seconds (lockDelayMinThreshold). */
const LOCK_DELAY_MIN_THRESHOLD = 1000;
const SERF_CHECK = 'serfHealth';
const LEADER_ADDRESS = '127.0.0.1:8300';
const MAX_RECORDED_REQUESTS = 10_000;
/** limits.http_max_conns_per_client: connections one client IP may have open at once, idle keep-alive ones included. */
const MAX_CONNS_PER_CLIENT = 200;
const TOO_MANY_CONNS_MESSAGE = 'Your IP is issuing too many concurrent connections, please rate limit your calls\n';
/** What go-connlimit writes on a connection over the limit, before reading anything from it, and then closes it. */
const TOO_MANY_CONNS_RESPONSE =
  'HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n' +
  `Content-Length: ${Buffer.byteLength(TOO_MANY_CONNS_MESSAGE)}\r\nConnection: close\r\n\r\n${TOO_MANY_CONNS_MESSAGE}`;
const UINT64_MAX = (1n << 64n) - 1n;

interface DirEntry {
  readonly key: string;
  /** null for a value written with an empty body (Consul stores a nil slice and answers `"Value": null`). */
  readonly value: Buffer | null;
  readonly flags: bigint;
  readonly lockIndex: number;
  readonly session: string;
  readonly createIndex: number;
  readonly modifyIndex: number;
}

interface EntryInput {
  readonly key: string;
  readonly value: Buffer | null;
  readonly flags: bigint;
  readonly session: string;
  readonly lockIndex: number;
}

interface SessionRecord {
  readonly id: string;
  readonly name: string;
  readonly node: string;
  readonly lockDelayNs: number;
  readonly behavior: 'release' | 'delete';
  readonly ttl: string;
  readonly ttlMs: number;
  readonly nodeChecks: string[] | null;
  readonly namespace: string;
  readonly createIndex: number;
  readonly modifyIndex: number;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/**
 * Compares strings in the byte order of their UTF-8 encodings (code-point order), as Consul's radix tree
 * sorts keys. UTF-16 code units already sort that way except surrogates, which must sort above U+E000–U+FFFF.
 */
export function compareUtf8(a: string, b: string): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && y >= 0xd800) {
      x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
      y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
    }
    return x - y;
  }
  return a.length - b.length;
}

/** One namespace's KV table, its tombstones (graveyard) and lock delays, as in Consul's state store. */
class Keyspace {
  private readonly table = new Map<string, DirEntry>();
  /** The keys in byte order, kept sorted as keys come and go, so a prefix is one contiguous run. */
  private readonly order: string[] = [];
  readonly tombstones = new Map<string, number>();
  /** key → epoch ms until which the key cannot be locked (Consul's lockDelay map). */
  readonly lockDelays = new Map<string, number>();
  kvsIndex = 0;
  tombstonesIndex = 0;

  constructor(readonly name: string) {}

  get(key: string): DirEntry | undefined {
    return this.table.get(key);
  }

  get size(): number {
    return this.table.size;
  }

  set(entry: DirEntry): void {
    if (!this.table.has(entry.key)) this.order.splice(this.lowerBound(entry.key), 0, entry.key);
    this.table.set(entry.key, entry);
  }

  delete(key: string): void {
    if (!this.table.delete(key)) return;
    this.order.splice(this.lowerBound(key), 1);
  }

  /** The position of the first key not below `key`. */
  private lowerBound(key: string): number {
    let low = 0;
    let high = this.order.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (compareUtf8(this.order[middle]!, key) < 0) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  list(prefix: string): DirEntry[] {
    const out: DirEntry[] = [];
    for (let i = this.lowerBound(prefix); i < this.order.length && this.order[i]!.startsWith(prefix); i++) out.push(this.table.get(this.order[i]!)!);
    return out;
  }

  /** kvsMaxIndex: the KV table index, covering deletes through the tombstones table. */
  maxIndex(): number {
    return Math.max(this.kvsIndex, this.tombstonesIndex);
  }

  graveyardMax(prefix: string): number {
    let max = 0;
    for (const [key, index] of this.tombstones) if (key.startsWith(prefix) && index > max) max = index;
    return max;
  }

  /** kvsListTxn: the listing and its index (highest ModifyIndex or tombstone under the prefix, else the table's). */
  listWithIndex(prefix: string): { index: number; entries: DirEntry[] } {
    const entries = this.list(prefix);
    let local = 0;
    for (const entry of entries) if (entry.modifyIndex > local) local = entry.modifyIndex;
    if (prefix !== '') local = Math.max(local, this.graveyardMax(prefix));
    else local = this.maxIndex();
    return { index: local !== 0 ? local : this.maxIndex(), entries };
  }
}

/** An error answered as Consul's HTTP layer would: a status and a plain-text body. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(body || http.STATUS_CODES[status] || String(status));
  }
}

/** An error from Consul's RPC/state layer: the HTTP layer answers it 500 with the message as body. */
class RpcError extends Error {}

const PERMISSION_DENIED = 'Permission denied';
const ACL_NOT_FOUND = 'ACL not found';

type Access = 'all' | 'anonymous';

interface RequestContext {
  readonly req: http.IncomingMessage;
  readonly res: http.ServerResponse;
  readonly method: string;
  /** The decoded path. */
  readonly path: string;
  readonly query: URLSearchParams;
  readonly token: string | undefined;
  readonly record: RecordedRequest;
  /** Handled as if the token had no permission (faults.denied). */
  readonly denied: boolean;
}

/** What a (possibly blocking) read answers: its index and how to write it. */
interface Answer {
  readonly index: number;
  send(): void;
}

/** The keys a prefix listing watches (memdb's prefix watch): only a write under them wakes it. */
interface WatchScope {
  readonly ns: string;
  readonly prefix: string;
}

interface HeldQuery {
  readonly ctx: RequestContext;
  readonly minIndex: number;
  readonly evaluate: () => Answer;
  readonly scope: WatchScope | undefined;
  readonly timer: ReturnType<typeof setTimeout>;
}

type Handler = (ctx: RequestContext) => Promise<void> | void;

interface Route {
  readonly methods: readonly string[];
  readonly handler: Handler;
}

export class ConsulDouble {
  readonly faults: ConsulDoubleFaults = { latencyMs: 0, errorRate: 0, rateLimited: 0, failing: 0, denied: 0 };
  /** Every request received, oldest first (the latest 10,000). */
  readonly requests: RecordedRequest[] = [];
  /** How many connections were answered 429 for being over the per-client limit. */
  refusedConnections = 0;

  private readonly log: Logger;
  private readonly datacenter: string;
  private readonly nodeName: string;
  private readonly nodeId = randomUUID();
  /** Which requests `errorRate` fails: a seeded draw, so a run's longest streak of failures is the same every time. */
  private readonly faultDraw = seededRandom(7);
  private readonly namespacesEnabled: boolean;
  private readonly aclToken: string | undefined;
  private readonly held = new Set<HeldQuery>();
  /** Keys written since the held queries were last woken. */
  private touched: Array<{ readonly ns: string; readonly key: string }> = [];
  /** Open connections by client IP, counted against MAX_CONNS_PER_CLIENT. */
  private readonly connections = new Map<string, Set<net.Socket>>();
  /** Connections over the limit: answered 429 on arrival, so a request read from one is never handled. */
  private readonly refused = new WeakSet<net.Socket>();
  private readonly exact = new Map<string, Route>();
  private readonly subtrees = new Map<string, Route>();

  private raftIndex = 1;
  private keyspaces = new Map<string, Keyspace>();
  /** KV entries as answered with their values (see entryJson). */
  private readonly renderedEntries = new WeakMap<DirEntry, string>();
  private sessions = new Map<string, SessionRecord>();
  private sessionsIndex = 0;
  /** Undo steps of the write in progress, so a failed transaction rolls back completely. */
  private journal: (() => void)[] | undefined;
  private down = false;
  private stopped = false;

  private constructor(
    private readonly server: http.Server,
    private readonly host: string,
    readonly port: number,
    readonly address: string,
    options: ConsulDoubleOptions,
  ) {
    this.log = (options.log ?? silentLogger()).child({ component: 'consul-double' });
    this.datacenter = options.datacenter ?? 'dc1';
    this.nodeName = options.nodeName ?? 'consul-double';
    this.namespacesEnabled = options.namespaces ?? false;
    this.aclToken = options.aclToken;
    this.registerRoutes();
  }

  static async start(options: ConsulDoubleOptions = {}): Promise<ConsulDouble> {
    const host = options.host ?? '127.0.0.1';
    const tls = options.tls;
    const server: http.Server = tls
      ? https.createServer({ cert: tls.cert, key: tls.key, ca: tls.ca, requestCert: tls.requireClientCert ?? false, rejectUnauthorized: tls.requireClientCert ?? false })
      : http.createServer();
    // Go's server keeps idle keep-alive connections open; Node's 5 s default would race clients reusing them.
    server.keepAliveTimeout = 0;
    await listen(server, host, options.port ?? 0);
    const port = (server.address() as { port: number }).port;
    const address = `${tls ? 'https' : 'http'}://${host}:${port}`;
    const double = new ConsulDouble(server, host, port, address, options);
    // Before the HTTP server takes the connection, as Consul's limiter does on accepting it.
    server.prependListener(tls ? 'secureConnection' : 'connection', (socket: net.Socket) => double.admit(socket));
    server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      double.handle(req, res).catch((error: unknown) => double.failUnexpectedly(res, error));
    });
    double.log.info({ address }, 'Consul double listening');
    return double;
  }

  /** Stops answering: the listener closes (connections are refused) and open connections drop; `false` listens again on the same port. */
  async outage(on: boolean): Promise<void> {
    if (this.stopped || on === this.down) return;
    this.down = on;
    if (on) {
      this.log.info('outage: listener closed');
      const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      this.dropHeldQueries();
      this.server.closeAllConnections();
      await closed;
    } else {
      await listen(this.server, this.host, this.port);
      this.log.info('outage over: listening again');
    }
  }

  /**
   * Loses all state, as after a disaster recovery onto an empty cluster: the index starts again at 1.
   * Held blocking queries are answered at once with the new state, like Consul's "abandoned state store"
   * rule after a snapshot restore, so their clients see the index go backwards.
   */
  reset(): void {
    for (const session of this.sessions.values()) if (session.timer) clearTimeout(session.timer);
    this.sessions = new Map();
    this.sessionsIndex = 0;
    this.keyspaces = new Map();
    this.raftIndex = 1;
    this.log.info('reset: all state lost');
    for (const query of [...this.held]) {
      this.release(query);
      query.evaluate().send();
    }
  }

  /**
   * Reaps every tombstone, as Consul's tombstone GC does tombstone_ttl after the deletes. A prefix whose highest
   * index was a delete then lists with a lower index (its highest ModifyIndex); a query held on the prefix is not
   * woken by the reap (it writes no key) and answers that lower index when its wait ends.
   */
  reapTombstones(): void {
    this.apply(() => {
      // The tombstones table index stays: Consul's reap does not update it.
      for (const keyspace of this.keyspaces.values()) keyspace.tombstones.clear();
    });
    this.log.info('tombstones reaped');
  }

  /** How many connections are open right now, counted against the per-client limit. */
  get openConnections(): number {
    let open = 0;
    for (const sockets of this.connections.values()) open += sockets.size;
    return open;
  }

  /** How many blocking queries are being held right now. */
  get heldQueries(): number {
    return this.held.size;
  }

  /** Ends every held blocking query by dropping its connection. */
  abortBlockingQueries(): void {
    this.dropHeldQueries();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const session of this.sessions.values()) if (session.timer) clearTimeout(session.timer);
    this.dropHeldQueries();
    if (!this.down) {
      const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      this.server.closeAllConnections();
      await closed;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // HTTP plumbing

  private registerRoutes(): void {
    const exact = (path: string, methods: string[], handler: Handler): void => {
      this.exact.set(path, { methods, handler });
    };
    const subtree = (path: string, methods: string[], handler: Handler): void => {
      this.subtrees.set(path, { methods, handler });
    };
    subtree('/v1/kv/', ['GET', 'PUT', 'DELETE'], (ctx) => this.kvEndpoint(ctx));
    exact('/v1/txn', ['PUT'], (ctx) => this.txnEndpoint(ctx));
    exact('/v1/session/create', ['PUT'], (ctx) => this.sessionCreate(ctx));
    subtree('/v1/session/destroy/', ['PUT'], (ctx) => this.sessionDestroy(ctx));
    subtree('/v1/session/renew/', ['PUT'], (ctx) => this.sessionRenew(ctx));
    subtree('/v1/session/info/', ['GET'], (ctx) => this.sessionInfo(ctx));
    subtree('/v1/session/node/', ['GET'], (ctx) => this.sessionNode(ctx));
    exact('/v1/session/list', ['GET'], (ctx) => this.sessionList(ctx));
    exact('/v1/status/leader', ['GET'], (ctx) => this.sendJson(ctx, 200, goJsonString(LEADER_ADDRESS)));
    exact('/v1/status/peers', ['GET'], (ctx) => this.sendJson(ctx, 200, `[${goJsonString(LEADER_ADDRESS)}]`));
    exact('/v1/agent/self', ['GET'], (ctx) => this.agentSelf(ctx));
  }

  /** connlimit: counts the connection against its client IP, or answers it 429 and closes it when over the limit. */
  private admit(socket: net.Socket): void {
    const client = socket.remoteAddress ?? '';
    let open = this.connections.get(client);
    if (open === undefined) {
      open = new Set();
      this.connections.set(client, open);
    }
    if (open.size >= MAX_CONNS_PER_CLIENT) {
      this.refused.add(socket);
      this.refusedConnections += 1;
      this.log.debug({ client, open: open.size }, 'connection refused: limits.http_max_conns_per_client reached');
      socket.end(TOO_MANY_CONNS_RESPONSE);
      return;
    }
    const counted = open;
    counted.add(socket);
    socket.once('close', () => {
      counted.delete(socket);
      if (counted.size === 0 && this.connections.get(client) === counted) this.connections.delete(client);
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    // Consul closed the connection without reading it: nothing sent on it is handled.
    if (this.refused.has(req.socket)) return;
    const rawUrl = req.url ?? '/';
    const queryStart = rawUrl.indexOf('?');
    const rawPath = queryStart === -1 ? rawUrl : rawUrl.slice(0, queryStart);
    const query = new URLSearchParams(queryStart === -1 ? '' : rawUrl.slice(queryStart + 1));
    const token = requestToken(req, query);
    const record: RecordedRequest = {
      method: req.method ?? 'GET',
      path: rawPath,
      query: Object.fromEntries(query),
      headers: req.headers,
      token,
      status: 0,
    };
    this.requests.push(record);
    if (this.requests.length > MAX_RECORDED_REQUESTS) this.requests.splice(0, this.requests.length - MAX_RECORDED_REQUESTS);

    if (this.faults.latencyMs > 0) await new Promise((resolve) => setTimeout(resolve, this.faults.latencyMs));
    if (res.destroyed) return;
    if (this.faults.failing > 0 || (this.faults.errorRate > 0 && this.faultDraw() < this.faults.errorRate)) {
      this.faults.failing = Math.max(0, this.faults.failing - 1);
      this.log.debug({ method: record.method, path: rawPath }, 'injected 500');
      this.sendText(res, record, 500, 'rpc error making call: No cluster leader');
      return;
    }
    if (this.faults.rateLimited > 0) {
      this.faults.rateLimited -= 1;
      const elsewhere = record.method === 'GET' && query.has('stale');
      this.sendText(res, record, elsewhere ? 429 : 503, `rate limit exceeded, try ${elsewhere ? 'a different server' : 'again later'}`);
      return;
    }

    let path: string;
    try {
      path = decodeURIComponent(rawPath);
    } catch {
      // Go's server refuses a request line it cannot parse before any handler runs.
      this.sendText(res, record, 400, '400 Bad Request');
      return;
    }
    const denied = this.faults.denied > 0;
    if (denied) this.faults.denied -= 1;
    const ctx: RequestContext = { req, res, method: record.method, path, query, token, record, denied };
    try {
      // cleanhttp.PrintablePathCheckHandler: any non-printable character in the path is a bare 400.
      if (!isPrintable(path)) throw new HttpError(400, '');
      // Go's ServeMux redirects to the cleaned path ("a//b", "a/./b", "a/../b").
      const cleaned = cleanPath(path);
      if (cleaned !== path) {
        throw new HttpError(301, '', { Location: encodePath(cleaned) + (queryStart === -1 ? '' : rawUrl.slice(queryStart)) });
      }
      const route = this.route(path);
      if (!route) {
        if (this.subtrees.has(`${path}/`)) throw new HttpError(301, '', { Location: `${encodePath(path)}/` });
        // Consul's index handler answers unknown paths 404 with no body.
        throw new HttpError(404, '');
      }
      if (ctx.method === 'OPTIONS') {
        res.setHeader('Allow', ['OPTIONS', ...route.methods].join(','));
        this.sendEmpty(ctx, 200);
        return;
      }
      if (!route.methods.includes(ctx.method)) {
        throw new HttpError(405, `method ${ctx.method} not allowed`, { Allow: ['OPTIONS', ...route.methods].join(',') });
      }
      await route.handler(ctx);
    } catch (error) {
      this.sendError(ctx, error);
    }
  }

  private route(path: string): Route | undefined {
    const exact = this.exact.get(path);
    if (exact) return exact;
    let best: string | undefined;
    for (const prefix of this.subtrees.keys()) if (path.startsWith(prefix) && (best === undefined || prefix.length > best.length)) best = prefix;
    return best === undefined ? undefined : this.subtrees.get(best);
  }

  private sendError(ctx: RequestContext, error: unknown): void {
    if (ctx.res.headersSent || ctx.res.destroyed) return;
    if (error instanceof HttpError) {
      for (const [name, value] of Object.entries(error.headers)) ctx.res.setHeader(name, value);
      this.sendText(ctx.res, ctx.record, error.status, error.body);
    } else if (error instanceof RpcError) {
      const status = error.message === PERMISSION_DENIED || error.message === ACL_NOT_FOUND ? 403 : 500;
      this.sendText(ctx.res, ctx.record, status, error.message);
    } else {
      this.failUnexpectedly(ctx.res, error);
    }
  }

  private failUnexpectedly(res: http.ServerResponse, error: unknown): void {
    this.log.error({ err: error }, 'Consul double failed on a request');
    if (!res.headersSent && !res.destroyed) {
      res.statusCode = 500;
      res.end(`consul double: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  /** Go sniffs a plain-text body as text/plain; an empty body gets no Content-Type. */
  private sendText(res: http.ServerResponse, record: RecordedRequest, status: number, body: string): void {
    record.status = status;
    res.statusCode = status;
    const bytes = Buffer.from(body, 'utf8');
    if (bytes.length > 0) res.setHeader('Content-Type', 'text/plain; charset=utf-8');
    res.setHeader('Content-Length', bytes.length);
    res.end(bytes);
  }

  private sendJson(ctx: RequestContext, status: number, json: string): void {
    ctx.record.status = status;
    const bytes = Buffer.from(json, 'utf8');
    ctx.res.statusCode = status;
    ctx.res.setHeader('Content-Type', 'application/json');
    ctx.res.setHeader('Content-Length', bytes.length);
    ctx.res.end(bytes);
  }

  private sendEmpty(ctx: RequestContext, status: number): void {
    ctx.record.status = status;
    ctx.res.statusCode = status;
    ctx.res.setHeader('Content-Length', 0);
    ctx.res.end();
  }

  /** setMeta: X-Consul-Index (never 0), X-Consul-LastContact, X-Consul-KnownLeader, consistency. */
  private setMeta(ctx: RequestContext, index: number): void {
    ctx.res.setHeader('X-Consul-Index', String(Math.max(index, 1)));
    ctx.res.setHeader('X-Consul-LastContact', '0');
    ctx.res.setHeader('X-Consul-KnownLeader', 'true');
    ctx.res.setHeader('X-Consul-Effective-Consistency', ctx.query.has('stale') ? 'stale' : ctx.query.has('consistent') ? 'consistent' : 'leader');
  }

  private async readBody(ctx: RequestContext, limit: number, tooLarge: (bytes: number) => HttpError): Promise<Buffer> {
    const chunks: Buffer[] = [];
    let length = 0;
    for await (const chunk of ctx.req as AsyncIterable<Buffer>) {
      length += chunk.length;
      if (length > limit) throw tooLarge(length);
      chunks.push(chunk);
    }
    return Buffer.concat(chunks, length);
  }

  // ---------------------------------------------------------------------------------------------
  // Request parsing shared by endpoints (agent/http.go parse*)

  /** parseWait and parseConsistency: 400 on a malformed wait or index, or on stale+consistent. */
  private parseQueryOptions(ctx: RequestContext): { minIndex: number; waitMs: number | undefined } {
    const { query } = ctx;
    if (query.has('stale') && query.has('consistent')) {
      throw new HttpError(400, 'Cannot specify ?stale with ?consistent, conflicting semantics.');
    }
    let waitMs: number | undefined;
    const wait = query.get('wait');
    if (wait) {
      const ns = parseGoDuration(wait);
      if (ns === undefined) throw new HttpError(400, 'Invalid wait time');
      waitMs = ns / NS_PER_MS;
    }
    let minIndex = 0;
    const index = query.get('index');
    if (index) {
      if (!/^\d+$/.test(index) || BigInt(index) > UINT64_MAX) throw new HttpError(400, 'Invalid index');
      minIndex = Number(index);
    }
    return { minIndex, waitMs };
  }

  /** parseEntMeta: the namespace, or the CE refusal. */
  private namespace(ctx: RequestContext): string {
    const header = ctx.req.headers['x-consul-namespace'];
    const fromHeader = Array.isArray(header) ? header[0] : header;
    const ns = ctx.query.get('ns') || fromHeader || '';
    if (!this.namespacesEnabled) {
      if (fromHeader) throw new HttpError(400, 'Bad request: Invalid header: "X-Consul-Namespace" - Namespaces are a Consul Enterprise feature');
      if (ctx.query.get('ns')) throw new HttpError(400, 'Bad request: Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature');
      return 'default';
    }
    return ns === '' ? 'default' : ns;
  }

  /** RPC forwarding: another datacenter cannot be reached from here. */
  private checkDatacenter(ctx: RequestContext): void {
    const dc = ctx.query.get('dc');
    if (dc && dc !== this.datacenter) throw new RpcError('No path to datacenter');
  }

  /** Token resolution with default-deny: the configured token may do everything, none is anonymous. */
  private access(ctx: RequestContext): Access {
    if (ctx.denied) return 'anonymous';
    if (this.aclToken === undefined) return 'all';
    if (ctx.token === undefined || ctx.token === '') return 'anonymous';
    if (ctx.token === this.aclToken) return 'all';
    throw new RpcError(ACL_NOT_FOUND);
  }

  private keyspace(ns: string): Keyspace {
    let keyspace = this.keyspaces.get(ns);
    if (!keyspace) {
      keyspace = new Keyspace(ns);
      this.keyspaces.set(ns, keyspace);
    }
    return keyspace;
  }

  // ---------------------------------------------------------------------------------------------
  // Blocking queries (agent/blockingquery): answer at once when the index is past the client's, else
  // hold until a write moves it past, the wait (plus up to wait/16 jitter) runs out, or the state is lost.

  private blocking(ctx: RequestContext, options: { minIndex: number; waitMs: number | undefined }, evaluate: () => Answer, scope?: WatchScope): void {
    const answer = evaluate();
    if (options.minIndex === 0 || answer.index > options.minIndex) {
      answer.send();
      return;
    }
    let waitMs = options.waitMs ?? 0;
    if (waitMs > MAX_QUERY_MS) waitMs = MAX_QUERY_MS;
    else if (waitMs <= 0) waitMs = DEFAULT_QUERY_MS;
    waitMs += Math.random() * (waitMs / JITTER_FRACTION);
    const query: HeldQuery = {
      ctx,
      minIndex: options.minIndex,
      evaluate,
      scope,
      timer: setTimeout(() => {
        this.release(query);
        query.evaluate().send();
      }, waitMs),
    };
    this.held.add(query);
    ctx.res.once('close', () => this.release(query));
  }

  private release(query: HeldQuery): void {
    clearTimeout(query.timer);
    this.held.delete(query);
  }

  /**
   * Re-runs the held queries a commit may have answered (a listing only when a key under its prefix was
   * written), answering those whose index moved past the client's.
   */
  private wake(): void {
    const touched = this.touched;
    this.touched = [];
    for (const query of [...this.held]) {
      if (!this.held.has(query)) continue;
      const scope = query.scope;
      if (scope && !touched.some((write) => write.ns === scope.ns && write.key.startsWith(scope.prefix))) continue;
      const answer = query.evaluate();
      if (answer.index > query.minIndex) {
        this.release(query);
        answer.send();
      }
    }
  }

  private dropHeldQueries(): void {
    for (const query of [...this.held]) {
      this.release(query);
      query.ctx.res.destroy();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Raft-style writes: every applied write takes the next index, even one that changes nothing (a
  // failed CAS), as a raft log entry does. Mutations record undo steps so a failed txn rolls back.

  private apply<T>(body: (index: number) => T): T {
    this.raftIndex += 1;
    const result = body(this.raftIndex);
    this.wake();
    return result;
  }

  private mutate(undo: () => void): void {
    this.journal?.push(undo);
  }

  private putEntry(keyspace: Keyspace, entry: DirEntry): void {
    this.touched.push({ ns: keyspace.name, key: entry.key });
    const previous = keyspace.get(entry.key);
    const previousIndex = keyspace.kvsIndex;
    keyspace.set(entry);
    keyspace.kvsIndex = Math.max(keyspace.kvsIndex, entry.modifyIndex);
    this.mutate(() => {
      if (previous) keyspace.set(previous);
      else keyspace.delete(entry.key);
      keyspace.kvsIndex = previousIndex;
    });
  }

  private removeEntry(keyspace: Keyspace, key: string, index: number): void {
    const previous = keyspace.get(key);
    if (!previous) return;
    this.touched.push({ ns: keyspace.name, key });
    const previousIndex = keyspace.kvsIndex;
    keyspace.delete(key);
    keyspace.kvsIndex = index;
    this.mutate(() => {
      keyspace.set(previous);
      keyspace.kvsIndex = previousIndex;
    });
  }

  private tombstone(keyspace: Keyspace, key: string, index: number): void {
    this.touched.push({ ns: keyspace.name, key });
    const previous = keyspace.tombstones.get(key);
    const previousIndex = keyspace.tombstonesIndex;
    keyspace.tombstones.set(key, index);
    keyspace.tombstonesIndex = index;
    this.mutate(() => {
      if (previous === undefined) keyspace.tombstones.delete(key);
      else keyspace.tombstones.set(key, previous);
      keyspace.tombstonesIndex = previousIndex;
    });
  }

  /** kvsSetTxn: keeps CreateIndex, keeps the session unless told otherwise, skips a write that changes nothing. */
  private kvSet(keyspace: Keyspace, index: number, input: EntryInput, updateSession: boolean): DirEntry {
    const existing = keyspace.get(input.key);
    const session = updateSession ? input.session : (existing?.session ?? '');
    const candidate = { key: input.key, value: input.value, flags: input.flags, lockIndex: input.lockIndex, session };
    if (existing && sameEntry(existing, candidate)) return existing;
    const entry: DirEntry = { ...candidate, createIndex: existing ? existing.createIndex : index, modifyIndex: index };
    this.putEntry(keyspace, entry);
    return entry;
  }

  /** kvsSetCASTxn: cas 0 means "only if absent"; otherwise the ModifyIndex must match. */
  private kvSetCas(keyspace: Keyspace, index: number, input: EntryInput, cas: number): DirEntry | undefined {
    const existing = keyspace.get(input.key);
    if (cas === 0 ? existing !== undefined : existing?.modifyIndex !== cas) return undefined;
    return this.kvSet(keyspace, index, input, false);
  }

  private kvDelete(keyspace: Keyspace, index: number, key: string): void {
    if (!(keyspace.get(key) !== undefined)) return;
    this.tombstone(keyspace, key, index);
    this.removeEntry(keyspace, key, index);
  }

  /** kvsDeleteCASTxn: a missing key counts as deleted; otherwise the ModifyIndex must match (so 0 never deletes). */
  private kvDeleteCas(keyspace: Keyspace, index: number, key: string, cas: number): boolean {
    const existing = keyspace.get(key);
    if (!existing || existing.modifyIndex !== cas) return existing === undefined;
    this.kvDelete(keyspace, index, key);
    return true;
  }

  /** kvsDeleteTreeTxn: one tombstone for the whole prefix (none for the empty prefix). */
  private kvDeleteTree(keyspace: Keyspace, index: number, prefix: string): void {
    const doomed = keyspace.list(prefix);
    if (doomed.length === 0) return;
    for (const entry of doomed) this.removeEntry(keyspace, entry.key, index);
    if (prefix !== '') this.tombstone(keyspace, prefix, index);
  }

  /** kvsLockTxn: the session must exist; re-acquiring keeps LockIndex, a new holder increments it. */
  private kvLock(keyspace: Keyspace, index: number, input: EntryInput): DirEntry | undefined {
    if (input.session === '') throw new RpcError('missing session');
    if (!this.sessions.has(input.session)) throw new RpcError(`invalid session ${goJsonString(input.session)}`);
    const existing = keyspace.get(input.key);
    let lockIndex = 1;
    if (existing) {
      if (existing.session === input.session) lockIndex = existing.lockIndex;
      else if (existing.session !== '') return undefined;
      else lockIndex = existing.lockIndex + 1;
    }
    return this.kvSet(keyspace, index, { ...input, lockIndex }, true);
  }

  /** kvsUnlockTxn: only the holder may release; LockIndex stays. */
  private kvUnlock(keyspace: Keyspace, index: number, input: EntryInput): DirEntry | undefined {
    if (input.session === '') throw new RpcError('missing session');
    const existing = keyspace.get(input.key);
    if (!existing || existing.session !== input.session) return undefined;
    return this.kvSet(keyspace, index, { ...input, session: '', lockIndex: existing.lockIndex }, true);
  }

  private lockDelayed(keyspace: Keyspace, key: string): boolean {
    const until = keyspace.lockDelays.get(key);
    if (until === undefined) return false;
    if (until > Date.now()) return true;
    keyspace.lockDelays.delete(key);
    return false;
  }

  // ---------------------------------------------------------------------------------------------
  // KV endpoint (agent/kvs_endpoint.go)

  private async kvEndpoint(ctx: RequestContext): Promise<void> {
    const options = this.parseQueryOptions(ctx);
    const key = ctx.path.slice('/v1/kv/'.length);
    switch (ctx.method) {
      case 'GET':
        return ctx.query.has('keys') ? this.kvKeys(ctx, key, options) : this.kvGet(ctx, key, options);
      case 'PUT':
        return this.kvPut(ctx, key);
      default:
        return this.kvDeleteEndpoint(ctx, key);
    }
  }

  private kvGet(ctx: RequestContext, key: string, options: { minIndex: number; waitMs: number | undefined }): void {
    const recurse = ctx.query.has('recurse');
    if (!recurse && key === '') throw new HttpError(400, 'Missing key name');
    const ns = this.namespace(ctx);
    this.checkDatacenter(ctx);
    const access = this.access(ctx);
    if (!recurse && access === 'anonymous') throw new RpcError(PERMISSION_DENIED);
    const raw = ctx.query.has('raw') && !recurse;
    this.blocking(ctx, options, () => {
      const keyspace = this.keyspace(ns);
      let index: number;
      let entries: DirEntry[];
      let filtered = false;
      if (recurse) {
        const listing = keyspace.listWithIndex(key);
        index = listing.index;
        entries = listing.entries;
        if (access === 'anonymous' && entries.length > 0) {
          filtered = true;
          entries = [];
        }
      } else {
        const entry = keyspace.get(key);
        index = entry ? entry.modifyIndex : keyspace.maxIndex();
        entries = entry ? [entry] : [];
      }
      index = Math.max(index, 1);
      return {
        index,
        send: () => {
          this.setMeta(ctx, index);
          if (filtered) ctx.res.setHeader('X-Consul-Results-Filtered-By-ACLs', 'true');
          if (entries.length === 0) return this.sendEmpty(ctx, 404);
          if (raw) {
            const body = entries[0].value ?? Buffer.alloc(0);
            ctx.record.status = 200;
            ctx.res.statusCode = 200;
            ctx.res.setHeader('Content-Type', 'text/plain');
            ctx.res.setHeader('X-Content-Type-Options', 'nosniff');
            ctx.res.setHeader('Content-Security-Policy', 'sandbox');
            ctx.res.setHeader('Content-Length', body.length);
            ctx.res.end(body);
            return;
          }
          this.sendJson(ctx, 200, `[${entries.map((entry) => this.entryJson(entry, true, ns)).join(',')}]`);
        },
      };
    }, recurse ? { ns, prefix: key } : undefined);
  }

  private kvKeys(ctx: RequestContext, prefix: string, options: { minIndex: number; waitMs: number | undefined }): void {
    const ns = this.namespace(ctx);
    // The misspelling is still honoured by Consul for compatibility.
    const separator = ctx.query.get('separator') ?? ctx.query.get('seperator') ?? '';
    this.checkDatacenter(ctx);
    const access = this.access(ctx);
    this.blocking(ctx, options, () => {
      const listing = this.keyspace(ns).listWithIndex(prefix);
      const index = Math.max(listing.index, 1);
      const entries = access === 'anonymous' ? [] : listing.entries;
      const keys: string[] = [];
      const seen = new Set<string>();
      for (const entry of entries) {
        if (separator === '') {
          keys.push(entry.key);
          continue;
        }
        const at = entry.key.indexOf(separator, prefix.length);
        if (at === -1) keys.push(entry.key);
        else {
          const folded = entry.key.slice(0, at + separator.length);
          if (!seen.has(folded)) {
            seen.add(folded);
            keys.push(folded);
          }
        }
      }
      return {
        index,
        send: () => {
          this.setMeta(ctx, index);
          if (access === 'anonymous' && listing.entries.length > 0) ctx.res.setHeader('X-Consul-Results-Filtered-By-ACLs', 'true');
          if (keys.length === 0 && prefix !== '') return this.sendEmpty(ctx, 404);
          this.sendJson(ctx, 200, `[${keys.map(goJsonString).join(',')}]`);
        },
      };
    }, { ns, prefix });
  }

  private async kvPut(ctx: RequestContext, key: string): Promise<void> {
    const ns = this.namespace(ctx);
    if (key === '') throw new HttpError(400, 'Missing key name');
    conflictingFlags(ctx.query, ['cas', 'acquire', 'release']);
    const { query } = ctx;
    let flags = 0n;
    if (query.has('flags')) flags = parseUint64(query.get('flags') ?? '');
    let verb: 'set' | 'cas' | 'lock' | 'unlock' = 'set';
    let cas = 0;
    let session = '';
    if (query.has('cas')) {
      cas = Number(parseUint64(query.get('cas') ?? ''));
      verb = 'cas';
    }
    if (query.has('acquire')) {
      session = query.get('acquire') ?? '';
      verb = 'lock';
    }
    if (query.has('release')) {
      session = query.get('release') ?? '';
      verb = 'unlock';
    }
    const tooLarge = (bytes: number): HttpError =>
      new HttpError(
        413,
        `Request body(${bytes} bytes) too large, max size: ${KV_MAX_VALUE_SIZE} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.`,
      );
    const declared = Number(ctx.req.headers['content-length'] ?? '-1');
    if (declared > KV_MAX_VALUE_SIZE) throw tooLarge(declared);
    const body = await this.readBody(ctx, KV_MAX_VALUE_SIZE, tooLarge);
    this.checkDatacenter(ctx);
    if (this.access(ctx) === 'anonymous') throw new RpcError(PERMISSION_DENIED);
    const keyspace = this.keyspace(ns);
    // An empty body is stored as a nil slice, which Consul answers as "Value": null.
    const input: EntryInput = { key, value: body.length === 0 ? null : body, flags, session, lockIndex: 0 };
    if (verb === 'lock' && this.lockDelayed(keyspace, key)) {
      // Lock-delay is enforced before the raft apply: no index is used.
      this.log.debug({ key }, 'rejecting lock of key due to lock-delay');
      this.sendJson(ctx, 200, 'false');
      return;
    }
    const applied = this.apply((index) => {
      switch (verb) {
        case 'set':
          this.kvSet(keyspace, index, input, false);
          return true;
        case 'cas':
          return this.kvSetCas(keyspace, index, input, cas) !== undefined;
        case 'lock':
          return this.kvLock(keyspace, index, input) !== undefined;
        case 'unlock':
          return this.kvUnlock(keyspace, index, input) !== undefined;
      }
    });
    this.sendJson(ctx, 200, applied ? 'true' : 'false');
  }

  private kvDeleteEndpoint(ctx: RequestContext, key: string): void {
    const ns = this.namespace(ctx);
    conflictingFlags(ctx.query, ['recurse', 'cas']);
    const recurse = ctx.query.has('recurse');
    if (!recurse && key === '') throw new HttpError(400, 'Missing key name');
    const cas = ctx.query.has('cas') ? Number(parseUint64(ctx.query.get('cas') ?? '')) : undefined;
    this.checkDatacenter(ctx);
    if (this.access(ctx) === 'anonymous') throw new RpcError(PERMISSION_DENIED);
    const keyspace = this.keyspace(ns);
    const result = this.apply((index) => {
      if (recurse) this.kvDeleteTree(keyspace, index, key);
      else if (cas !== undefined) return this.kvDeleteCas(keyspace, index, key, cas);
      else this.kvDelete(keyspace, index, key);
      return true;
    });
    this.sendJson(ctx, 200, result ? 'true' : 'false');
  }

  private entryJson(entry: DirEntry, withValue: boolean, ns: string): string {
    // Entries never change (a write replaces them), so a watched prefix's thousands of entries are rendered
    // once each rather than on every answer.
    const cacheable = withValue && !this.namespacesEnabled;
    const cached = cacheable ? this.renderedEntries.get(entry) : undefined;
    if (cached !== undefined) return cached;
    const rendered = this.renderEntry(entry, withValue, ns);
    if (cacheable) this.renderedEntries.set(entry, rendered);
    return rendered;
  }

  private renderEntry(entry: DirEntry, withValue: boolean, ns: string): string {
    const value = withValue && entry.value !== null ? `"${entry.value.toString('base64')}"` : 'null';
    const session = entry.session !== '' ? `"Session":${goJsonString(entry.session)},` : '';
    const enterprise = this.namespacesEnabled ? `"Namespace":${goJsonString(ns)},"Partition":"default",` : '';
    return (
      `{"LockIndex":${entry.lockIndex},"Key":${goJsonString(entry.key)},"Flags":${entry.flags},"Value":${value},` +
      `${session}${enterprise}"CreateIndex":${entry.createIndex},"ModifyIndex":${entry.modifyIndex}}`
    );
  }

  // ---------------------------------------------------------------------------------------------
  // Transactions (agent/txn_endpoint.go, agent/consul/txn_endpoint.go, agent/consul/state/txn.go)

  private async txnEndpoint(ctx: RequestContext): Promise<void> {
    const tooLarge = (): HttpError => new HttpError(413, `Request body too large, max size: ${TXN_MAX_REQ_LEN} bytes`);
    const declared = Number(ctx.req.headers['content-length'] ?? '-1');
    if (declared > TXN_MAX_REQ_LEN) throw tooLarge();
    const body = await this.readBody(ctx, TXN_MAX_REQ_LEN, tooLarge);
    const ops = parseTxnOps(body);
    if (ops.length > MAX_TXN_OPS) throw new HttpError(413, `Transaction contains too many operations (${ops.length} > ${MAX_TXN_OPS})`);
    for (const op of ops) {
      const size = op.value?.length ?? 0;
      if (size > KV_MAX_VALUE_SIZE) throw new HttpError(413, `Value for key ${goJsonString(op.key)} is too large (${size} > ${KV_MAX_VALUE_SIZE} bytes)`);
    }
    const writes = ops.some((op) => TXN_WRITE_VERBS.has(op.verb));
    const defaultNs = this.namespace(ctx);
    if (!writes) this.parseQueryOptions(ctx);
    this.checkDatacenter(ctx);
    const access = this.access(ctx);

    // Pre-checks before the raft apply (kvsPreApply): key present, ACL, lock-delay.
    const errors: TxnErrorOut[] = [];
    ops.forEach((op, opIndex) => {
      if (op.unsupported) errors.push({ opIndex, what: op.unsupported });
      else if (op.key === '' && op.verb !== 'delete-tree') errors.push({ opIndex, what: 'Must provide key' });
      else if (access === 'anonymous' && op.verb !== 'get' && op.verb !== 'get-tree' && op.verb !== 'get-or-empty') {
        errors.push({ opIndex, what: PERMISSION_DENIED });
      } else if (op.verb === 'lock' && this.lockDelayed(this.keyspace(op.namespace ?? defaultNs), op.key)) {
        errors.push({ opIndex, what: `failed to lock key ${goJsonString(op.key)} due to lock delay` });
      }
    });
    if (errors.length > 0) return this.sendTxn(ctx, undefined, errors, writes);

    const run = (index: number): { results: string[] | undefined; errors: TxnErrorOut[] } => {
      const results: string[] = [];
      const failures: TxnErrorOut[] = [];
      ops.forEach((op, opIndex) => {
        const ns = op.namespace ?? defaultNs;
        try {
          const out = this.txnKv(this.keyspace(ns), index, op, ns, access);
          results.push(...out);
        } catch (error) {
          failures.push({ opIndex, what: error instanceof Error ? error.message : String(error) });
        }
      });
      return failures.length > 0 ? { results: undefined, errors: failures } : { results, errors: [] };
    };

    if (!writes) {
      const outcome = run(this.raftIndex);
      return this.sendTxn(ctx, outcome.results, outcome.errors, false);
    }
    this.journal = [];
    let outcome: { results: string[] | undefined; errors: TxnErrorOut[] };
    try {
      this.raftIndex += 1;
      outcome = run(this.raftIndex);
      if (outcome.errors.length > 0) for (const undo of this.journal.reverse()) undo();
    } finally {
      this.journal = undefined;
    }
    if (outcome.errors.length === 0) this.wake();
    this.sendTxn(ctx, outcome.results, outcome.errors, true);
  }

  /** txnKVS: runs one KV operation; throws with Consul's message when it fails. Returns the result JSON. */
  private txnKv(keyspace: Keyspace, index: number, op: TxnKvOp, ns: string, access: Access): string[] {
    const input: EntryInput = { key: op.key, value: op.value, flags: op.flags, session: op.session, lockIndex: 0 };
    const quoted = goJsonString(op.key);
    let entry: DirEntry | undefined;
    let keepValue = false;
    switch (op.verb) {
      case 'set':
        entry = this.kvSet(keyspace, index, input, false);
        break;
      case 'cas':
        entry = this.kvSetCas(keyspace, index, input, op.index);
        if (!entry) throw new Error(`failed to set key ${quoted}, index is stale`);
        break;
      case 'lock':
        entry = this.kvLock(keyspace, index, input);
        if (!entry) throw new Error(`failed to lock key ${quoted}, lock is already held`);
        break;
      case 'unlock':
        entry = this.kvUnlock(keyspace, index, input);
        if (!entry) throw new Error(`failed to unlock key ${quoted}, lock isn't held, or is held by another session`);
        break;
      case 'get':
        entry = access === 'anonymous' ? undefined : keyspace.get(op.key);
        if (!entry) throw new Error(`key ${quoted} doesn't exist`);
        keepValue = true;
        break;
      case 'get-or-empty':
        entry = (access === 'anonymous' ? undefined : keyspace.get(op.key)) ?? {
          ...input,
          value: null,
          lockIndex: 0,
          createIndex: 0,
          modifyIndex: 0,
        };
        keepValue = true;
        break;
      case 'get-tree':
        return access === 'anonymous' ? [] : keyspace.list(op.key).map((e) => `{"KV":${this.entryJson(e, true, ns)}}`);
      case 'check-index': {
        const existing = keyspace.get(op.key);
        if (!existing) throw new Error(`failed to check index, key ${quoted} doesn't exist`);
        if (existing.modifyIndex !== op.index) {
          throw new Error(`failed index check for key ${quoted}, current modify index ${existing.modifyIndex} != ${op.index}`);
        }
        entry = existing;
        break;
      }
      case 'check-session': {
        const existing = keyspace.get(op.key);
        if (!existing) throw new Error(`failed to check session, key ${quoted} doesn't exist`);
        if (existing.session !== op.session) {
          throw new Error(`failed session check for key ${quoted}, current session ${goJsonString(existing.session)} != ${goJsonString(op.session)}`);
        }
        entry = existing;
        break;
      }
      case 'check-not-exists':
        if ((keyspace.get(op.key) !== undefined)) throw new Error(`key ${quoted} exists`);
        break;
      case 'delete':
        this.kvDelete(keyspace, index, op.key);
        break;
      case 'delete-tree':
        this.kvDeleteTree(keyspace, index, op.key);
        break;
      case 'delete-cas':
        if (!this.kvDeleteCas(keyspace, index, op.key, op.index)) throw new Error(`failed to delete key ${quoted}, index is stale`);
        break;
      default:
        throw new Error(`unknown KV verb ${goJsonString(op.verb)}`);
    }
    return entry ? [`{"KV":${this.entryJson(entry, keepValue, ns)}}`] : [];
  }

  private sendTxn(ctx: RequestContext, results: string[] | undefined, errors: TxnErrorOut[], writes: boolean): void {
    if (!writes) {
      // Read-only transactions go through Txn.Read, which reports staleness like other reads.
      ctx.res.setHeader('X-Consul-LastContact', '0');
      ctx.res.setHeader('X-Consul-KnownLeader', 'true');
    }
    const resultsJson = results === undefined ? 'null' : `[${results.join(',')}]`;
    const errorsJson = errors.length === 0 ? 'null' : `[${errors.map((e) => `{"OpIndex":${e.opIndex},"What":${goJsonString(e.what)}}`).join(',')}]`;
    this.sendJson(ctx, errors.length === 0 ? 200 : 409, `{"Results":${resultsJson},"Errors":${errorsJson}}`);
  }

  // ---------------------------------------------------------------------------------------------
  // Sessions (agent/session_endpoint.go, agent/consul/session_endpoint.go, state/session.go)

  private async sessionCreate(ctx: RequestContext): Promise<void> {
    const ns = this.namespace(ctx);
    const body = await this.readBody(ctx, TXN_MAX_REQ_LEN, () => new HttpError(413, 'Request body too large'));
    let name = '';
    let node = this.nodeName;
    let lockDelayNs = DEFAULT_LOCK_DELAY_NS;
    let behavior = 'release';
    let ttl = '';
    let checks: string[] | null = [SERF_CHECK];
    if (body.length > 0) {
      try {
        const raw: unknown = JSON.parse(body.toString('utf8'));
        if (raw !== null && (typeof raw !== 'object' || Array.isArray(raw))) throw new Error('expected a JSON object');
        const fields = (raw ?? {}) as Record<string, unknown>;
        name = stringField(fields, 'Name') ?? name;
        node = stringField(fields, 'Node') ?? node;
        behavior = stringField(fields, 'Behavior') ?? behavior;
        ttl = stringField(fields, 'TTL') ?? ttl;
        const delay = field(fields, 'LockDelay');
        if (delay !== undefined && delay !== null) lockDelayNs = parseLockDelay(delay);
        const checkField = field(fields, 'Checks') ?? field(fields, 'NodeChecks');
        // Supplying Checks replaces the default serfHealth check, even with an empty list (FixupChecks).
        if (checkField !== undefined) checks = checkField === null ? null : stringArray(checkField, 'Checks');
      } catch (error) {
        throw new HttpError(400, `Request decode failed: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
    this.checkDatacenter(ctx);
    if (this.access(ctx) === 'anonymous') throw new RpcError(PERMISSION_DENIED);
    if (node === '') throw new RpcError('Must provide Node');
    if (behavior === '') behavior = 'release';
    if (behavior !== 'release' && behavior !== 'delete') throw new RpcError(`Invalid Behavior setting '${behavior}'`);
    let ttlNs = 0;
    if (ttl !== '') {
      const parsed = parseGoDurationDetailed(ttl);
      if (typeof parsed === 'string') throw new RpcError(`Session TTL '${ttl}' invalid: ${parsed}`);
      ttlNs = parsed;
      if (ttlNs !== 0 && (ttlNs < SESSION_TTL_MIN_NS || ttlNs > SESSION_TTL_MAX_NS)) {
        throw new RpcError(`Invalid Session TTL '${ttlNs}', must be between [${formatGoDuration(SESSION_TTL_MIN_NS)}=${formatGoDuration(SESSION_TTL_MAX_NS)}]`);
      }
    }
    if (node !== this.nodeName) throw new RpcError('Missing node registration');
    for (const check of checks ?? []) if (check !== SERF_CHECK) throw new RpcError(`Missing check '${check}' registration`);

    const id = randomUUID();
    this.apply((index) => {
      const session: SessionRecord = {
        id,
        name,
        node,
        lockDelayNs,
        behavior: behavior as 'release' | 'delete',
        ttl,
        ttlMs: ttlNs / NS_PER_MS,
        nodeChecks: checks,
        namespace: ns,
        createIndex: index,
        modifyIndex: index,
        timer: undefined,
      };
      this.sessions.set(id, session);
      this.sessionsIndex = index;
      this.armSessionTimer(session);
    });
    this.log.debug({ session: id, ttl, behavior }, 'session created');
    this.sendJson(ctx, 200, `{"ID":${goJsonString(id)}}`);
  }

  /** Exactly TTL after creation or the last renewal (Consul may take up to 2×TTL; see the class comment). */
  private armSessionTimer(session: SessionRecord): void {
    if (session.timer) clearTimeout(session.timer);
    session.timer = undefined;
    if (session.ttlMs <= 0) return;
    session.timer = setTimeout(() => {
      session.timer = undefined;
      this.log.debug({ session: session.id }, 'session TTL expired');
      this.invalidateSession(session.id);
    }, session.ttlMs);
    session.timer.unref?.();
  }

  /** deleteSessionTxn: releases or deletes every key the session holds and starts their lock-delay. */
  private invalidateSession(id: string): void {
    const session = this.sessions.get(id);
    if (!session) return;
    if (session.timer) clearTimeout(session.timer);
    const delayMs = Math.min(session.lockDelayNs, MAX_LOCK_DELAY_NS) / NS_PER_MS;
    const now = Date.now();
    this.apply((index) => {
      this.sessions.delete(id);
      this.sessionsIndex = index;
      for (const keyspace of this.keyspaces.values()) {
        for (const entry of keyspace.list('')) {
          if (entry.session !== id) continue;
          if (session.behavior === 'release') {
            this.kvSet(keyspace, index, { key: entry.key, value: entry.value, flags: entry.flags, session: '', lockIndex: entry.lockIndex }, true);
          } else {
            this.kvDelete(keyspace, index, entry.key);
          }
          if (delayMs > 0) keyspace.lockDelays.set(entry.key, now + delayMs);
        }
      }
    });
  }

  private sessionId(ctx: RequestContext, prefix: string): string {
    const id = ctx.path.slice(prefix.length);
    if (id === '') throw new HttpError(400, 'Missing session');
    return id;
  }

  private sessionDestroy(ctx: RequestContext): void {
    this.namespace(ctx);
    const id = this.sessionId(ctx, '/v1/session/destroy/');
    this.checkDatacenter(ctx);
    if (this.access(ctx) === 'anonymous') throw new RpcError(PERMISSION_DENIED);
    if (this.sessions.has(id)) this.invalidateSession(id);
    else this.apply(() => undefined);
    this.sendJson(ctx, 200, 'true');
  }

  private sessionRenew(ctx: RequestContext): void {
    this.parseQueryOptions(ctx);
    this.namespace(ctx);
    const id = this.sessionId(ctx, '/v1/session/renew/');
    this.checkDatacenter(ctx);
    const access = this.access(ctx);
    const session = this.sessions.get(id);
    if (!session) throw new HttpError(404, `Session id '${id}' not found`);
    if (access === 'anonymous') throw new RpcError(PERMISSION_DENIED);
    this.armSessionTimer(session);
    this.setMeta(ctx, this.sessionsIndex);
    this.sendJson(ctx, 200, `[${this.sessionJson(session)}]`);
  }

  private sessionInfo(ctx: RequestContext): void {
    const options = this.parseQueryOptions(ctx);
    this.namespace(ctx);
    const id = this.sessionId(ctx, '/v1/session/info/');
    this.checkDatacenter(ctx);
    const access = this.access(ctx);
    this.sessionQuery(ctx, options, () => {
      const session = this.sessions.get(id);
      return session && access === 'all' ? [session] : [];
    });
  }

  private sessionNode(ctx: RequestContext): void {
    const options = this.parseQueryOptions(ctx);
    this.namespace(ctx);
    const node = ctx.path.slice('/v1/session/node/'.length);
    if (node === '') throw new HttpError(400, 'Missing node name');
    this.checkDatacenter(ctx);
    const access = this.access(ctx);
    this.sessionQuery(ctx, options, () => (access === 'all' ? this.sortedSessions().filter((s) => s.node === node) : []));
  }

  private sessionList(ctx: RequestContext): void {
    const options = this.parseQueryOptions(ctx);
    this.namespace(ctx);
    this.checkDatacenter(ctx);
    const access = this.access(ctx);
    this.sessionQuery(ctx, options, () => (access === 'all' ? this.sortedSessions() : []));
  }

  private sessionQuery(ctx: RequestContext, options: { minIndex: number; waitMs: number | undefined }, select: () => SessionRecord[]): void {
    this.blocking(ctx, options, () => {
      const index = Math.max(this.sessionsIndex, 1);
      const sessions = select();
      return {
        index,
        send: () => {
          this.setMeta(ctx, index);
          this.sendJson(ctx, 200, `[${sessions.map((s) => this.sessionJson(s)).join(',')}]`);
        },
      };
    });
  }

  private sortedSessions(): SessionRecord[] {
    return [...this.sessions.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  private sessionJson(session: SessionRecord): string {
    const checks = session.nodeChecks === null ? 'null' : `[${session.nodeChecks.map(goJsonString).join(',')}]`;
    const enterprise = this.namespacesEnabled ? `"Namespace":${goJsonString(session.namespace)},"Partition":"default",` : '';
    return (
      `{"ID":${goJsonString(session.id)},"Name":${goJsonString(session.name)},"Node":${goJsonString(session.node)},` +
      `"LockDelay":${session.lockDelayNs},"Behavior":${goJsonString(session.behavior)},"TTL":${goJsonString(session.ttl)},` +
      `"NodeChecks":${checks},"ServiceChecks":null,${enterprise}"CreateIndex":${session.createIndex},"ModifyIndex":${session.modifyIndex}}`
    );
  }

  // ---------------------------------------------------------------------------------------------
  // Agent

  private agentSelf(ctx: RequestContext): void {
    if (this.access(ctx) === 'anonymous') throw new RpcError(PERMISSION_DENIED);
    const self = {
      Config: {
        Datacenter: this.datacenter,
        PrimaryDatacenter: this.datacenter,
        NodeName: this.nodeName,
        NodeID: this.nodeId,
        Server: true,
        Revision: 'consul-double',
        Version: '1.20.0',
      },
      Member: { Name: this.nodeName, Addr: '127.0.0.1', Port: 8301, Tags: { dc: this.datacenter, role: 'consul' }, Status: 1 },
      Meta: { 'consul-network-segment': '' },
    };
    this.sendJson(ctx, 200, goJson(self));
  }
}

// -----------------------------------------------------------------------------------------------
// Transactions: request decoding

const TXN_WRITE_VERBS = new Set(['set', 'delete', 'delete-cas', 'delete-tree', 'cas', 'lock', 'unlock']);

interface TxnKvOp {
  readonly verb: string;
  readonly key: string;
  readonly value: Buffer | null;
  readonly flags: bigint;
  readonly index: number;
  readonly session: string;
  readonly namespace: string | undefined;
  /** Set for operations the double does not implement (catalog operations). */
  readonly unsupported?: string;
}

interface TxnErrorOut {
  readonly opIndex: number;
  readonly what: string;
}

/** Decodes the /v1/txn body as Go's encoding/json would (case-insensitive field names, base64 values). */
function parseTxnOps(body: Buffer): TxnKvOp[] {
  const fail = (message: string): never => {
    throw new HttpError(400, `Failed to parse body: ${message}`);
  };
  let raw: unknown;
  try {
    raw = JSON.parse(body.toString('utf8'));
  } catch (error) {
    return fail(error instanceof Error ? error.message : String(error));
  }
  if (raw === null) return [];
  if (!Array.isArray(raw)) return fail('json: cannot unmarshal object into Go value of type api.TxnOps');
  return raw.map((item: unknown): TxnKvOp => {
    if (item === null || typeof item !== 'object' || Array.isArray(item)) {
      return fail('json: cannot unmarshal value into Go value of type api.TxnOp');
    }
    const kv = field(item as Record<string, unknown>, 'KV');
    if (kv === undefined || kv === null) {
      const kind = ['Node', 'Service', 'Check'].find((name) => field(item as Record<string, unknown>, name) != null);
      return {
        verb: '',
        key: '',
        value: null,
        flags: 0n,
        index: 0,
        session: '',
        namespace: undefined,
        unsupported: kind ? `the Consul double supports only KV operations, not ${kind}` : 'no operation specified',
      };
    }
    if (typeof kv !== 'object' || Array.isArray(kv)) return fail('json: cannot unmarshal value into Go struct field TxnOp.KV of type api.KVTxnOp');
    const fields = kv as Record<string, unknown>;
    const value = field(fields, 'Value');
    let decoded: Buffer | null = null;
    if (value !== undefined && value !== null) {
      if (typeof value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(value) || value.length % 4 !== 0) {
        return fail('illegal base64 data at input byte 0');
      }
      decoded = Buffer.from(value, 'base64');
    }
    const uint = (name: string): bigint => {
      const v = field(fields, name);
      if (v === undefined || v === null) return 0n;
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
        return fail(`json: cannot unmarshal ${JSON.stringify(v)} into Go struct field KVTxnOp.KV.${name} of type uint64`);
      }
      return BigInt(v);
    };
    const str = (name: string): string => {
      const v = field(fields, name);
      if (v === undefined || v === null) return '';
      if (typeof v !== 'string') return fail(`json: cannot unmarshal ${typeof v} into Go struct field KVTxnOp.KV.${name} of type string`);
      return v;
    };
    const namespace = str('Namespace');
    return {
      verb: str('Verb'),
      key: str('Key'),
      value: decoded,
      flags: uint('Flags'),
      index: Number(uint('Index')),
      session: str('Session'),
      namespace: namespace === '' ? undefined : namespace,
    };
  });
}

// -----------------------------------------------------------------------------------------------
// Helpers mirroring Go's behaviour

function listen(server: http.Server, host: string, port: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (error: Error): void => reject(error);
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** parseToken: `?token=` first, then X-Consul-Token, then an Authorization bearer token. */
function requestToken(req: http.IncomingMessage, query: URLSearchParams): string | undefined {
  const fromQuery = query.get('token');
  if (fromQuery) return fromQuery;
  const header = req.headers['x-consul-token'];
  const fromHeader = Array.isArray(header) ? header[0] : header;
  if (fromHeader) return fromHeader;
  const authorization = req.headers.authorization;
  const bearer = authorization?.match(/^Bearer\s+(.+)$/i);
  return bearer ? bearer[1].trim() : undefined;
}

/** conflictingFlags: 400 with the whole query, encoded as Go's url.Values.Encode does. */
function conflictingFlags(query: URLSearchParams, flags: readonly string[]): void {
  if (flags.filter((flag) => query.has(flag)).length > 1) throw new HttpError(400, `Conflicting flags: ${goQueryEncode(query)}\n`);
}

/** strconv.ParseUint failures surface as a plain error, which Consul answers 500. */
function parseUint64(text: string): bigint {
  if (!/^\d+$/.test(text) || BigInt(text) > UINT64_MAX) throw new RpcError(`strconv.ParseUint: parsing ${goJsonString(text)}: invalid syntax`);
  return BigInt(text);
}

function sameEntry(a: DirEntry, b: Omit<DirEntry, 'createIndex' | 'modifyIndex'>): boolean {
  const av = a.value ?? Buffer.alloc(0);
  const bv = b.value ?? Buffer.alloc(0);
  return a.lockIndex === b.lockIndex && a.key === b.key && a.flags === b.flags && a.session === b.session && av.equals(bv);
}

/** Go's encoding/json matches field names exactly first, then case-insensitively. */
function field(object: Record<string, unknown>, name: string): unknown {
  if (Object.hasOwn(object, name)) return object[name];
  const lower = name.toLowerCase();
  for (const key of Object.keys(object)) if (key.toLowerCase() === lower) return object[key];
  return undefined;
}

function stringField(object: Record<string, unknown>, name: string): string | undefined {
  const value = field(object, name);
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string') throw new Error(`'${name}' expected type 'string', got '${typeof value}'`);
  return value;
}

function stringArray(value: unknown, name: string): string[] {
  if (!Array.isArray(value) || !value.every((item) => typeof item === 'string')) throw new Error(`'${name}' expected a list of strings`);
  return value as string[];
}

/** FixupLockDelay: a duration string or a number of nanoseconds; values under 1000 ns mean seconds. */
function parseLockDelay(value: unknown): number {
  let ns: number;
  if (typeof value === 'string') {
    const parsed = parseGoDurationDetailed(value);
    if (typeof parsed === 'string') throw new Error(parsed);
    ns = parsed;
  } else if (typeof value === 'number' && Number.isFinite(value)) {
    ns = Math.trunc(value);
  } else {
    throw new Error(`'LockDelay' expected a duration, got '${typeof value}'`);
  }
  return ns < LOCK_DELAY_MIN_THRESHOLD ? ns * NS_PER_S : ns;
}

const DURATION_UNITS: Readonly<Record<string, number>> = {
  ns: 1,
  us: 1e3,
  'µs': 1e3,
  'μs': 1e3,
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};

/** time.ParseDuration, in nanoseconds, or Go's error message. */
function parseGoDurationDetailed(text: string): number | string {
  const quoted = goJsonString(text);
  let rest = text;
  let sign = 1;
  if (rest.startsWith('-') || rest.startsWith('+')) {
    if (rest[0] === '-') sign = -1;
    rest = rest.slice(1);
  }
  if (rest === '0') return 0;
  if (rest === '') return `time: invalid duration ${quoted}`;
  let total = 0;
  while (rest !== '') {
    const number = /^(\d*)(?:\.(\d*))?/.exec(rest);
    if (!number || (number[1] === '' && (number[2] === undefined || number[2] === ''))) return `time: invalid duration ${quoted}`;
    rest = rest.slice(number[0].length);
    const unit = /^[^\d.]+/.exec(rest);
    if (!unit) return `time: missing unit in duration ${quoted}`;
    const scale = DURATION_UNITS[unit[0]];
    if (scale === undefined) return `time: unknown unit ${goJsonString(unit[0])} in duration ${quoted}`;
    rest = rest.slice(unit[0].length);
    total += Number(`${number[1] || '0'}.${number[2] ?? '0'}`) * scale;
  }
  return Math.round(sign * total);
}

function parseGoDuration(text: string): number | undefined {
  const parsed = parseGoDurationDetailed(text);
  return typeof parsed === 'string' ? undefined : parsed;
}

/** time.Duration.String for whole durations of a second or more ("10s", "24h0m0s"), else in ms. */
function formatGoDuration(ns: number): string {
  if (ns < NS_PER_S) return `${ns / NS_PER_MS}ms`;
  const totalSeconds = ns / NS_PER_S;
  const hours = Math.floor(totalSeconds / 3600);
  const minutes = Math.floor((totalSeconds % 3600) / 60);
  const seconds = totalSeconds % 60;
  if (hours > 0) return `${hours}h${minutes}m${seconds}s`;
  if (minutes > 0) return `${minutes}m${seconds}s`;
  return `${seconds}s`;
}

/** Go's JSON string encoding also escapes <, >, & and the line separators. */
function goJsonString(text: string): string {
  return JSON.stringify(text).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function goJson(value: unknown): string {
  return JSON.stringify(value).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** url.Values.Encode: keys sorted, values QueryEscape'd. */
function goQueryEncode(query: URLSearchParams): string {
  const escape = (text: string): string =>
    encodeURIComponent(text)
      .replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)
      .replace(/%20/g, '+');
  const keys = [...new Set(query.keys())].sort();
  return keys.flatMap((key) => query.getAll(key).map((value) => `${escape(key)}=${escape(value)}`)).join('&');
}

/** unicode.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space. */
function isPrintable(text: string): boolean {
  return /^[\p{L}\p{M}\p{N}\p{P}\p{S} ]*$/u.test(text);
}

/** Go's path.Clean, keeping a trailing slash as ServeMux does. */
function cleanPath(path: string): string {
  if (path === '') return '/';
  const absolute = path.startsWith('/');
  const parts: string[] = [];
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (parts.length > 0 && parts[parts.length - 1] !== '..') parts.pop();
      else if (!absolute) parts.push('..');
      continue;
    }
    parts.push(part);
  }
  let cleaned = (absolute ? '/' : '') + parts.join('/');
  if (cleaned === '') cleaned = absolute ? '/' : '.';
  if (path.endsWith('/') && cleaned !== '/') cleaned += '/';
  return cleaned;
}

function encodePath(path: string): string {
  return path
    .split('/')
    .map((segment) => encodeURIComponent(segment))
    .join('/');
}
