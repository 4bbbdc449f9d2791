import http from 'node:http';
import https from 'node:https';
import { Observable, type Subscriber } from 'rxjs';
import { outcomeOfStatus, recordBackendCall, watchRestarts, type BackendOutcome } from '../metrics/metrics.js';
import type { Logger } from '../util/log.js';
import { jitteredBackoffMs } from '../util/backoff.js';
import { ExchangeTimer, readBody, readJsonArray } from '../util/http-body.js';
import { loadTlsMaterial } from '../util/tls.js';
import { pacingDelayMs } from '../util/watch-pacing.js';
import {
  StoreError,
  consulTxnOp,
  validateCas,
  validateKey,
  validatePrefix,
  validateTransaction,
  validateWatch,
  validateValue,
  type KvChange,
  type KvEntry,
  type KvEntryMeta,
  type KvListing,
  type PrefixIndex,
  type Store,
  type TxnOperation,
  type WatchStep,
  type WriteOptions,
} from './store.js';
import { MAX_LOCK_DELAY_SECONDS, MAX_SESSION_TTL_SECONDS, MIN_SESSION_TTL_SECONDS, type LeaseOptions, type LockService } from './lock.js';

export interface ConsulTlsOptions {
  /** PEM CA bundle to verify the agent's certificate with (Consul's CONSUL_CACERT). */
  readonly caFile?: string;
  /** PEM client certificate and key, for agents with verify_incoming (CONSUL_CLIENT_CERT / _KEY). */
  readonly certFile?: string;
  readonly keyFile?: string;
  /** The name to expect in the agent's certificate, when it differs from the address's host (CONSUL_TLS_SERVER_NAME). */
  readonly serverName?: string;
}

export interface ConsulStoreOptions {
  /** `http://host:port` or `https://host:port` (a bare `host:port` means http, as for CONSUL_HTTP_ADDR). */
  readonly address: string;
  /** ACL token, sent as X-Consul-Token. */
  readonly token?: string;
  readonly datacenter?: string;
  /** Consul Enterprise namespace (`?ns=`). */
  readonly namespace?: string;
  readonly tls?: ConsulTlsOptions;
  readonly log: Logger;
  /** Limit for one non-blocking request (default 10 s); blocking reads get their wait on top. */
  readonly requestTimeoutMs?: number;
  /** How long one blocking read of a watch may wait, 1–600 s (default 300, Consul's default; Consul caps at 600). */
  readonly watchWaitSeconds?: number;
}

/**
 * A StoreError from talking to Consul, with Consul's HTTP status when it answered. A 4xx applied nothing
 * (`rejected`); no answer, a 5xx or an answer that cannot be understood may follow a write that applied.
 */
export class ConsulError extends StoreError {
  constructor(
    message: string,
    operation: string,
    key: string,
    /** Consul's HTTP status; undefined when it could not be reached or did not answer in time. */
    readonly status: number | undefined,
    /** Whether trying again later may succeed (unreachable, timeouts, 5xx, 429). */
    readonly retryable: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, operation, key, { ...options, kind: status !== undefined && status >= 400 && status < 500 ? 'rejected' : 'unavailable' });
    this.name = 'ConsulError';
  }
}

interface ConsulResponse {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  /** Decoded as it arrives: a long listing never sits in one large Buffer as well (see readBody). */
  readonly body: string;
}

interface CallSpec {
  readonly operation: string;
  readonly key: string;
  readonly method: 'GET' | 'PUT' | 'DELETE';
  /** Path below /v1, already encoded. */
  readonly path: string;
  /** Query parameters in order; an undefined value is a bare flag (`?recurse`). */
  readonly query?: readonly (readonly [string, string | undefined])[];
  readonly body?: Buffer;
  readonly contentType?: string;
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  /**
   * When set, a 200 answer is a JSON array handed over element by element as it arrives (given the answer's
   * headers first), and `body` is then empty: a long listing is never held whole.
   */
  readonly elements?: (headers: http.IncomingHttpHeaders) => (text: string) => void;
}

/**
 * What a watch knows of a key it delivered: its indexes and a fingerprint of its value, not the value itself
 * (the consumer has that; keeping it here too would hold a second copy of the whole prefix).
 */
type KnownEntry = KvEntryMeta;

/** What a watch remembers of a prefix: its keys as of a listing index, to resume with changes. */
interface PrefixMemo {
  readonly index: number;
  readonly entries: readonly KnownEntry[];
}

/**
 * A listing as read: its entries (those unchanged since the `known` view it was read against are that
 * view's own objects, without values), and how long decoding the answer took.
 */
interface Listing {
  readonly index: number;
  readonly entries: ReadonlyArray<KvEntry | KnownEntry>;
  readonly decodeMs: number;
}

const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
const DEFAULT_WATCH_WAIT_SECONDS = 300;
const MAX_WATCH_WAIT_SECONDS = 600;
/** Reads are tried this many times in all when Consul is unreachable or answers 5xx/429. */
const READ_ATTEMPTS = 4;
const READ_RETRY_BASE_MS = 50;
/** Watch error backoff: 100 ms doubling to 10 s, with jitter. */
const WATCH_BACKOFF_BASE_MS = 100;
const WATCH_BACKOFF_MAX_MS = 10_000;
/**
 * Blocking-query rate limit (Consul's guidance: a token bucket that lets a couple of answers through at
 * once, then degrades to polling while values churn). Answers that carry no change cost nothing.
 */
const WATCH_BURST = 4;
const WATCH_REFILL_MS = 100;
/**
 * Connections to the agent open at once, idle keep-alive ones included; more requests wait for one. Consul
 * refuses a client IP's connections beyond limits.http_max_conns_per_client (default 200) with 429 before
 * reading them, and the processes on one host (controller, front end, router agent) share that limit. A
 * watch holds its connection for its whole wait, and a process has a handful of them.
 */
const MAX_CONNECTIONS = 64;
/** Idle connections kept for reuse: after a burst, the rest close rather than hold the host's share of the limit. */
const MAX_IDLE_CONNECTIONS = 8;
/** How many prefixes' last known contents are kept for resuming watches with changes rather than a reset. */
const MEMO_PREFIXES = 8;

/**
 * The desired-state store on Consul KV, over Consul's HTTP API.
 *
 * Writes map one to one onto Consul: `put`/`delete` with `cas` use `?cas=` (Consul's cas 0 is "create only",
 * and a delete with cas 0 never deletes an existing key); `transaction` is one `/v1/txn` of at most 64
 * operations (`set`, `cas`, `delete`, `delete-cas`), a 409 whose errors are all failed checks being `false`.
 *
 * Watches are blocking queries on `?recurse`. Consul cannot replay history, so every answer is the whole
 * prefix, diffed against the previous one into `changes`. A watch resumed with `fromIndex` starts from what
 * this store last delivered or listed for the prefix at exactly that index, if it still remembers it (the
 * last few prefixes), and otherwise starts with a `reset`. Consul's index rules are followed: an index that
 * goes backwards gives a `reset`, an index of 0 is taken as 1, errors back off with jitter (100 ms doubling
 * to 10 s) and are followed by a non-blocking read, an unchanged index blocks again at once, and a token
 * bucket keeps a churning prefix from turning the watch into a busy loop.
 */
export class ConsulStore implements Store, LockService {
  private readonly log: Logger;
  private readonly base: URL;
  private readonly transport: typeof http | typeof https;
  private readonly agent: http.Agent;
  private readonly requestTimeoutMs: number;
  private readonly watchWaitSeconds: number;
  private readonly commonQuery: readonly (readonly [string, string])[];
  private readonly token: string | undefined;
  private readonly watches = new Set<PrefixWatch>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly memo = new Map<string, PrefixMemo>();
  private closed = false;

  constructor(options: ConsulStoreOptions) {
    this.log = options.log.child({ component: 'consul-store' });
    const address = options.address.includes('://') ? options.address : `http://${options.address}`;
    let base: URL;
    try {
      base = new URL(address);
    } catch (error) {
      throw new StoreError(`the Consul address '${options.address}' is not a URL`, 'open', options.address, { cause: error });
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw new StoreError(`the Consul address must be http:// or https://, got '${options.address}'`, 'open', options.address);
    }
    this.base = base;
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    if (!Number.isFinite(this.requestTimeoutMs) || this.requestTimeoutMs <= 0) {
      throw new StoreError(`requestTimeoutMs must be positive, got ${String(options.requestTimeoutMs)}`, 'open', options.address);
    }
    this.watchWaitSeconds = options.watchWaitSeconds ?? DEFAULT_WATCH_WAIT_SECONDS;
    if (!Number.isInteger(this.watchWaitSeconds) || this.watchWaitSeconds < 1 || this.watchWaitSeconds > MAX_WATCH_WAIT_SECONDS) {
      throw new StoreError(
        `watchWaitSeconds must be a whole number from 1 to ${MAX_WATCH_WAIT_SECONDS}, got ${String(options.watchWaitSeconds)}`,
        'open',
        options.address,
      );
    }
    this.token = options.token || undefined;
    const query: [string, string][] = [];
    if (options.datacenter) query.push(['dc', options.datacenter]);
    if (options.namespace) query.push(['ns', options.namespace]);
    this.commonQuery = query;

    if (base.protocol === 'https:') {
      this.transport = https;
      this.agent = new https.Agent({ keepAlive: true, maxSockets: MAX_CONNECTIONS, maxFreeSockets: MAX_IDLE_CONNECTIONS, ...tlsFor(options) });
    } else {
      if (options.tls && Object.values(options.tls).some((value) => value !== undefined)) {
        throw new StoreError(`TLS options need an https:// Consul address, got '${options.address}'`, 'open', options.address);
      }
      this.transport = http;
      this.agent = new http.Agent({ keepAlive: true, maxSockets: MAX_CONNECTIONS, maxFreeSockets: MAX_IDLE_CONNECTIONS });
    }
    this.log.info(
      { address: this.base.origin, datacenter: options.datacenter, namespace: options.namespace, acl: this.token !== undefined },
      'Consul store ready',
    );
  }

  async get(key: string): Promise<KvEntry | undefined> {
    this.assertOpen('get', key);
    validateKey('get', key);
    const response = await this.read({ operation: 'get', key, method: 'GET', path: kvPath(key) });
    if (response.status === 404) return undefined;
    if (response.status !== 200) throw this.statusError('get', key, response);
    const entries = parseEntries('get', key, response.body);
    return entries.find((entry) => entry.key === key);
  }

  async list(prefix: string): Promise<KvListing> {
    this.assertOpen('list', prefix);
    validatePrefix('list', prefix);
    const listing = await this.fetchListing('list', prefix, undefined, undefined);
    const entries = listing.entries as KvEntry[];
    this.remember(prefix, { index: listing.index, entries: entries.map(knownEntry) });
    return { entries, index: listing.index };
  }

  async prefixIndex(prefix: string): Promise<PrefixIndex> {
    this.assertOpen('prefixIndex', prefix);
    validatePrefix('prefixIndex', prefix);
    // Consul gives a `?keys` listing the index it gives a `?recurse` one (the highest ModifyIndex or tombstone
    // under the prefix, else the table's), which a watch of the prefix reaches; the keys come, not the values.
    const response = await this.read({ operation: 'prefixIndex', key: prefix, method: 'GET', path: kvPath(prefix), query: [['keys', undefined]], timeoutMs: this.requestTimeoutMs });
    if (response.status !== 200 && response.status !== 404) throw this.statusError('prefixIndex', prefix, response);
    rejectFilteredListing('prefixIndex', prefix, response);
    const index = Math.max(headerIndex(response.headers), 1);
    if (response.status === 404) return { index, keys: 0 };
    let keys: unknown;
    try {
      keys = JSON.parse(response.body);
    } catch (error) {
      throw malformedListing('prefixIndex', prefix, errorMessage(error));
    }
    if (!Array.isArray(keys)) throw malformedListing('prefixIndex', prefix, 'the answer is not a JSON array of keys');
    return { index, keys: keys.length };
  }

  async put(key: string, value: string, options: WriteOptions = {}): Promise<boolean> {
    this.assertOpen('put', key);
    validateKey('put', key);
    validateValue('put', key, value);
    const cas = validateCas('put', key, options);
    const response = await this.write({
      operation: 'put',
      key,
      method: 'PUT',
      path: kvPath(key),
      query: cas === undefined ? [] : [['cas', String(cas)]],
      body: Buffer.from(value, 'utf8'),
      contentType: 'application/octet-stream',
    });
    return this.booleanAnswer('put', key, response);
  }

  async delete(key: string, options: WriteOptions = {}): Promise<boolean> {
    this.assertOpen('delete', key);
    validateKey('delete', key);
    const cas = validateCas('delete', key, options);
    const response = await this.write({
      operation: 'delete',
      key,
      method: 'DELETE',
      path: kvPath(key),
      query: cas === undefined ? [] : [['cas', String(cas)]],
    });
    return this.booleanAnswer('delete', key, response);
  }

  async transaction(operations: readonly TxnOperation[]): Promise<boolean> {
    return (await this.sendTransaction(operations)) !== undefined;
  }

  async commit(operations: readonly TxnOperation[]): Promise<readonly KvEntryMeta[] | undefined> {
    const answer = await this.sendTransaction(operations);
    return answer === undefined ? undefined : committedPuts(answer, operations);
  }

  /** The answer to a committed transaction (read only by those who ask what it wrote); undefined when a check or compare-and-set failed. */
  private async sendTransaction(operations: readonly TxnOperation[]): Promise<string | undefined> {
    const first = operations[0]?.key ?? '';
    this.assertOpen('transaction', first);
    validateTransaction(operations);
    if (operations.length === 0) return '{"Results":[]}';
    const body = operations.map((operation) => consulTxnOp(operation, operation.verb === 'put' ? Buffer.from(operation.value, 'utf8').toString('base64') : undefined));
    const response = await this.writeJson('transaction', first, '/txn', body);
    if (response.status === 200) return response.body;
    if (response.status === 409) {
      const errors = parseTxnErrors(response.body);
      // Only failed checks mean "a compare-and-set did not hold"; anything else (ACLs, lock-delay) is an error.
      if (errors !== undefined && errors.length > 0 && errors.every((error) => CHECK_FAILURE.test(error.What))) return undefined;
      const detail = errors?.map((error) => `operation ${error.OpIndex}: ${error.What}`).join('; ') ?? response.body;
      throw new ConsulError(`Consul at ${this.base.origin} rolled the transaction back: ${detail}`, 'transaction', first, 409, false);
    }
    throw this.statusError('transaction', first, response);
  }

  async createSession(options: LeaseOptions): Promise<string> {
    const { name, ttlSeconds, lockDelaySeconds } = options;
    this.assertOpen('create-session', name);
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < MIN_SESSION_TTL_SECONDS || ttlSeconds > MAX_SESSION_TTL_SECONDS) {
      throw new StoreError(`ttlSeconds must be a whole number from ${MIN_SESSION_TTL_SECONDS} to ${MAX_SESSION_TTL_SECONDS}, got ${String(ttlSeconds)}`, 'create-session', name);
    }
    if (!Number.isInteger(lockDelaySeconds) || lockDelaySeconds < 0 || lockDelaySeconds > MAX_LOCK_DELAY_SECONDS) {
      throw new StoreError(`lockDelaySeconds must be a whole number from 0 to ${MAX_LOCK_DELAY_SECONDS}, got ${String(lockDelaySeconds)}`, 'create-session', name);
    }
    // Behavior "release" keeps the leader key when the session ends; a health-check-free session is bound to
    // the agent's node only by serfHealth, so the TTL is what decides its life.
    const body = { Name: name, TTL: `${ttlSeconds}s`, LockDelay: `${lockDelaySeconds}s`, Behavior: 'release' };
    const response = await this.writeJson('create-session', name, '/session/create', body);
    if (response.status !== 200) throw this.statusError('create-session', name, response);
    const id = parseJson(response.body, (raw) => (raw as { ID?: unknown } | null)?.ID);
    if (typeof id !== 'string' || id === '') {
      throw new ConsulError(`Consul at ${this.base.origin} answered a session create without an ID`, 'create-session', name, 200, true);
    }
    return id;
  }

  async renewSession(id: string): Promise<boolean> {
    const response = await this.sessionCall('renew-session', id, 'renew');
    if (response.status === 404) return false;
    if (response.status !== 200) throw this.statusError('renew-session', id, response);
    return true;
  }

  async destroySession(id: string): Promise<void> {
    const response = await this.sessionCall('destroy-session', id, 'destroy');
    if (response.status !== 200) throw this.statusError('destroy-session', id, response);
  }

  acquire(key: string, value: string, session: string): Promise<boolean> {
    return this.lockCall('acquire', key, value, session);
  }

  release(key: string, session: string): Promise<boolean> {
    return this.lockCall('release', key, '', session);
  }

  watch(prefix: string, fromIndex?: number): Observable<WatchStep> {
    return new Observable<WatchStep>((subscriber) => {
      try {
        this.assertOpen('watch', prefix);
        validateWatch(prefix, fromIndex);
      } catch (error) {
        subscriber.error(error);
        return undefined;
      }
      const known = fromIndex === undefined ? undefined : this.recall(prefix, fromIndex);
      if (fromIndex !== undefined && known === undefined) {
        this.log.info({ prefix, fromIndex }, 'cannot resume the watch from that index (Consul keeps no history); starting with a reset');
      }
      const watch = new PrefixWatch(this, prefix, known, subscriber, this.log);
      this.watches.add(watch);
      watch.start();
      return () => {
        watch.stop();
        this.watches.delete(watch);
      };
    });
  }

  /** Ends every watch (they complete), lets requests already sent finish, and releases the connections. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const watches = [...this.watches];
    this.watches.clear();
    for (const watch of watches) watch.finish();
    await Promise.allSettled([...this.inFlight]);
    this.agent.destroy();
    this.memo.clear();
    this.log.info({ address: this.base.origin }, 'Consul store closed');
  }

  // -----------------------------------------------------------------------------------------------
  // Used by watches

  /**
   * One watch saw the index go backwards: Consul lost or restored its state. A blocking query sent with an
   * index from before that waits out its whole wait time (Consul blocks until the index passes the one
   * asked for), so every other watch re-reads at once instead.
   */
  rewound(by: PrefixWatch): void {
    for (const watch of this.watches) if (watch !== by) watch.readAgain();
  }

  /**
   * One `?recurse` listing, blocking when `blocking` is given. Consul answers 404 for an empty prefix.
   * Entries unchanged since `known` (the watch's view as of `known.index`) are answered as that view's own
   * objects, unless the answer's index went back below it: after a rewind every entry is decoded anew.
   */
  async fetchListing(
    operation: string,
    prefix: string,
    blocking: { readonly index: number } | undefined,
    signal: AbortSignal | undefined,
    known?: { readonly index: number; readonly entries: ReadonlyMap<string, KnownEntry> },
  ): Promise<Listing> {
    const query: [string, string | undefined][] = [['recurse', undefined]];
    let timeoutMs = this.requestTimeoutMs;
    if (blocking) {
      query.push(['index', String(blocking.index)], ['wait', `${this.watchWaitSeconds}s`]);
      // Consul may hold the answer for the wait plus up to wait/16 of jitter.
      timeoutMs += Math.ceil((this.watchWaitSeconds * 1000 * 17) / 16);
    }
    let entries: Array<KvEntry | KnownEntry> = [];
    let decodeMs = 0;
    const elements = (headers: http.IncomingHttpHeaders): ((text: string) => void) => {
      // A retried read starts over.
      entries = [];
      decodeMs = 0;
      const reusable = known !== undefined && Math.max(headerIndex(headers), 1) >= known.index ? known.entries : undefined;
      return (text) => {
        const since = performance.now();
        const unchanged = reusable === undefined ? undefined : unchangedEntry(text, reusable);
        if (unchanged !== undefined) {
          entries.push(unchanged);
          decodeMs += performance.now() - since;
          return;
        }
        let item: unknown;
        try {
          item = JSON.parse(text);
        } catch (error) {
          throw malformedListing(operation, prefix, errorMessage(error));
        }
        entries.push(parseEntry(operation, prefix, item as RawEntry, reusable));
        decodeMs += performance.now() - since;
      };
    };
    const spec: CallSpec = { operation, key: prefix, method: 'GET', path: kvPath(prefix), query, timeoutMs, signal, elements };
    // A watch has its own backoff; a plain list retries like any read.
    const response = blocking || signal ? await this.call(spec) : await this.read(spec);
    if (response.status !== 200 && response.status !== 404) throw this.statusError(operation, prefix, response);
    rejectFilteredListing(operation, prefix, response);
    return { index: Math.max(headerIndex(response.headers), 1), entries: response.status === 404 ? [] : entries, decodeMs };
  }

  /** Remembers the contents of a prefix as of an index (the latest few prefixes only). */
  remember(prefix: string, memo: PrefixMemo): void {
    this.memo.delete(prefix);
    this.memo.set(prefix, memo);
    if (this.memo.size > MEMO_PREFIXES) this.memo.delete(this.memo.keys().next().value as string);
  }

  private recall(prefix: string, index: number): PrefixMemo | undefined {
    const memo = this.memo.get(prefix);
    return memo !== undefined && memo.index === index ? memo : undefined;
  }

  // -----------------------------------------------------------------------------------------------
  // HTTP

  private assertOpen(operation: string, key: string): void {
    if (this.closed) throw new StoreError(`the Consul store (${this.base.origin}) is closed`, operation, key);
  }

  /** A read: retried a few times, with jittered backoff, when Consul is unreachable or answers 5xx/429. */
  private async read(spec: CallSpec): Promise<ConsulResponse> {
    for (let attempt = 1; ; attempt++) {
      try {
        const response = await this.call(spec);
        if (attempt < READ_ATTEMPTS && (response.status >= 500 || response.status === 429)) {
          this.log.debug({ operation: spec.operation, key: spec.key, status: response.status, attempt }, 'Consul read failed; retrying');
        } else {
          return response;
        }
      } catch (error) {
        if (!(error instanceof ConsulError) || !error.retryable || attempt >= READ_ATTEMPTS || this.closed) throw error;
        this.log.debug({ operation: spec.operation, key: spec.key, err: error.message, attempt }, 'Consul read failed; retrying');
      }
      await delay(jitteredBackoffMs(attempt, READ_RETRY_BASE_MS, Number.POSITIVE_INFINITY));
      this.assertOpen(spec.operation, spec.key);
    }
  }

  /**
   * A write is retried only when the connection was refused (it cannot have reached Consul) or Consul's rate
   * limiter refused it before applying: 429 (the client agent's rpc_rate) or 503 (the servers' limit on
   * writes, "try again later"). Any other failure may have been applied, so it is reported.
   */
  private async write(spec: CallSpec): Promise<ConsulResponse> {
    for (let attempt = 1; ; attempt++) {
      try {
        const response = await this.call(spec);
        if ((response.status !== 429 && response.status !== 503) || attempt >= READ_ATTEMPTS) return response;
      } catch (error) {
        const refused = error instanceof ConsulError && (error.cause as { code?: unknown } | undefined)?.code === 'ECONNREFUSED';
        if (!refused || attempt >= READ_ATTEMPTS || this.closed) throw error;
      }
      this.log.debug({ operation: spec.operation, key: spec.key, attempt }, 'Consul write not accepted; retrying');
      await delay(jitteredBackoffMs(attempt, READ_RETRY_BASE_MS, Number.POSITIVE_INFINITY));
      this.assertOpen(spec.operation, spec.key);
    }
  }

  private writeJson(operation: string, key: string, path: string, body: unknown): Promise<ConsulResponse> {
    return this.write({ operation, key, method: 'PUT', path, body: Buffer.from(JSON.stringify(body), 'utf8'), contentType: 'application/json' });
  }

  private async sessionCall(operation: string, id: string, verb: 'renew' | 'destroy'): Promise<ConsulResponse> {
    this.assertOpen(operation, id);
    if (typeof id !== 'string' || !/^[0-9a-fA-F-]{1,64}$/.test(id)) throw new StoreError('not a session id', operation, String(id));
    return this.write({ operation, key: id, method: 'PUT', path: `/session/${verb}/${id}` });
  }

  /** `?acquire=` / `?release=`: Consul answers true or false, or 500 for a session that does not exist. */
  private async lockCall(operation: 'acquire' | 'release', key: string, value: string, session: string): Promise<boolean> {
    this.assertOpen(operation, key);
    validateKey(operation, key);
    validateValue(operation, key, value);
    if (typeof session !== 'string' || session === '') throw new StoreError(`${operation} needs a session id`, operation, key);
    const response = await this.write({
      operation,
      key,
      method: 'PUT',
      path: kvPath(key),
      query: [[operation, session]],
      body: Buffer.from(value, 'utf8'),
      contentType: 'application/octet-stream',
    });
    return this.booleanAnswer(operation, key, response);
  }

  private call(spec: CallSpec): Promise<ConsulResponse> {
    const startedAt = performance.now();
    const promise = this.send(spec);
    this.inFlight.add(promise);
    promise.then(
      (response) => {
        this.inFlight.delete(promise);
        recordBackendCall('consul', spec.operation, consulOutcome(response), startedAt);
      },
      (error: unknown) => {
        this.inFlight.delete(promise);
        recordBackendCall('consul', spec.operation, error instanceof AbortedError ? 'aborted' : 'unreachable', startedAt);
      },
    );
    return promise;
  }

  private send(spec: CallSpec): Promise<ConsulResponse> {
    const { operation, key } = spec;
    const params = [...(spec.query ?? []), ...this.commonQuery];
    const search = params.map(([name, value]) => (value === undefined ? name : `${name}=${encodeURIComponent(value)}`)).join('&');
    const basePath = this.base.pathname.replace(/\/+$/, '');
    const path = `${basePath}/v1${spec.path}${search ? `?${search}` : ''}`;
    const headers: http.OutgoingHttpHeaders = { Accept: 'application/json' };
    if (this.token !== undefined) headers['X-Consul-Token'] = this.token;
    if (spec.body !== undefined) {
      headers['Content-Type'] = spec.contentType ?? 'application/octet-stream';
      headers['Content-Length'] = spec.body.length;
    }
    // A blocking query's answer may take its wait to begin; once it flows, pauses are bounded like any call's.
    const limits = { beginMs: spec.timeoutMs ?? this.requestTimeoutMs, idleMs: this.requestTimeoutMs };
    const where = this.base.origin;

    return new Promise<ConsulResponse>((resolve, reject) => {
      let settled = false;
      const finish = (error: Error | undefined, response?: ConsulResponse): void => {
        if (settled) return;
        settled = true;
        timer.stop();
        if (error) reject(error);
        else resolve(response!);
      };
      const request = this.transport.request(
        {
          protocol: this.base.protocol,
          hostname: this.base.hostname.replace(/^\[|\]$/g, ''),
          port: this.base.port || (this.base.protocol === 'https:' ? 443 : 80),
          method: spec.method,
          path,
          headers,
          agent: this.agent,
          signal: spec.signal,
        },
        (response) => {
          timer.answering(response);
          let body: () => string;
          if (spec.elements !== undefined && response.statusCode === 200) {
            const complete = readJsonArray(response, spec.elements(response.headers));
            body = () => {
              complete();
              return '';
            };
          } else {
            body = readBody(response);
          }
          response.on('error', (error) => finish(this.transportError(operation, key, error)));
          response.on('aborted', () => finish(this.transportError(operation, key, new Error('the answer was cut off'))));
          response.on('end', () => {
            if (!response.complete) {
              finish(this.transportError(operation, key, new Error('the answer was cut off')));
              return;
            }
            let text: string;
            try {
              text = body();
            } catch (error) {
              finish(error instanceof ConsulError ? error : malformedListing(operation, key, errorMessage(error)));
              return;
            }
            finish(undefined, { status: response.statusCode ?? 0, headers: response.headers, body: text });
          });
        },
      );
      const timer = new ExchangeTimer(request, limits, (what) => new ConsulError(`Consul at ${where} ${what}`, operation, key, undefined, true));
      request.on('error', (error) => {
        if (error instanceof ConsulError) finish(error);
        else if (spec.signal?.aborted) finish(new AbortedError(operation, key));
        else finish(this.transportError(operation, key, error));
      });
      request.end(spec.body);
    });
  }

  private transportError(operation: string, key: string, error: Error): ConsulError {
    return new ConsulError(`cannot reach Consul at ${this.base.origin}: ${error.message}`, operation, key, undefined, true, { cause: error });
  }

  private statusError(operation: string, key: string, response: ConsulResponse): ConsulError {
    const text = response.body.trim();
    const detail = text === '' ? (http.STATUS_CODES[response.status] ?? 'no message') : text.slice(0, 500);
    const retryable = response.status >= 500 || response.status === 429;
    return new ConsulError(`Consul at ${this.base.origin} answered ${response.status}: ${detail}`, operation, key, response.status, retryable);
  }

  private booleanAnswer(operation: string, key: string, response: ConsulResponse): boolean {
    if (response.status !== 200) throw this.statusError(operation, key, response);
    const text = response.body.trim();
    if (text === 'true') return true;
    if (text === 'false') return false;
    throw new ConsulError(`Consul at ${this.base.origin} answered '${text.slice(0, 100)}' where true or false was expected`, operation, key, 200, false);
  }
}

/**
 * One subscription's blocking-query loop over a prefix. It holds the consumer's view (`known`) to diff each
 * answer against, and the index to block on. After an error it backs off and then reads without blocking,
 * so a Consul that lost its state (index lower than ours) is noticed at once rather than after a full wait.
 */
class PrefixWatch {
  private stopped = false;
  private controller: AbortController | undefined;
  private sleeping: { timer: NodeJS.Timeout; resolve: () => void } | undefined;
  private known: Map<string, KnownEntry> | undefined;
  private index = 0;
  private resync = true;
  private failures = 0;
  /** Set by resync(): the request in flight was aborted to read again at once, not because it failed. */
  private resyncRequested = false;
  private tokens = WATCH_BURST;
  private refilledAt = Date.now();

  constructor(
    private readonly store: ConsulStore,
    private readonly prefix: string,
    resumeFrom: PrefixMemo | undefined,
    private readonly subscriber: Subscriber<WatchStep>,
    private readonly log: Logger,
  ) {
    if (resumeFrom) {
      this.known = new Map(resumeFrom.entries.map((entry) => [entry.key, entry]));
      this.index = resumeFrom.index;
    }
  }

  start(): void {
    this.run().catch((error: unknown) => {
      if (this.stopped) return;
      this.stopped = true;
      this.subscriber.error(new StoreError(`the watch failed: ${errorMessage(error)}`, 'watch', this.prefix, { cause: error }));
    });
  }

  /** Unsubscribed: stop, aborting the request in flight. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.controller?.abort();
    if (this.sleeping) {
      clearTimeout(this.sleeping.timer);
      this.sleeping.resolve();
    }
  }

  /** Drops the blocking query in flight (or the pause before the next) and reads again without blocking. */
  readAgain(): void {
    if (this.stopped) return;
    this.resync = true;
    this.resyncRequested = true;
    this.controller?.abort();
    if (this.sleeping) {
      clearTimeout(this.sleeping.timer);
      this.sleeping.resolve();
    }
  }

  /** The store closed: stop and complete. */
  finish(): void {
    this.stop();
    this.subscriber.complete();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const blocking = !this.resync && this.known !== undefined;
      this.controller = new AbortController();
      try {
        const known = this.known === undefined ? undefined : { index: this.index, entries: this.known };
        const listing = await this.store.fetchListing('watch', this.prefix, blocking ? { index: this.index } : undefined, this.controller.signal, known);
        if (this.stopped) return;
        this.failures = 0;
        // A resync asked for while this answer was on its way still reads again.
        this.resync = this.resyncRequested;
        this.resyncRequested = false;
        const absorbingSince = performance.now();
        const step = this.absorb(listing);
        if (step !== undefined) {
          // Paced by what reading the list cost, not by what the consumer then does with the changes; the
          // pause runs from here, so the consumer's work (thousands of streams to write to) fills it
          // rather than adding to it.
          const absorbedAt = performance.now();
          const readingMs = listing.decodeMs + absorbedAt - absorbingSince;
          this.subscriber.next(step);
          await this.throttle(readingMs, absorbedAt);
        }
      } catch (error) {
        if (this.stopped) return;
        if (this.resyncRequested) {
          this.resyncRequested = false;
          continue;
        }
        if (error instanceof ConsulError && !error.retryable) {
          this.log.error({ prefix: this.prefix, err: error.message, status: error.status }, 'watch failed: Consul refused the request');
          this.stopped = true;
          this.subscriber.error(error);
          return;
        }
        this.failures += 1;
        const wait = jitteredBackoffMs(this.failures, WATCH_BACKOFF_BASE_MS, WATCH_BACKOFF_MAX_MS);
        this.resync = true;
        this.log.warn({ prefix: this.prefix, err: errorMessage(error), retryInMs: wait, failures: this.failures }, 'watch request failed; retrying');
        watchRestarts.inc({ resource: this.prefix });
        await this.sleep(wait);
      }
    }
  }

  /** Takes in one answer; returns the step it makes for the consumer, if any. */
  private absorb(listing: Listing): WatchStep | undefined {
    const index = Math.max(listing.index, 1);
    if (this.known === undefined || index < this.index) {
      if (this.known !== undefined) {
        this.log.info({ prefix: this.prefix, was: this.index, now: index }, 'Consul index went backwards (state restored or lost); resetting the watch');
        this.store.rewound(this);
      }
      // Read without a view to reuse (first listing) or past a rewind (fetchListing reuses nothing then).
      const entries = listing.entries as KvEntry[];
      this.known = new Map(entries.map((entry) => [entry.key, knownEntry(entry)]));
      this.index = index;
      this.store.remember(this.prefix, { index, entries: [...this.known.values()] });
      return { kind: 'reset', index, entries };
    }
    const changes = diff(this.known, listing.entries, index);
    this.index = index;
    if (changes.length === 0) return undefined;
    for (const change of changes) {
      if (change.type === 'put') this.known.set(change.entry.key, knownEntry(change.entry));
      else this.known.delete(change.key);
    }
    this.store.remember(this.prefix, { index, entries: [...this.known.values()] });
    return { kind: 'changes', index, changes };
  }

  /**
   * Paces answers that delivered changes: a token from the bucket, and a pause in proportion to `readingMs`
   * counted from `since` (when the answer was taken in).
   */
  private async throttle(readingMs: number, since: number): Promise<void> {
    await this.takeToken();
    const remaining = pacingDelayMs(readingMs) - (performance.now() - since);
    if (remaining > 0) await this.sleep(remaining);
  }

  /** Token bucket over answers that delivered changes. */
  private async takeToken(): Promise<void> {
    const now = Date.now();
    const refill = Math.floor((now - this.refilledAt) / WATCH_REFILL_MS);
    if (refill > 0) {
      this.tokens = Math.min(WATCH_BURST, this.tokens + refill);
      this.refilledAt = this.tokens === WATCH_BURST ? now : this.refilledAt + refill * WATCH_REFILL_MS;
    }
    if (this.tokens > 0) {
      this.tokens -= 1;
      return;
    }
    await this.sleep(this.refilledAt + WATCH_REFILL_MS - now);
    this.refilledAt += WATCH_REFILL_MS;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      if (this.stopped) return resolve();
      const timer = setTimeout(() => {
        this.sleeping = undefined;
        resolve();
      }, Math.max(0, ms));
      this.sleeping = { timer, resolve };
    });
  }
}

/** Thrown when a request was aborted because its watch stopped; never reaches a consumer. */
class AbortedError extends StoreError {
  constructor(operation: string, key: string) {
    super('the request was aborted', operation, key);
  }
}

/** Failed checks of the verbs we send (`cas`, `delete-cas`, `check-session`, `check-index`, `check-not-exists`), as Consul words them. */
const CHECK_FAILURE =
  /^(failed to (set|delete) key ".*", index is stale|failed to check session, key ".*" doesn't exist|failed session check for key ".*", current session ".*" != ".*"|failed to check index, key ".*" doesn't exist|failed index check for key ".*", current modify index \d+ != \d+|key ".*" exists)$/s;

/**
 * The changes that turn `known` into `entries`: puts for new or modified keys (parseEntries answers an
 * unchanged key, by indexes and value fingerprint, as its known object), then deletes for vanished keys.
 * Consul does not say when a key was deleted, so a delete carries the listing's index.
 */
function diff(known: ReadonlyMap<string, KnownEntry>, entries: ReadonlyArray<KvEntry | KnownEntry>, index: number): KvChange[] {
  const puts: KvChange[] = [];
  const present = new Set<string>();
  for (const entry of entries) {
    present.add(entry.key);
    if (known.get(entry.key) === entry) continue;
    // Anything but a known object was decoded from the answer, value included.
    puts.push({ type: 'put', entry: entry as KvEntry });
  }
  puts.sort((a, b) => (a.type === 'put' && b.type === 'put' ? a.entry.modifyIndex - b.entry.modifyIndex : 0));
  const deletes: KvChange[] = [];
  for (const key of known.keys()) if (!present.has(key)) deletes.push({ type: 'delete', key, modifyIndex: index });
  return [...puts, ...deletes];
}

interface RawEntry {
  readonly Key?: unknown;
  readonly Value?: unknown;
  readonly CreateIndex?: unknown;
  readonly ModifyIndex?: unknown;
  readonly Session?: unknown;
}

/**
 * A fingerprint of the base64 `Value` each parsed entry was decoded from. A watch re-reads its whole prefix
 * on every change (Consul has no other way), and telling the unchanged entries by their indexes and this
 * fingerprint spares decoding thousands of values (and the memory they churn through) for each one that
 * changed. Keeping the encoded values themselves would hold a second copy of every value. The indexes
 * already tell a changed value (every write gives the key a new ModifyIndex); the fingerprint only guards
 * against a Consul rebuilt with colliding indexes, so it samples the value rather than reading all of it.
 */
const valueFingerprints = new WeakMap<KvEntryMeta, number>();

/** What a watch keeps of a delivered entry (see KnownEntry), with its value's fingerprint. */
function knownEntry(entry: KvEntry): KnownEntry {
  const { value: _value, ...meta } = entry;
  const known = Object.freeze(meta);
  valueFingerprints.set(known, valueFingerprints.get(entry) ?? -2);
  return known;
}

/**
 * The length and a hash of every 64th character and the last 64 (FNV-1a) of `text` from `start` to `end`
 * (all of it by default): cheap for large values, never a copy.
 */
function fingerprint(text: string | null, start = 0, end = text?.length ?? 0): number {
  if (text === null) return -1;
  let hash = 0x811c9dc5 ^ (end - start);
  const sample = (i: number): void => {
    hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  };
  for (let i = start; i < end; i += 64) sample(i);
  for (let i = Math.max(start, end - 64); i < end; i++) sample(i);
  return hash >>> 0;
}

/**
 * The known entry that an element of a listing repeats unchanged, told from the element's text without
 * parsing it: a watch's every answer repeats its whole prefix, and almost all of it is unchanged. The
 * fields are found by name: a base64 value holds no quote, and a key without a backslash holds none either,
 * so every quoted name found is a field of the entry. Anything else (an escaped key, a session, a value
 * that does not look base64-quoted) is left to the full parse, which decides alone.
 */
function unchangedEntry(text: string, known: ReadonlyMap<string, KnownEntry>): KnownEntry | undefined {
  const keyAt = text.indexOf('"Key":"');
  if (keyAt === -1) return undefined;
  const keyEnd = text.indexOf('"', keyAt + 7);
  const key = keyEnd === -1 ? '' : text.slice(keyAt + 7, keyEnd);
  if (key === '' || key.includes('\\')) return undefined;
  const previous = known.get(key);
  if (previous === undefined || previous.session !== undefined) return undefined;
  const valueAt = text.indexOf('"Value":');
  if (valueAt === -1) return undefined;
  let print: number;
  // The other fields are looked for around the value, not through it (Consul writes them after it).
  let valueEnd: number;
  if (text.startsWith('null', valueAt + 8)) {
    print = fingerprint(null);
    valueEnd = valueAt + 12;
  } else if (text.charCodeAt(valueAt + 8) === 0x22) {
    valueEnd = text.indexOf('"', valueAt + 9);
    if (valueEnd === -1) return undefined;
    print = fingerprint(text, valueAt + 9, valueEnd);
  } else {
    return undefined;
  }
  const find = (name: string): number => {
    const after = text.indexOf(name, valueEnd);
    return after !== -1 ? after : text.lastIndexOf(name, valueAt);
  };
  if (find('"Session":') !== -1) return undefined;
  const index = (name: string): number | undefined => numberAfter(text, name, find(name));
  if (index('"ModifyIndex":') !== previous.modifyIndex || index('"CreateIndex":') !== previous.createIndex) return undefined;
  return valueFingerprints.get(previous) === print ? previous : undefined;
}

/** The whole number written in `text` right after `name`, found at `at` (-1: not found). */
function numberAfter(text: string, name: string, at: number): number | undefined {
  if (at === -1) return undefined;
  let value = 0;
  let i = at + name.length;
  for (; i < text.length; i++) {
    const digit = text.charCodeAt(i) - 0x30;
    if (digit < 0 || digit > 9) break;
    value = value * 10 + digit;
  }
  return i === at + name.length || !Number.isSafeInteger(value) ? undefined : value;
}

/** The entries of a KV answer read whole (a single key's). */
function parseEntries(operation: string, key: string, body: string): KvEntry[] {
  let raw: unknown;
  try {
    raw = JSON.parse(body);
  } catch (error) {
    throw malformedListing(operation, key, errorMessage(error));
  }
  if (!Array.isArray(raw)) throw malformedListing(operation, key, 'not an array');
  return raw.map((item: RawEntry) => parseEntry(operation, key, item) as KvEntry);
}

function malformedListing(operation: string, key: string, why: string): ConsulError {
  return new ConsulError(`Consul answered a KV read that cannot be understood (${why})`, operation, key, 200, true);
}

/** One entry of a KV answer; one equal to its namesake in `known` is that same (value-less) object. */
function parseEntry(operation: string, key: string, item: RawEntry, known?: ReadonlyMap<string, KnownEntry>): KvEntry | KnownEntry {
  if (
    typeof item?.Key !== 'string' ||
    !Number.isSafeInteger(item.CreateIndex) ||
    !Number.isSafeInteger(item.ModifyIndex) ||
    (item.Value !== null && item.Value !== undefined && typeof item.Value !== 'string')
  ) {
    throw malformedListing(operation, key, 'an entry lacks Key, CreateIndex or ModifyIndex');
  }
  // Consul answers "Value": null for an empty value.
  const encoded = typeof item.Value === 'string' ? item.Value : null;
  const session = typeof item.Session === 'string' && item.Session !== '' ? item.Session : undefined;
  const previous = known?.get(item.Key);
  const print = fingerprint(encoded);
  if (
    previous !== undefined &&
    previous.modifyIndex === item.ModifyIndex &&
    previous.createIndex === item.CreateIndex &&
    previous.session === session &&
    valueFingerprints.get(previous) === print
  ) {
    return previous;
  }
  const value = encoded === null ? '' : Buffer.from(encoded, 'base64').toString('utf8');
  const fields = { key: item.Key, value, createIndex: item.CreateIndex as number, modifyIndex: item.ModifyIndex as number };
  const entry: KvEntry = Object.freeze(session === undefined ? fields : { ...fields, session });
  valueFingerprints.set(entry, print);
  return entry;
}

/** The part of a JSON answer `pick` selects; undefined when the answer is not JSON. */
function parseJson(body: string, pick: (raw: unknown) => unknown): unknown {
  try {
    return pick(JSON.parse(body));
  } catch {
    return undefined;
  }
}

/**
 * The entries a committed transaction's puts left, from its `Results` (one `KV` for every operation but the
 * deletes, value left out). The write stands whatever the answer says, so a put missing from an answer that
 * cannot be read is only left out: its writer learns of it from its watch instead.
 */
function committedPuts(body: string, operations: readonly TxnOperation[]): KvEntryMeta[] {
  const results = parseJson(body, (raw) => (raw as { Results?: unknown } | null)?.Results);
  if (!Array.isArray(results)) return [];
  const byKey = new Map<string, KvEntryMeta>();
  for (const result of results as Array<{ KV?: RawEntry } | null>) {
    const kv = result?.KV;
    if (typeof kv?.Key !== 'string' || !Number.isSafeInteger(kv.CreateIndex) || !Number.isSafeInteger(kv.ModifyIndex)) continue;
    const session = typeof kv.Session === 'string' && kv.Session !== '' ? kv.Session : undefined;
    byKey.set(kv.Key, { key: kv.Key, createIndex: kv.CreateIndex as number, modifyIndex: kv.ModifyIndex as number, ...(session === undefined ? {} : { session }) });
  }
  return operations.flatMap((operation) => {
    const entry = operation.verb === 'put' ? byKey.get(operation.key) : undefined;
    return entry === undefined ? [] : [entry];
  });
}

function parseTxnErrors(body: string): { OpIndex: number; What: string }[] | undefined {
  try {
    const raw = JSON.parse(body) as { Errors?: unknown };
    if (!Array.isArray(raw.Errors)) return undefined;
    return raw.Errors.map((error: { OpIndex?: unknown; What?: unknown }) => ({
      OpIndex: typeof error?.OpIndex === 'number' ? error.OpIndex : -1,
      What: typeof error?.What === 'string' ? error.What : JSON.stringify(error),
    }));
  } catch {
    return undefined;
  }
}

/**
 * Keys the token may not read are left out of a listing silently but for a header. Such a view would read as
 * deleted sessions and routes (their workloads and routes torn down), so it is refused like a 403.
 */
function rejectFilteredListing(operation: string, prefix: string, response: ConsulResponse): void {
  if (response.headers['x-consul-results-filtered-by-acls'] !== 'true') return;
  throw new ConsulError(
    `Consul left keys under "${prefix}" out of the listing: the ACL token may not read all of them (it needs key_prefix read on the whole prefix)`,
    operation,
    prefix,
    response.status,
    false,
  );
}

function headerIndex(headers: http.IncomingHttpHeaders): number {
  const value = headers['x-consul-index'];
  const text = Array.isArray(value) ? value[0] : value;
  const index = Number(text);
  return text !== undefined && Number.isSafeInteger(index) && index >= 0 ? index : 0;
}

/**
 * Consul answers a read of a missing key or an empty prefix 404 with its index, which the store reads as
 * "none": an answer like any other, not a client error. A 404 without an index is not Consul's KV answering.
 */
function consulOutcome(response: ConsulResponse): BackendOutcome {
  return response.status === 404 && response.headers['x-consul-index'] !== undefined ? 'ok' : outcomeOfStatus(response.status);
}

/** The KV path of a key, each character that is not unreserved percent-encoded except the separators. */
function kvPath(key: string): string {
  return `/kv/${encodeURIComponent(key).replace(/%2F/g, '/')}`;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The TLS files, read once; an unreadable one is a StoreError naming the file. */
function tlsFor(options: ConsulStoreOptions): https.AgentOptions {
  try {
    return loadTlsMaterial(options.tls, 'Consul');
  } catch (error) {
    throw new StoreError(errorMessage(error), 'open', options.address, { cause: error });
  }
}
