import type http from 'node:http';
import { watchRestarts } from '../metrics/metrics.js';
import type { Logger } from '../util/log.js';
import { jitteredBackoffMs } from '../util/backoff.js';
import { NomadApiError, type NomadHttp } from './nomad-http.js';

/**
 * Following Nomad's event stream (`GET /v1/event/stream`) into caches that start from full lists.
 *
 * Nomad keeps the last `event_buffer_size` writes (default 100) for subscribers, and a subscription asked
 * to start at an index no longer buffered silently starts later. So the lists come second: the stream is
 * opened first and its frames are held until the lists have been taken and applied, then the frames newer
 * than the list of their table are applied, and only then is the cache synced. Nomad sends a heartbeat
 * `{}` as soon as a subscription is live (the signal to list) and every 30 s after; a stream that ends,
 * fails, sends something unreadable, goes back in index (its state lost or replaced) or stays silent for
 * three heartbeat intervals is dropped, and after a backoff all of it starts over: a new subscription and
 * fresh lists, which the sink diffs against what it holds.
 */

/** The tables the caches hold, one per topic followed. */
export type EventTable = 'jobs' | 'allocations' | 'evaluations' | 'nodes';

const TOPIC_TABLES: Readonly<Record<string, EventTable>> = { Job: 'jobs', Allocation: 'allocations', Evaluation: 'evaluations', Node: 'nodes' };

export interface NomadEvent {
  topic: string;
  /** Why (Nomad's event type, e.g. JobRegistered, PlanResult, AllocationUpdated). */
  type: string;
  key: string;
  /** The object under its topic's key (`Job`, `Allocation`, `Evaluation`, `Node`): as it is, or as it was when deleted. */
  payload: Record<string, unknown>;
}

/** The events of one write (or part of it: Nomad may split a write over frames of the same index). */
export interface EventFrame {
  index: number;
  events: NomadEvent[];
}

/** The caches fed by the stream. */
export interface EventSink {
  /** Takes and applies full lists (the stream being live); returns the X-Nomad-Index each was taken at. */
  resync(signal: AbortSignal): Promise<Record<EventTable, number>>;
  /** Applies the events of one frame newer than their tables' lists (maybe none: the index still moved on). */
  apply(index: number, events: readonly NomadEvent[]): void;
  /** The lists and every frame received meanwhile are applied. */
  synced(): void;
  /** The stream failed; another subscription follows after a backoff. */
  failed(error: Error): void;
}

export interface EventFollowerOptions {
  http: NomadHttp;
  sink: EventSink;
  log: Logger;
  /** Nomad's heartbeat interval on the stream. */
  heartbeatMs: number;
  /** How long the first heartbeat may take. */
  openTimeoutMs: number;
  /** Ends the following (the scheduler closing). */
  signal: AbortSignal;
}

export const DEFAULT_HEARTBEAT_MS = 30_000;
/** Heartbeat intervals without a frame before a stream is taken for dead. */
const SILENT_HEARTBEATS = 3;
/** Every key of each topic; the namespace (and region) come with every call. */
const TOPICS = Object.keys(TOPIC_TABLES);

const BACKOFF_BASE_MS = 100;
export const BACKOFF_MAX_MS = 10_000;

/** Delay before retry number `failures` (1-based): 100 ms doubling to 10 s, with jitter in [½, 1]×. */
export function backoffDelay(failures: number, random: () => number = Math.random): number {
  return jitteredBackoffMs(failures, BACKOFF_BASE_MS, BACKOFF_MAX_MS, random);
}

/** One line of the stream: a frame, or undefined for a heartbeat; anything else throws. */
export function parseEventLine(line: string): EventFrame | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (error) {
    throw new Error(`Nomad's event stream sent something that is not JSON: ${line.slice(0, 200)}`, { cause: error });
  }
  if (!isRecord(value)) throw new Error(`Nomad's event stream sent a line that is not an object: ${line.slice(0, 200)}`);
  if (Object.keys(value).length === 0) return undefined;
  const index = value.Index;
  if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 0 || !Array.isArray(value.Events)) {
    throw new Error(`Nomad's event stream sent a frame without an Index and Events: ${line.slice(0, 200)}`);
  }
  const events = value.Events.map((event): NomadEvent => {
    if (!isRecord(event) || typeof event.Topic !== 'string' || typeof event.Type !== 'string' || typeof event.Key !== 'string' || !isRecord(event.Payload)) {
      throw new Error(`Nomad's event stream sent a malformed event at index ${index}: ${JSON.stringify(event).slice(0, 200)}`);
    }
    return { topic: event.Topic, type: event.Type, key: event.Key, payload: event.Payload };
  });
  return { index, events };
}

/** Follows the stream into the sink until the signal aborts, starting over after every failure. */
export async function followEvents(options: EventFollowerOptions): Promise<void> {
  const { signal, log } = options;
  let failures = 0;
  while (!signal.aborted) {
    const attempt = new AbortController();
    const abort = (): void => attempt.abort();
    signal.addEventListener('abort', abort, { once: true });
    let syncedAt: number | undefined;
    try {
      await followOnce(options, attempt, () => (syncedAt = Date.now()));
    } catch (error) {
      if (signal.aborted) break;
      options.sink.failed(error as Error);
      watchRestarts.inc({ resource: 'nomad-events' });
      // A stream that was up a heartbeat interval after its sync was healthy: its loss starts the backoff anew.
      failures = syncedAt !== undefined && Date.now() - syncedAt >= options.heartbeatMs ? 1 : failures + 1;
      const delay = backoffDelay(failures);
      const level = failures === 1 || failures % 10 === 0 ? 'warn' : 'debug';
      log[level]({ failures, retryInMs: delay, err: error }, "following Nomad's event stream failed; subscribing and listing again");
      await sleep(delay, signal);
    } finally {
      signal.removeEventListener('abort', abort);
      attempt.abort();
    }
  }
}

/**
 * One subscription: opened, its first line awaited, the lists taken while its frames are held, the held
 * frames applied, then every frame as it comes, until the stream fails (always, in the end: rejects).
 */
async function followOnce(options: EventFollowerOptions, attempt: AbortController, onSynced: () => void): Promise<void> {
  const { http, sink, heartbeatMs } = options;
  let fail!: (error: Error) => void;
  const failed = new Promise<never>((_, reject) => {
    fail = (error) => {
      reject(error);
      attempt.abort();
    };
  });
  // Observed by the races below; this keeps a failure after the last race from going unhandled.
  failed.catch(() => undefined);
  let watchdog: NodeJS.Timeout | undefined;
  const expect = (ms: number, silence: string): void => {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => fail(new Error(`Nomad's event stream ${silence} (${ms} ms)`)), ms);
  };
  attempt.signal.addEventListener('abort', () => clearTimeout(watchdog), { once: true });
  expect(options.openTimeoutMs, 'sent no first heartbeat in time');
  const silent = SILENT_HEARTBEATS * heartbeatMs;

  let live!: () => void;
  const started = new Promise<void>((resolve) => (live = resolve));
  /** Frames held while the lists are taken (until `lists` is set). */
  const held: EventFrame[] = [];
  let lists: Record<EventTable, number> | undefined;
  let last = 0;
  const receive = (line: string): void => {
    expect(silent, `sent nothing, not even a heartbeat, for ${SILENT_HEARTBEATS} heartbeat intervals`);
    live();
    const frame = parseEventLine(line);
    if (!frame) return;
    if (frame.index < last) throw new Error(`Nomad's event index went backwards (${last} → ${frame.index}): its state was lost or replaced`);
    last = frame.index;
    if (lists) deliver(sink, frame, lists);
    else held.push(frame);
  };

  const response = await Promise.race([http.stream('/v1/event/stream', { topic: TOPICS }, attempt.signal), failed]).catch((error: unknown) => {
    // Nomad checks the token against every topic asked for.
    const denied = error instanceof NomadApiError && /permission denied/i.test(error.nomadMessage);
    const failure = denied ? new Error(`${error.message} (the event stream needs read-job in the namespace and node read)`, { cause: error }) : (error as Error);
    fail(failure);
    throw failure;
  });
  readLines(response, receive, fail);
  await Promise.race([started, failed]);
  const indexes = await Promise.race([sink.resync(attempt.signal), failed]);
  // Synchronous from here to synced(): no frame can come in between.
  for (const frame of held.splice(0)) deliver(sink, frame, indexes);
  lists = indexes;
  sink.synced();
  onSynced();
  await failed;
}

/** Hands the sink a frame's events that are newer than the list of their table. */
function deliver(sink: EventSink, frame: EventFrame, lists: Readonly<Record<EventTable, number>>): void {
  const newer = frame.events.filter((event) => {
    const table = TOPIC_TABLES[event.topic];
    return table !== undefined && frame.index > lists[table];
  });
  sink.apply(frame.index, newer);
}

/** Feeds `receive` each line of the answer; any error (from `receive` too), the end or a close fails it. */
function readLines(response: http.IncomingMessage, receive: (line: string) => void, fail: (error: Error) => void): void {
  // A frame of a large write spans many chunks: only each new chunk is searched for the line's end.
  let pending = '';
  response.setEncoding('utf8');
  response.on('data', (chunk: string) => {
    try {
      let start = 0;
      for (let end = chunk.indexOf('\n'); end !== -1; end = chunk.indexOf('\n', start)) {
        const line = pending + chunk.slice(start, end);
        pending = '';
        start = end + 1;
        if (line.trim() !== '') receive(line);
      }
      pending += chunk.slice(start);
    } catch (error) {
      fail(error as Error);
    }
  });
  response.on('error', (error) => fail(new Error(`Nomad's event stream broke: ${error.message}`, { cause: error })));
  response.on('end', () => fail(new Error("Nomad ended the event stream")));
  response.on('close', () => fail(new Error("Nomad's event stream was closed")));
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done);
  });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
