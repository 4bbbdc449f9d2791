import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import type { Subscription } from 'rxjs';
import type { Session, SessionTemplate } from '../api/types.js';
import { readLastLines } from '../scheduler/log-tail.js';
import { LogNotFoundError, isLogPosition, logStreamNames, type LogEvent, type LogStreamName, type TaskLogs } from '../scheduler/task-logs.js';
import { jitteredBackoffMs } from '../util/backoff.js';
import { ApiError } from './errors.js';
import { beginResponse, endOnExpiry, eventStreamHeaders, heartbeatMs } from './events.js';
import type { Authenticator, Identity } from './identity.js';
import type { SessionService } from './sessions.js';
import { StreamCounts } from './stream-limit.js';

/**
 * `GET /api/v1/sessions/{id}/logs`: a task's stdout or stderr, for the session's owner (and operators).
 * Not following, the log as text/plain; following (`follow=true`), server-sent events: `start`, then
 * `log` events `{start, end, text}` with `id: <allocation>:<end>`, so a reconnecting EventSource resumes
 * exactly after the last event it got (Last-Event-ID), `gap` when output was rotated away unread,
 * `closing` when the stream ends (the workload was replaced, the session failed, the server shuts down),
 * `ended` once a failed session's log has been read to its end (its workload is stopped and writes no
 * more), `gone` when the session is.
 *
 * Memory per stream is bounded: the log is read only as fast as the client takes it (the next piece is
 * read once the socket has taken the last one), and each user may hold only so many streams open.
 */

export interface LogRouteOptions {
  /** Where task logs are read (the backend's); without it the route answers 404 saying so. */
  readonly logs: TaskLogs | undefined;
  /** Log responses one user may have open at once in this process. */
  readonly streamsPerUser: number;
  /** The clock a followed log's credentials expire by. */
  readonly now: () => number;
}

export const DEFAULT_LOG_STREAMS_PER_USER = 10;

/** `tail` at most: the lines are searched within a few MB of the end anyway (log-tail.ts). */
export const MAX_TAIL_LINES = 10_000;
/**
 * What an EventSource waits before reconnecting, sent with every stream: drawn per stream between 2 and 4 s,
 * so that the pages following logs on a front end that restarts do not all come back in the same instant.
 */
const MAX_RETRY_MS = 4_000;
/** The headers of a log read as text. */
const textHeaders: OutgoingHttpHeaders = { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' };
const QUERY_PARAMETERS = ['task', 'stream', 'follow', 'tail', 'offset', 'access_token'];

export interface LogQuery {
  readonly task: string;
  readonly stream: LogStreamName;
  readonly follow: boolean;
  readonly tail?: number;
  readonly offset?: number;
}

/** The task names a session of this template has on this backend, in the template's order. */
export function templateTasks(template: SessionTemplate | undefined, backend: 'embedded' | 'nomad'): string[] {
  return template?.spec.backends[backend]?.tasks.map((task) => task.name) ?? [];
}

/** The query of a log request, checked; ApiError 400 naming the parameter otherwise. */
export function parseLogQuery(query: Readonly<Record<string, unknown>>, tasks: readonly string[]): LogQuery {
  const problem = (name: string, rule: string): ApiError => new ApiError(400, `invalid query parameter ${name}`, [`/query/${name}: ${rule}`]);
  const unknown = Object.keys(query).filter((name) => !QUERY_PARAMETERS.includes(name));
  if (unknown.length > 0) throw new ApiError(400, `unknown query parameter ${unknown.join(', ')}`, unknown.map((name) => `/query/${name}: not one of ${QUERY_PARAMETERS.slice(0, -1).join(', ')}`));
  const single = (name: string): string | undefined => {
    const value = query[name];
    if (value === undefined) return undefined;
    if (typeof value !== 'string') throw problem(name, 'give it once');
    return value;
  };
  const task = single('task') ?? tasks[0];
  if (task === undefined) throw new ApiError(400, 'this session has no tasks here', []);
  if (!tasks.includes(task)) throw new ApiError(400, `unknown task "${task}"`, [`/query/task: must be one of ${tasks.join(', ')}`]);
  const stream = single('stream') ?? 'stdout';
  if (!(logStreamNames as readonly string[]).includes(stream)) throw problem('stream', 'must be stdout or stderr');
  const followText = single('follow');
  if (followText !== undefined && !['true', 'false', '1', '0', ''].includes(followText)) throw problem('follow', 'must be true or false');
  const follow = followText === 'true' || followText === '1' || followText === '';
  const integer = (name: string, max: number, rule: string): number | undefined => {
    const text = single(name);
    if (text === undefined) return undefined;
    const value = Number(text);
    if (!/^\d{1,16}$/.test(text) || !Number.isSafeInteger(value) || value > max) throw problem(name, rule);
    return value;
  };
  const tail = integer('tail', MAX_TAIL_LINES, `a number of lines from 0 to ${MAX_TAIL_LINES}`);
  const offset = integer('offset', Number.MAX_SAFE_INTEGER, 'a log position: a non-negative integer, as a log event\'s end gives it');
  if (tail !== undefined && offset !== undefined) throw new ApiError(400, 'give tail or offset, not both', ['/query/tail: the last lines', '/query/offset: from a position']);
  return { task, stream: stream as LogStreamName, follow, ...(tail === undefined ? {} : { tail }), ...(offset === undefined ? {} : { offset }) };
}

/** `<allocation>:<position>`, as the stream's event ids are written. */
export function parseLastEventId(text: string): { allocationId: string; position: number } {
  const match = /^([A-Za-z0-9-]{1,64}):(\d{1,16})$/.exec(text);
  const position = Number(match?.[2]);
  if (!match || !isLogPosition(position)) throw new ApiError(400, 'invalid Last-Event-ID', ['Last-Event-ID: <allocation id>:<position>, as the log events\' ids are']);
  return { allocationId: match[1]!, position };
}

/** How many bytes at the start of `data` end on a complete UTF-8 character (the rest waits for more). */
export function completeUtf8Length(data: Buffer): number {
  const length = data.length;
  // A character is at most 4 bytes: look at the last 3 for the start of an unfinished one.
  for (let back = 1; back <= Math.min(3, length); back++) {
    const byte = data[length - back]!;
    if ((byte & 0xc0) === 0x80) continue;
    const needed = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    return needed > back ? length - back : length;
  }
  return length;
}

/**
 * Why a Failed session's stopped workload may have no logs left: the embedded scheduler keeps the allocations
 * of stopped jobs (keptStoppedAllocations of them) and removes them all when it starts again.
 */
function whyGone(error: LogNotFoundError, failed: boolean, backend: 'embedded' | 'nomad'): string {
  if (!failed || !error.allocationGone || backend !== 'embedded') return '';
  return '; on the embedded default the logs of stopped workloads are kept only until Manticore restarts, and only for the most recently stopped ones';
}

export function registerLogs(app: FastifyInstance, sessions: SessionService, auth: Authenticator, options: LogRouteOptions): void {
  const counts = new StreamCounts(options.streamsPerUser, 'log streams');
  const open = new Set<(reason: string) => void>();
  app.addHook('preClose', (done) => {
    for (const end of [...open]) end('the server is shutting down');
    done();
  });

  app.get<{ Params: { id: string }; Querystring: Record<string, unknown> }>('/api/v1/sessions/:id/logs', async (request, reply) => {
    const identity = auth.identify(request, reply);
    const session = await sessions.show(identity, request.params.id);
    const id = session.metadata.id;
    const tasks = templateTasks(sessions.templates.get(session.spec.template), sessions.backend);
    const query = parseLogQuery(request.query, tasks);
    const allocationId = session.status.allocationId;
    if (allocationId === undefined) {
      throw new ApiError(409, `session "${id}" has no workload placed yet (phase ${session.status.phase}); its logs appear once it has`);
    }
    const source = options.logs;
    if (source === undefined) throw new ApiError(404, 'task logs are not available from this front end');
    const lastEventId = request.headers['last-event-id'];
    const resume = query.follow && typeof lastEventId === 'string' && lastEventId !== '' ? parseLastEventId(lastEventId) : undefined;
    const release = counts.acquire(identity.user);
    const abort = new AbortController();
    // A failed session's job is stopped: its log will not grow, so even a follower reads it only to its end.
    const failed = session.status.phase === 'Failed';
    try {
      const base = { allocId: allocationId, task: query.task, stream: query.stream, follow: query.follow && !failed, signal: abort.signal };
      const events: AsyncIterable<LogEvent> =
        resume !== undefined
          ? // A reconnection: just after the last event seen, or all of a workload that replaced the one it followed.
            source.read({ ...base, from: resume.allocationId === allocationId ? { kind: 'position', position: resume.position } : { kind: 'start' } })
          : query.offset !== undefined
            ? source.read({ ...base, from: { kind: 'position', position: query.offset } })
            : query.tail !== undefined
              ? readLastLines(source, { ...base, lines: query.tail })
              : source.read({ ...base, from: { kind: 'start' } });
      const iterator = events[Symbol.asyncIterator]();
      try {
        // The first event says the log is there (or the read throws why not) before the answer is committed.
        await iterator.next();
      } catch (error) {
        if (error instanceof LogNotFoundError) throw new ApiError(409, `the ${query.stream} log of task ${query.task} is not available: ${error.message}${whyGone(error, failed, sessions.backend)}`);
        throw error;
      }
      const response = beginResponse(reply, query.follow ? eventStreamHeaders : textHeaders);
      if (response === undefined) {
        // Counted no more at once: a HEAD is answered already, and its client may ask again before the log is closed.
        release();
        abort.abort();
        await iterator.return?.();
        return;
      }
      const context = { id, allocationId, failed, query, session, response, iterator, abort, release, log: request.log, identity, now: options.now };
      if (query.follow) sendEvents(context, sessions, open);
      else await sendPlain(context);
    } catch (error) {
      abort.abort();
      release();
      throw error;
    }
  });
}

interface StreamContext {
  readonly id: string;
  readonly allocationId: string;
  /** The session had failed when the log was opened: its workload is stopped. */
  readonly failed: boolean;
  readonly query: LogQuery;
  readonly session: Session;
  /** Begun: the client was still there when the log opened. */
  readonly response: ServerResponse;
  readonly iterator: AsyncIterator<LogEvent>;
  readonly abort: AbortController;
  readonly release: () => void;
  readonly log: FastifyBaseLogger;
  /** Whom the log is served to: a followed log ends when their credentials expire. */
  readonly identity: Identity;
  readonly now: () => number;
}

/** Waits until the response has taken what it holds (true), or is gone (false). */
function drained(response: ServerResponse): Promise<boolean> {
  if (response.destroyed) return Promise.resolve(false);
  if (!response.writableNeedDrain) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (taken: boolean): void => {
      response.off('drain', onDrain);
      response.off('close', onClose);
      resolve(taken);
    };
    const onDrain = (): void => done(true);
    const onClose = (): void => done(false);
    response.on('drain', onDrain);
    response.on('close', onClose);
  });
}

/** The log as text, as fast as the client reads it. */
async function sendPlain({ response, iterator, abort, release, log, query, id }: StreamContext): Promise<void> {
  response.on('close', () => abort.abort());
  try {
    for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
      if (next.value.kind !== 'data') continue;
      response.write(next.value.data);
      if (!(await drained(response))) break;
    }
  } catch (error) {
    // The answer has begun: all that is left is to stop it short and say why in the log.
    if (!abort.signal.aborted) log.warn({ err: error, session: id, task: query.task, stream: query.stream }, 'reading a task log failed mid-answer');
  } finally {
    abort.abort();
    await iterator.return?.();
    release();
    if (!response.writableEnded) response.end();
  }
}

/**
 * The log as server-sent events, followed until the client goes, the workload is replaced, the session
 * fails or is gone, or the caller's credentials expire; a failed session's log only to its end.
 */
function sendEvents(context: StreamContext, sessions: SessionService, open: Set<(reason: string) => void>): void {
  const { response, iterator, abort, release, allocationId, failed, query, id, session, log, identity, now } = context;
  let ended = false;
  let subscription: Subscription | undefined;
  const heartbeat = setInterval(() => {
    // Only into an idle socket: a backed-up one shows the client is there, and must not grow.
    if (!response.writableNeedDrain) write(': keepalive\n\n');
  }, heartbeatMs);
  heartbeat.unref();
  const write = (block: string): boolean => !ended && !response.writableEnded && response.write(block);
  const end = (event?: { name: string; data: unknown }): void => {
    if (ended) return;
    if (event !== undefined) write(`event: ${event.name}\ndata: ${JSON.stringify(event.data)}\n\n`);
    ended = true;
    clearInterval(heartbeat);
    cancelExpiry();
    subscription?.unsubscribe();
    abort.abort();
    open.delete(closing);
    if (!response.writableEnded) response.end();
  };
  const closing = (reason: string): void => end({ name: 'closing', data: { reason } });
  open.add(closing);
  const cancelExpiry = endOnExpiry(identity, now, closing);
  response.on('close', () => end());
  subscription = sessions.watch(id, session).subscribe((latest) => {
    if (latest === undefined) end({ name: 'gone', data: {} });
    else if (latest.status.allocationId !== undefined && latest.status.allocationId !== allocationId) {
      closing(`the session's workload was replaced (allocation ${latest.status.allocationId}); reconnect for its log`);
    } else if (latest.status.phase === 'Failed' && !failed) {
      // Its job is being stopped: the reconnection reads what is left, to the end, without waiting for more.
      closing('the session failed; reconnect for the rest of its log');
    }
  });
  write(`retry: ${jitteredBackoffMs(1, MAX_RETRY_MS, MAX_RETRY_MS)}\nevent: start\ndata: ${JSON.stringify({ allocationId, task: query.task, stream: query.stream })}\n\n`);
  void (async () => {
    // Bytes of a character cut by the end of a piece wait for the next one (which may begin the next
    // file); the event id stops before them, so a reconnection reads them again.
    let carry = Buffer.alloc(0);
    let carryFrom = 0;
    try {
      for (let next = await iterator.next(); !next.done && !ended; next = await iterator.next()) {
        const event = next.value;
        if (event.kind === 'gap') {
          carry = Buffer.alloc(0);
          const message = `the output between log positions ${event.from} and ${event.to} was rotated away before it could be read`;
          write(`event: gap\ndata: ${JSON.stringify({ from: event.from, to: event.to, message })}\n\n`);
          continue;
        }
        if (event.kind !== 'data') continue;
        const data = carry.length === 0 ? event.data : Buffer.concat([carry, event.data]);
        const start = carry.length === 0 ? event.start : carryFrom;
        const complete = completeUtf8Length(data);
        carry = Buffer.from(data.subarray(complete));
        const until = event.end - carry.length;
        carryFrom = until;
        if (complete === 0) {
          carryFrom = start;
          continue;
        }
        const text = data.subarray(0, complete).toString('utf8');
        write(`id: ${allocationId}:${until}\nevent: log\ndata: ${JSON.stringify({ start, end: until, text })}\n\n`);
        if (!(await drained(response))) break;
      }
      if (ended) return;
      if (failed) end({ name: 'ended', data: { reason: 'the session failed: its workload has stopped, so its log ends here' } });
      else closing('the log ended');
    } catch (error) {
      if (ended) return;
      if (error instanceof LogNotFoundError) closing(`the log is no longer available: ${error.message}`);
      else {
        log.warn({ err: error, session: id, task: query.task, stream: query.stream }, 'following a task log failed');
        closing('reading the log failed; reconnect to try again');
      }
    } finally {
      end();
      await iterator.return?.();
      release();
    }
  })();
}
