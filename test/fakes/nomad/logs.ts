import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { LogFiles, logFileIndexes } from '../../../controller/scheduler/log-files.js';
import { logPosition, positionFile, positionOffset, type LogStreamName } from '../../../controller/scheduler/task-logs.js';
import type { Logger } from '../../../controller/util/log.js';
import type { NomadState } from './state.js';
import { HttpError } from './types.js';

/**
 * `GET /v1/client/fs/logs/:alloc_id` as Nomad's HTTP agent and client serve it, over the log files the
 * double's tasks write (`<alloc dir>/alloc/logs/<task>.<type>.<n>`, rotated by the task's LogConfig):
 * - parameters checked in Nomad's order with its messages: the task and type as uncoded errors (500),
 *   follow, plain and offset parse errors as 400, origin as 500; an unknown allocation 404, an unknown
 *   task 400, a task not started 404, no log file yet 404;
 * - `origin=start` applies the offset from the start of the oldest file kept, walking forward over the
 *   files' sizes; `origin=end` from the end of the newest, walking back (Nomad's findClosest);
 * - frames `{"File","Offset","Data"}` (base64), one per read of at most 64 KiB, Offset the file offset
 *   after the frame's data; a heartbeat `{}` every heartbeat interval (Nomad: 1 s); `plain=true` sends
 *   the bytes alone, without frames or heartbeats;
 * - without follow the answer ends at the end of the log; following, it goes on until the client leaves.
 * Nomad's framer batches reads made within 200 ms into one frame whose Offset is the end of the first;
 * the double sends each read at once, so its Offsets are exact.
 */

export interface LogsRequest {
  readonly allocId: string;
  readonly task: string;
  readonly type: LogStreamName;
  readonly follow: boolean;
  readonly plain: boolean;
  readonly offset: number;
  readonly origin: 'start' | 'end';
}

export interface LogsContext {
  state(): NomadState;
  /** The directory of an allocation's task logs. */
  logsDir(allocId: string): string;
  /** A task's logs are asked for (a simulated container starts writing). */
  observeLogs(allocId: string, task: string): void;
  readonly heartbeatMs: number;
  readonly log: Logger;
}

/** Go's strconv.ParseBool. */
function parseBool(text: string): boolean | undefined {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(text)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(text)) return false;
  return undefined;
}

export function parseLogsRequest(allocId: string | undefined, query: URLSearchParams): LogsRequest {
  if (!allocId) throw new HttpError(500, 'must provide a valid alloc id');
  const task = query.get('task') ?? '';
  if (task === '') throw new HttpError(500, 'must provide task name');
  const flag = (name: string): boolean => {
    const text = query.get(name);
    if (text === null || text === '') return false;
    const value = parseBool(text);
    if (value === undefined) throw new HttpError(400, `failed to parse ${name} field to boolean: strconv.ParseBool: parsing ${JSON.stringify(text)}: invalid syntax`);
    return value;
  };
  const follow = flag('follow');
  const plain = flag('plain');
  const type = query.get('type');
  if (type !== 'stdout' && type !== 'stderr') throw new HttpError(500, 'must provide log type (stdout/stderr)');
  const offsetText = query.get('offset') ?? '';
  const offset = offsetText === '' ? 0 : Number(offsetText);
  if (offsetText !== '' && !/^[+-]?\d+$/.test(offsetText)) {
    throw new HttpError(400, `error parsing offset: strconv.ParseInt: parsing ${JSON.stringify(offsetText)}: invalid syntax`);
  }
  const origin = query.get('origin') || 'start';
  if (origin !== 'start' && origin !== 'end') throw new HttpError(500, 'origin must be start or end');
  return { allocId, task, type, follow, plain, offset, origin };
}

/** Checks what Nomad's client checks before it streams; throws the HttpError Nomad would answer. */
export async function checkLogsRequest(request: LogsRequest, ctx: LogsContext): Promise<void> {
  const alloc = ctx.state().allocs.get(request.allocId);
  if (!alloc) throw new HttpError(404, `Unknown allocation "${request.allocId}"`);
  const state = alloc.TaskStates[request.task];
  if (!state) throw new HttpError(400, `unknown task name "${request.task}"`);
  if (state.StartedAt === null) throw new HttpError(404, `task "${request.task}" not started yet. No logs available`);
  ctx.observeLogs(request.allocId, request.task);
  const indexes = await logFileIndexes(ctx.logsDir(request.allocId), `${request.task}.${request.type}`);
  if (!indexes?.length) throw new HttpError(404, `log entry for task "${request.task}" and log type "${request.type}" not found`);
}

/** Nomad's findClosest: the file and offset an origin and offset name, over the files kept now. */
async function closest(dir: string, base: string, origin: 'start' | 'end', offset: number): Promise<{ index: number; offset: number }> {
  const indexes = (await logFileIndexes(dir, base)) ?? [];
  if (indexes.length === 0) throw new Error(`log entry for ${base} not found`);
  const size = (index: number): number => {
    try {
      return fs.statSync(path.join(dir, `${base}.${index}`)).size;
    } catch {
      return 0;
    }
  };
  let at = origin === 'start' ? 0 : indexes.length - 1;
  let rest = origin === 'start' ? offset : -offset;
  for (;;) {
    const index = indexes[at]!;
    const length = size(index);
    if (rest === 0) return { index, offset: 0 };
    if (rest < 0) {
      if (length + rest >= 0) return { index, offset: length + rest };
      if (at === 0) return { index, offset: 0 };
      rest += length;
      at--;
    } else {
      if (rest <= length) return { index, offset: rest };
      if (at === indexes.length - 1) return { index, offset: length };
      rest -= length;
      at++;
    }
  }
}

/** Streams the log until its end (not following) or until the client goes. */
export async function serveLogs(request: LogsRequest, res: http.ServerResponse, closed: AbortSignal, ctx: LogsContext): Promise<void> {
  const dir = ctx.logsDir(request.allocId);
  const base = `${request.task}.${request.type}`;
  const start = await closest(dir, base, request.origin, request.offset);
  res.writeHead(200, { 'content-type': request.plain ? 'text/plain' : 'application/json' });
  const send = async (chunk: string | Buffer): Promise<void> => {
    if (res.destroyed || res.write(chunk)) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        res.off('drain', done);
        res.off('close', done);
        resolve();
      };
      res.on('drain', done);
      res.on('close', done);
    });
  };
  const heartbeat = request.plain ? undefined : setInterval(() => void (res.writableNeedDrain || res.write('{}')), ctx.heartbeatMs);
  const files = new LogFiles({ dirOf: () => dir, log: ctx.log });
  try {
    for await (const event of files.read({
      allocId: request.allocId,
      task: request.task,
      stream: request.type,
      from: { kind: 'position', position: logPosition(start.index, start.offset) },
      follow: request.follow,
      signal: closed,
    })) {
      if (event.kind !== 'data') continue;
      if (request.plain) await send(event.data);
      else {
        const file = `alloc/logs/${base}.${positionFile(event.start)}`;
        await send(JSON.stringify({ File: file, Offset: positionOffset(event.end), Data: event.data.toString('base64') }));
      }
    }
  } catch (error) {
    // As Nomad's agent: an error after the answer began is written after what was sent.
    if (!res.destroyed) res.write((error as Error).message);
  } finally {
    clearInterval(heartbeat);
    if (!res.writableEnded) res.end();
  }
}
