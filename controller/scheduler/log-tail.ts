import type { LogData, LogEvent, LogReadRequest, TaskLogs } from './task-logs.js';

/**
 * The last lines of a task's log, and (following) everything after them, over any TaskLogs. Backends
 * give bytes from the end, not lines, so a window of bytes is read (not followed) and widened until it
 * holds enough lines or the whole log; the follow then starts a little before the first of those lines
 * and drops what precedes it, so the lines and what follows meet exactly, whatever the task wrote
 * between the two reads.
 */

/** Bytes searched for lines at most: a request for more lines than this holds gets fewer. */
const MAX_TAIL_BYTES = 4 * 1024 * 1024;
/** A first guess at the bytes a line takes, for the first window. */
const BYTES_PER_LINE = 200;
const MIN_WINDOW_BYTES = 64 * 1024;
/** Reading the window stops this far past it: a task may write faster than its log is read. */
const PROBE_OVERRUN_BYTES = 1024 * 1024;
/** What the follow reads before the lines' start, for what the task wrote between the two reads. */
const FOLLOW_SLACK_BYTES = 1024 * 1024;

export interface TailRequest extends Omit<LogReadRequest, 'from'> {
  readonly lines: number;
}

export async function* readLastLines(source: TaskLogs, request: TailRequest): AsyncGenerator<LogEvent> {
  const { lines, ...rest } = request;
  let window = Math.min(MAX_TAIL_BYTES, Math.max(MIN_WINDOW_BYTES, lines * BYTES_PER_LINE));
  let kept: LogData[];
  let cut: number | undefined;
  for (;;) {
    kept = [];
    let bytes = 0;
    for await (const event of source.read({ ...rest, from: { kind: 'tail', bytes: window }, follow: false })) {
      // Gaps within the window do not matter: only what comes after the cut is delivered.
      if (event.kind !== 'data') continue;
      kept.push(event);
      bytes += event.data.length;
      if (bytes >= window + PROBE_OVERRUN_BYTES) break;
    }
    cut = lastLinesStart(kept, lines);
    const wholeLog = bytes < window;
    if (cut !== undefined || wholeLog || window >= MAX_TAIL_BYTES) break;
    window = Math.min(MAX_TAIL_BYTES, window * 4);
  }
  const from = cut ?? kept[0]?.start;
  yield { kind: 'opened' };
  if (!request.follow) {
    for (const event of kept) {
      const trimmed = from === undefined ? event : after(event, from);
      if (trimmed) yield trimmed;
    }
    return;
  }
  if (from === undefined) {
    // Nothing written yet: everything from the start is new.
    for await (const event of source.read({ ...rest, from: { kind: 'start' }, follow: true })) if (event.kind !== 'opened') yield event;
    return;
  }
  let distance = 0;
  for (const event of kept) distance += event.end - Math.max(event.start, from);
  let first = true;
  for await (const event of source.read({ ...rest, from: { kind: 'tail', bytes: distance + FOLLOW_SLACK_BYTES }, follow: true })) {
    if (event.kind === 'opened') continue;
    // A read that begins after `from` (more than the slack was written between the reads) has missed what
    // lies between without saying so. One that begins at or before it reports every gap itself from there
    // on, and none where `from` is the end of a full file and the output goes on in the next.
    if (event.kind === 'gap') {
      if (event.to > from) yield { ...event, from: first ? from : Math.max(event.from, from) };
    } else {
      if (first && event.start > from) yield { kind: 'gap', from, to: event.start };
      const trimmed = after(event, from);
      if (trimmed) yield trimmed;
    }
    first = false;
  }
}

/** The part of `event` at or after `position`, or undefined when it all lies before. */
function after(event: LogData, position: number): LogData | undefined {
  if (event.end <= position) return undefined;
  if (event.start >= position) return event;
  return { kind: 'data', start: position, end: event.end, data: event.data.subarray(position - event.start) };
}

/**
 * Where the last `lines` lines begin (a final line without its newline counts), or undefined when the
 * data holds fewer lines than that (they may begin before it).
 */
export function lastLinesStart(events: readonly LogData[], lines: number): number | undefined {
  const last = events.at(-1);
  if (last === undefined) return undefined;
  if (lines === 0) return last.end;
  // Newlines to pass going back: one per line, plus the one ending the last line if it is there.
  let newlines = last.data.at(-1) === 0x0a ? lines + 1 : lines;
  for (let at = events.length - 1; at >= 0; at--) {
    const { data, start } = events[at]!;
    for (let index = data.length - 1; index >= 0; index--) {
      if (data[index] === 0x0a && --newlines === 0) return start + index + 1;
    }
  }
  return undefined;
}
