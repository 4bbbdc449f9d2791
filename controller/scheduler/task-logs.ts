/**
 * Reading a task's stdout and stderr, whichever backend runs it: the embedded scheduler's log files
 * (log-files.ts) or Nomad's client fs logs API (nomad-logs.ts).
 *
 * Both keep a task's output the way Nomad's logmon does: in numbered files per stream
 * (`<task>.stdout.0`, `.1`, …), a new one begun when the current one is full and the oldest deleted
 * beyond a count. A place in the output is a file and a byte offset in it, and a position is both in one
 * number: `file × 2^32 + offset`. Within the first file it is simply the byte offset; it only ever grows,
 * so a reader that passes back the position it last got resumes exactly there, across rotations, and
 * learns of output rotated away before it could be read (a gap) instead of silently missing it. The end
 * of a full file is the same place in the output as the start of the next: nothing lies between them.
 */

export type LogStreamName = 'stdout' | 'stderr';
export const logStreamNames: readonly LogStreamName[] = ['stdout', 'stderr'];

/** Bytes per file in a position; a log file is never larger (Nomad's files are MBs, the embedded ones too). */
const FILE_SPAN = 2 ** 32;
/** File indexes that keep a position a safe integer. */
export const MAX_FILE_INDEX = Math.floor(Number.MAX_SAFE_INTEGER / FILE_SPAN);

export function logPosition(file: number, offset: number): number {
  return file * FILE_SPAN + offset;
}

export function positionFile(position: number): number {
  return Math.floor(position / FILE_SPAN);
}

export function positionOffset(position: number): number {
  return position % FILE_SPAN;
}

/** `3:1024` for humans and log lines. */
export function describePosition(position: number): string {
  return `${positionFile(position)}:${positionOffset(position)}`;
}

export function isLogPosition(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

/** Where a read begins. */
export type LogStart =
  /** The oldest output still kept. */
  | { readonly kind: 'start' }
  /** A position a previous read reported (its `end`). */
  | { readonly kind: 'position'; readonly position: number }
  /** About this many bytes before the end (fewer when the log is shorter). */
  | { readonly kind: 'tail'; readonly bytes: number };

export interface LogReadRequest {
  readonly allocId: string;
  readonly task: string;
  readonly stream: LogStreamName;
  readonly from: LogStart;
  /** Keep waiting for more output at the end (until `signal` aborts); otherwise stop there. */
  readonly follow: boolean;
  readonly signal?: AbortSignal;
}

/** Output, with the positions of its first byte and of the byte after it. */
export interface LogData {
  readonly kind: 'data';
  readonly start: number;
  readonly end: number;
  readonly data: Buffer;
}

/** Output between two positions was deleted (rotated away) before it could be read. */
export interface LogGap {
  readonly kind: 'gap';
  readonly from: number;
  readonly to: number;
}

/**
 * The read is established (the log exists and the backend answered): the first event of every read, so
 * a caller can answer "no such log" before it commits to a response, without waiting for output.
 */
export interface LogOpened {
  readonly kind: 'opened';
}

export type LogEvent = LogData | LogGap | LogOpened;

/** Reads task logs; the iteration pulls, so a consumer that stops pulling stops the reading (back-pressure). */
export interface TaskLogs {
  read(request: LogReadRequest): AsyncIterable<LogEvent>;
}

/**
 * There is no such log (yet): the allocation is unknown or gone, the task has not started, or it wrote
 * nothing so far. The message says which.
 */
export class LogNotFoundError extends Error {
  /** The allocation itself is unknown or gone (not merely a task without a log yet). */
  readonly allocationGone: boolean;

  constructor(message: string, options?: { cause?: unknown; allocationGone?: boolean }) {
    super(message, options);
    this.name = 'LogNotFoundError';
    this.allocationGone = options?.allocationGone ?? false;
  }
}

/** The largest piece of output one event carries (Nomad's frame size). */
export const LOG_CHUNK_BYTES = 64 * 1024;
