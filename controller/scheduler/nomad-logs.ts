import type http from 'node:http';
import { JsonArraySplitter } from '../util/http-body.js';
import type { Logger } from '../util/log.js';
import { backoffDelay, sleep } from './nomad-events.js';
import { NomadApiError, type NomadHttp } from './nomad-http.js';
import {
  LOG_CHUNK_BYTES,
  LogNotFoundError,
  describePosition,
  logPosition,
  positionFile,
  positionOffset,
  type LogEvent,
  type LogGap,
  type LogReadRequest,
  type LogStart,
  type TaskLogs,
} from './task-logs.js';

/**
 * Task logs over Nomad's client fs logs API (`GET /v1/client/fs/logs/:alloc_id`), through whichever Nomad
 * agent Manticore talks to (it forwards to the client running the allocation). The token needs
 * `read-logs` in the namespace.
 *
 * Nomad answers with a stream of JSON frames, one after another: `{"File":"alloc/logs/core.stdout.0",
 * "Offset":N,"Data":"<base64>"}`, `{"FileEvent":"file truncated"|"file deleted",…}` when the file
 * changed under the reader, and a heartbeat `{}` every second. Nomad moves from one rotated file to the
 * next by itself; a frame's File says which file its data came from, and a new file is always read from
 * its start. What Nomad does not say reliably is where in the file a frame begins: its framer batches
 * reads, and a frame's Offset is the end of the first read put into it. So positions are counted here,
 * from places known for certain:
 * - `origin=start` with no offset begins at the start of the oldest file kept;
 * - every switch to a newer file begins at its offset 0 (a skipped index is a file rotated away: a gap);
 * - `origin=end` with at least one frame's worth of bytes: the first read fills a whole frame, which
 *   Nomad sends at once, so Offset − its length is where it began (fewer bytes kept than asked for:
 *   the start of the oldest file, where Offset ≤ length);
 * - resuming at a position: `origin=start&offset=O` applies O to the oldest file kept. When that is the
 *   file wanted, reading begins at O; when it is older, its frames are read past and dropped until
 *   Nomad moves on to the file wanted (bounded by Nomad's log retention, LOG_CONFIG in nomad-job.ts);
 *   when the file wanted was rotated away, the read begins again at the oldest file, after a gap.
 * A followed stream that breaks (the agent restarts, heartbeats stop) is opened again from the last
 * position delivered, with a backoff.
 */

export interface NomadTaskLogsOptions {
  readonly http: NomadHttp;
  readonly log: Logger;
  /** Nomad heartbeats every second; a stream silent this long is taken for dead (and, when following, reopened). */
  readonly silenceTimeoutMs?: number;
}

const DEFAULT_SILENCE_TIMEOUT_MS = 10_000;

/** One frame of the stream; undefined for a heartbeat. */
export interface LogFrame {
  readonly file: string;
  /** The file's index: `alloc/logs/core.stdout.3` → 3. */
  readonly index: number;
  readonly offset: number;
  readonly data: Buffer;
  readonly fileEvent?: string;
}

/** Parses one frame's JSON; a heartbeat (`{}`) gives undefined. Anything malformed throws. */
export function parseLogFrame(text: string): LogFrame | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new Error(`Nomad sent a log frame that is not JSON: ${text.slice(0, 200)}`, { cause: error });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`Nomad sent a log frame that is not an object: ${text.slice(0, 200)}`);
  const frame = value as Record<string, unknown>;
  const { File: file, Offset: offset = 0, Data: data = '', FileEvent: fileEvent } = frame;
  if (file === undefined && data === '' && fileEvent === undefined) return undefined;
  if (typeof file !== 'string' || typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0 || typeof data !== 'string') {
    throw new Error(`Nomad sent a malformed log frame: ${text.slice(0, 200)}`);
  }
  if (fileEvent !== undefined && typeof fileEvent !== 'string') throw new Error(`Nomad sent a log frame with a malformed FileEvent: ${text.slice(0, 200)}`);
  const index = /\.(\d{1,15})$/.exec(file)?.[1];
  if (index === undefined) throw new Error(`Nomad sent a log frame of a file without an index: ${file}`);
  return { file, index: Number(index), offset, data: Buffer.from(data, 'base64'), ...(fileEvent ? { fileEvent } : {}) };
}

/** The answer to a frame: events to deliver, or a new read to open instead (the file wanted is gone). */
type Step = { events: LogEvent[] } | { reopen: LogStart; gap: LogGap };

/**
 * Positions of one response's frames, given where the request asked to begin (see the module comment).
 * Data before `skipUntil` is dropped (resuming past the start of the file Nomad began with).
 */
export class FramePositions {
  /** The file being read and the offset its next byte has; offset undefined while unknown (read past). */
  private file: number | undefined;
  private offset: number | undefined;
  private skipUntil = 0;

  constructor(private readonly from: LogStart) {}

  accept(frame: LogFrame): Step {
    const events: LogEvent[] = [];
    if (this.file === undefined) {
      const first = this.begin(frame);
      if ('reopen' in first) return first;
      if (first.gap) events.push(first.gap);
    } else if (frame.index > this.file) {
      const from = Math.max(logPosition(this.file + 1, 0), this.skipUntil);
      const to = logPosition(frame.index, 0);
      if (to > from) events.push({ kind: 'gap', from, to });
      this.file = frame.index;
      this.offset = 0;
    } else if (frame.index < this.file) {
      throw new Error(`Nomad went back from log file ${this.file} to ${frame.file}`);
    }
    if (frame.fileEvent === 'file truncated') this.offset = 0;
    if (frame.data.length === 0) return { events };
    const offset = this.offset;
    if (offset === undefined) return { events };
    const start = logPosition(this.file!, offset);
    this.offset = offset + frame.data.length;
    const end = start + frame.data.length;
    if (end <= this.skipUntil) return { events };
    const cut = Math.max(0, this.skipUntil - start);
    events.push({ kind: 'data', start: start + cut, end, data: cut > 0 ? frame.data.subarray(cut) : frame.data });
    return { events };
  }

  private begin(frame: LogFrame): { gap?: LogGap } | { reopen: LogStart; gap: LogGap } {
    this.file = frame.index;
    const whole = frame.data.length === LOG_CHUNK_BYTES;
    switch (this.from.kind) {
      case 'start':
        this.offset = 0;
        return {};
      case 'tail':
        this.offset = Math.max(0, frame.offset - frame.data.length);
        return {};
      case 'position': {
        const wanted = positionFile(this.from.position);
        const at = positionOffset(this.from.position);
        if (frame.index > wanted) {
          // The file wanted was rotated away; the oldest kept is read from its start.
          return { reopen: { kind: 'position', position: logPosition(frame.index, 0) }, gap: { kind: 'gap', from: this.from.position, to: logPosition(frame.index, 0) } };
        }
        this.skipUntil = this.from.position;
        if (frame.index < wanted) {
          this.offset = undefined;
          return {};
        }
        // Nomad began where asked, unless the offset was beyond an older file it walked past: a whole
        // first frame tells for certain.
        const began = whole ? frame.offset - frame.data.length : at;
        this.offset = began;
        return began > at ? { gap: { kind: 'gap', from: this.from.position, to: logPosition(wanted, began) } } : {};
      }
    }
  }
}

export class NomadTaskLogs implements TaskLogs {
  private readonly silenceTimeoutMs: number;

  constructor(private readonly options: NomadTaskLogsOptions) {
    this.silenceTimeoutMs = options.silenceTimeoutMs ?? DEFAULT_SILENCE_TIMEOUT_MS;
  }

  async *read(request: LogReadRequest): AsyncGenerator<LogEvent> {
    const { signal } = request;
    let from = request.from;
    let failures = 0;
    let opened = false;
    for (;;) {
      let delivered = false;
      let reopen = false;
      try {
        for await (const item of this.readOnce(request, from)) {
          if ('reopen' in item) {
            if (!opened) yield { kind: 'opened' };
            opened = true;
            yield item.gap;
            from = item.reopen;
            reopen = true;
            break;
          }
          if (item.kind === 'opened') {
            // Once per read, not per reconnection.
            if (!opened) yield item;
            opened = true;
            continue;
          }
          delivered = true;
          yield item;
          // A read that breaks goes on from what was delivered last.
          from = { kind: 'position', position: item.kind === 'data' ? item.end : item.to };
        }
      } catch (error) {
        if (signal?.aborted) return;
        // Only a stream that was open is taken up again: a first refusal (no such log, no permission, no
        // agent) is the caller's answer.
        if (error instanceof LogNotFoundError || !request.follow || !opened) throw error;
        failures = delivered ? 1 : failures + 1;
        const retryInMs = backoffDelay(failures);
        this.options.log[failures === 1 || failures % 10 === 0 ? 'warn' : 'debug'](
          { err: error, allocId: request.allocId, task: request.task, stream: request.stream, from: from.kind === 'position' ? describePosition(from.position) : from.kind, retryInMs },
          'following task logs from Nomad failed; opening the stream again',
        );
        await sleep(retryInMs, signal ?? new AbortController().signal);
        continue;
      }
      if (signal?.aborted || (!reopen && !request.follow)) return;
    }
  }

  /** One request: its events, in order, or a note that the read must be opened again elsewhere. */
  private async *readOnce(request: LogReadRequest, from: LogStart): AsyncGenerator<LogEvent | { reopen: LogStart; gap: LogGap }> {
    const query: Record<string, string> = {
      task: request.task,
      type: request.stream,
      follow: String(request.follow),
      plain: 'false',
      origin: from.kind === 'tail' ? 'end' : 'start',
      offset: String(from.kind === 'tail' ? Math.max(from.bytes, LOG_CHUNK_BYTES) : from.kind === 'position' ? positionOffset(from.position) : 0),
    };
    const path = `/v1/client/fs/logs/${encodeURIComponent(request.allocId)}`;
    const attempt = new AbortController();
    const stop = (): void => attempt.abort();
    request.signal?.addEventListener('abort', stop, { once: true });
    // Aborted already (while the previous attempt ended): the listener above will never be called.
    if (request.signal?.aborted) stop();
    let silence: NodeJS.Timeout | undefined;
    let timedOut = false;
    const expectFrame = (): void => {
      clearTimeout(silence);
      silence = setTimeout(() => {
        timedOut = true;
        attempt.abort();
      }, this.silenceTimeoutMs);
    };
    try {
      expectFrame();
      let response: http.IncomingMessage;
      try {
        response = await this.options.http.stream(path, query, attempt.signal);
      } catch (error) {
        throw this.describe(error, request, timedOut);
      }
      yield { kind: 'opened' };
      const positions = new FramePositions(from);
      const frames: string[] = [];
      let trailing = '';
      const splitter = new JsonArraySplitter((text) => frames.push(text), { onText: (text) => (trailing = (trailing + text).slice(0, 2_000)) });
      response.setEncoding('utf8');
      try {
        for await (const chunk of response as AsyncIterable<string>) {
          expectFrame();
          splitter.write(chunk);
          for (const text of frames.splice(0)) {
            const frame = parseLogFrame(text);
            if (frame === undefined) continue;
            const step = positions.accept(frame);
            if ('reopen' in step) {
              yield step;
              return;
            }
            yield* step.events;
          }
        }
        splitter.end();
      } catch (error) {
        if (timedOut) throw new Error(`Nomad sent no log frame nor heartbeat for ${this.silenceTimeoutMs} ms`, { cause: error });
        throw error;
      }
      // Nomad reports an error that came after the answer began as text after the frames.
      if (trailing.trim() !== '') throw errorFromText(trailing.trim(), request);
      if (request.follow && !request.signal?.aborted) throw new Error('Nomad ended the log stream');
    } finally {
      clearTimeout(silence);
      request.signal?.removeEventListener('abort', stop);
      attempt.abort();
    }
  }

  private describe(error: unknown, request: LogReadRequest, timedOut: boolean): Error {
    if (timedOut) return new Error(`Nomad did not answer the log request within ${this.silenceTimeoutMs} ms`, { cause: error });
    if (!(error instanceof NomadApiError)) return error as Error;
    if (error.status === 404 || (error.status === 400 && /unknown task/i.test(error.nomadMessage))) {
      return new LogNotFoundError(`no ${request.stream} log of task ${request.task} in allocation ${request.allocId}: ${error.nomadMessage}`, { cause: error });
    }
    if (error.status === 403) return new Error(`reading task logs from Nomad was refused (the token needs read-logs in the namespace): ${error.nomadMessage}`, { cause: error });
    return error;
  }
}

function errorFromText(text: string, request: LogReadRequest): Error {
  if (/unknown allocation|not found|no logs available/i.test(text)) {
    return new LogNotFoundError(`no ${request.stream} log of task ${request.task} in allocation ${request.allocId}: ${text}`);
  }
  return new Error(`Nomad's log stream failed: ${text}`);
}
