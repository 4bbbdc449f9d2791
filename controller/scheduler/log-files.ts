import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { systemClock, type Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import {
  LOG_CHUNK_BYTES,
  LogNotFoundError,
  MAX_FILE_INDEX,
  logPosition,
  positionFile,
  positionOffset,
  type LogEvent,
  type LogReadRequest,
  type LogStart,
  type TaskLogs,
} from './task-logs.js';

/**
 * Task logs kept in files the way Nomad's logmon keeps them: per task and stream, numbered files
 * `<task>.<stream>.<n>` in one directory, each at most `maxFileBytes` long, a new one begun when the
 * current one is full, and only the newest `maxFiles` kept. The embedded scheduler writes its tasks'
 * output with RotatingLogWriter and the front end reads it with LogFiles; the Nomad double does both for
 * its own tasks.
 *
 * Unlike logmon, a write that does not fit is split exactly at the size limit rather than at a line end:
 * every full file then holds exactly `maxFileBytes`, so a kept full file tells a reader where one that was
 * rotated away ended.
 */

export interface RotationPolicy {
  readonly maxFileBytes: number;
  readonly maxFiles: number;
}

/** 3 files of 10 MiB per stream, as the Nomad jobs Manticore renders keep them (nomad-job.ts LOG_CONFIG). */
export const DEFAULT_ROTATION: RotationPolicy = { maxFileBytes: 10 * 1024 * 1024, maxFiles: 3 };

/** How often a follower looks at its file when no change notification came (a filesystem without inotify). */
const DEFAULT_FOLLOW_POLL_MS = 1_000;

const LOG_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** Write errors that mean no room: the output is dropped until there is some again. */
const DISK_FULL: ReadonlySet<string> = new Set(['ENOSPC', 'EDQUOT']);

/** The file indexes of `<base>.<n>` in `dir`, ascending; undefined when the directory does not exist. */
export async function logFileIndexes(dir: string, base: string): Promise<number[] | undefined> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  return indexesIn(names, base);
}

function indexesIn(names: readonly string[], base: string): number[] {
  const prefix = `${base}.`;
  const indexes: number[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const suffix = name.slice(prefix.length);
    if (/^\d{1,15}$/.test(suffix)) indexes.push(Number(suffix));
  }
  return indexes.sort((a, b) => a - b);
}

/**
 * Writes one stream of a task into rotated files. Writes are queued by Writable (so a task writing
 * faster than the disk is held back through the pipe into it), each appended to the current file, split
 * at the size limit; when a file is full the next is opened and those beyond `maxFiles` are deleted.
 * Opening continues the newest file left in the directory, as logmon does after a restart.
 *
 * A full disk (ENOSPC, EDQUOT) drops the output that does not fit, and writing resumes with the next
 * chunk once there is room: the task must not block on its output, nor lose it for good over a moment
 * without space. A streak of drops begins with a 'dropping' event (the error) and ends with a 'resumed'
 * event (the bytes dropped). Any other write error ends the writer ('error').
 */
export class RotatingLogWriter extends Writable {
  private index: number;
  private size: number;
  private fd: number;
  /** Bytes dropped since the disk was last found full; undefined while writes succeed. */
  private dropped: number | undefined;

  constructor(
    private readonly dir: string,
    private readonly base: string,
    private readonly policy: RotationPolicy = DEFAULT_ROTATION,
  ) {
    super({ decodeStrings: true });
    if (!LOG_NAME.test(base)) throw new Error(`log name "${base}" must match ${LOG_NAME}`);
    if (!(policy.maxFileBytes >= 1 && policy.maxFileBytes < 2 ** 32) || !(policy.maxFiles >= 1)) {
      throw new Error(`log rotation needs 1 ≤ maxFileBytes < 4 GiB and maxFiles ≥ 1, got ${JSON.stringify(policy)}`);
    }
    fs.mkdirSync(dir, { recursive: true });
    this.index = indexesIn(fs.readdirSync(dir), base).at(-1) ?? 0;
    this.fd = fs.openSync(this.file(this.index), 'a');
    this.size = fs.fstatSync(this.fd).size;
  }

  /** The file being written now. */
  get current(): { index: number; size: number } {
    return { index: this.index, size: this.size };
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.append(chunk).then((failure) => {
      if (failure === undefined) {
        if (this.dropped !== undefined) this.emit('resumed', this.dropped);
        this.dropped = undefined;
        return callback();
      }
      if (!DISK_FULL.has(failure.error.code ?? '')) return callback(failure.error);
      if (this.dropped === undefined) this.emit('dropping', failure.error);
      this.dropped = (this.dropped ?? 0) + failure.unwritten;
      callback();
    }, callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    fs.close(this.fd, (error) => callback(error));
    this.fd = -1;
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.fd >= 0) fs.close(this.fd, () => callback(error));
    else callback(error);
    this.fd = -1;
  }

  /** Appends the chunk; on failure, says how many of its bytes did not reach a file, and why. */
  private async append(chunk: Buffer): Promise<{ unwritten: number; error: NodeJS.ErrnoException } | undefined> {
    let written = 0;
    try {
      while (written < chunk.length) {
        if (this.size >= this.policy.maxFileBytes) this.rotate();
        const piece = chunk.subarray(written, written + this.policy.maxFileBytes - this.size);
        await this.writeAll(piece, (bytes) => {
          this.size += bytes;
          written += bytes;
        });
      }
      return undefined;
    } catch (error) {
      return { unwritten: chunk.length - written, error: error as NodeJS.ErrnoException };
    }
  }

  private writeAll(buffer: Buffer, onWritten: (bytes: number) => void): Promise<void> {
    return new Promise((resolve, reject) => {
      const next = (from: number): void => {
        if (from >= buffer.length) return resolve();
        fs.write(this.fd, buffer, from, buffer.length - from, null, (error, bytes) => {
          if (error) return reject(error);
          onWritten(bytes);
          next(from + bytes);
        });
      };
      next(0);
    });
  }

  /**
   * Rare (once per full file), so done synchronously between two writes: no write can fall in between.
   * The next file is opened before the full one is closed: if it cannot be (no room for it), writing
   * stays where it was and is tried again with the next chunk.
   */
  private rotate(): void {
    if (this.index >= MAX_FILE_INDEX) throw new Error(`${this.file(this.index)}: the last log file index was reached`);
    const next = fs.openSync(this.file(this.index + 1), 'a');
    fs.closeSync(this.fd);
    this.fd = next;
    this.index++;
    this.size = 0;
    for (const old of indexesIn(fs.readdirSync(this.dir), this.base)) {
      if (old <= this.index - this.policy.maxFiles) fs.rmSync(this.file(old), { force: true });
    }
  }

  private file(index: number): string {
    return path.join(this.dir, `${this.base}.${index}`);
  }
}

export interface LogFilesOptions {
  /** The directory holding an allocation's log files; undefined for an id that cannot be one. */
  readonly dirOf: (allocId: string) => string | undefined;
  readonly log: Logger;
  /** Drives the follow fallback poll (tests pass a fake one). */
  readonly clock?: Clock;
  readonly pollMs?: number;
  /** Change notifications (inotify); off, a follower only polls. */
  readonly watch?: boolean;
}

/** Reads log files written by RotatingLogWriter (TaskLogs over a directory per allocation). */
export class LogFiles implements TaskLogs {
  private readonly clock: Clock;
  private readonly watches: DirectoryWatches;

  constructor(private readonly options: LogFilesOptions) {
    this.clock = options.clock ?? systemClock;
    this.watches = new DirectoryWatches(options.watch ?? true, options.log);
  }

  async *read(request: LogReadRequest): AsyncGenerator<LogEvent> {
    const dir = this.options.dirOf(request.allocId);
    if (dir === undefined || !LOG_NAME.test(request.task)) {
      throw new LogNotFoundError(`allocation ${request.allocId} has no task ${request.task}`);
    }
    const base = `${request.task}.${request.stream}`;
    const { signal } = request;
    const listed = await logFileIndexes(dir, base);
    if (listed === undefined) throw new LogNotFoundError(`allocation ${request.allocId} is not on this machine (unknown, or removed)`, { allocationGone: true });
    if (listed.length === 0) throw new LogNotFoundError(`task ${request.task} of allocation ${request.allocId} has no ${request.stream} log (not started)`);
    const watch = request.follow ? this.watches.acquire(dir) : undefined;
    let file: OpenLogFile | undefined;
    try {
      const start = await startingPoint(dir, base, listed, request.from);
      file = await OpenLogFile.open(dir, base, start.index, start.offset);
      yield { kind: 'opened' };
      if (start.gap) yield start.gap;
      const buffer = Buffer.allocUnsafe(LOG_CHUNK_BYTES);
      for (;;) {
        if (signal?.aborted) return;
        // Armed before reading: a write that lands between this read and the wait below still wakes it.
        const change = watch?.next();
        const read = await file.read(buffer);
        if (read.length > 0) {
          change?.cancel();
          yield file.dataEvent(read);
          continue;
        }
        const newer = (await logFileIndexes(dir, base))?.filter((index) => index > file!.index) ?? [];
        if (newer.length > 0) {
          change?.cancel();
          // A newer file exists, so this one is complete; one more read takes what came before the rotation.
          const last = await file.read(buffer, false);
          if (last.length > 0) {
            yield file.dataEvent(last);
            continue;
          }
          const moved = await this.nextFile(dir, base, file, newer);
          file = moved.file;
          if (moved.gap) yield moved.gap;
          continue;
        }
        if (!watch) {
          change?.cancel();
          return;
        }
        await this.waitForChange(change!, signal);
      }
    } finally {
      await file?.close();
      watch?.release();
    }
  }

  /** Moves on to the oldest newer file that still exists; output of files deleted meanwhile is a gap. */
  private async nextFile(dir: string, base: string, current: OpenLogFile, newer: number[]): Promise<{ file: OpenLogFile; gap?: LogEvent }> {
    const from = logPosition(current.index + 1, 0);
    await current.close();
    for (let candidates = newer; ; ) {
      const index = candidates[0];
      if (index === undefined) throw new LogNotFoundError(`the ${base} log was removed while it was read (its allocation is gone)`);
      try {
        const file = await OpenLogFile.open(dir, base, index, 0);
        const to = logPosition(index, 0);
        return to > from ? { file, gap: { kind: 'gap', from, to } } : { file };
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
        // Rotated away between the listing and the open: look again.
        candidates = ((await logFileIndexes(dir, base)) ?? []).filter((other) => other > index);
      }
    }
  }

  private async waitForChange(change: { changed: Promise<void>; cancel(): void }, signal: AbortSignal | undefined): Promise<void> {
    let timer: unknown;
    let onAbort: (() => void) | undefined;
    try {
      await Promise.race([
        change.changed,
        new Promise<void>((resolve) => (timer = this.clock.setTimeout(resolve, this.options.pollMs ?? DEFAULT_FOLLOW_POLL_MS))),
        new Promise<void>((resolve) => {
          // Aborted while it read: a listener added now would never be called.
          if (signal?.aborted) return resolve();
          onAbort = () => resolve();
          signal?.addEventListener('abort', onAbort, { once: true });
        }),
      ]);
    } finally {
      change.cancel();
      this.clock.clearTimeout(timer);
      if (onAbort) signal?.removeEventListener('abort', onAbort);
    }
  }
}

/** Where a read begins: the file and offset, and the gap when the place asked for was rotated away. */
async function startingPoint(dir: string, base: string, indexes: number[], from: LogStart): Promise<{ index: number; offset: number; gap?: LogEvent }> {
  const oldest = indexes[0]!;
  const newest = indexes.at(-1)!;
  const sizeOf = async (index: number): Promise<number> => {
    try {
      return (await fsp.stat(path.join(dir, `${base}.${index}`))).size;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw error;
    }
  };
  /**
   * Whether the position is the end of a file no longer kept: the start of the next, so a reader there has
   * missed nothing. A newer file exists, so that file was full and held what a kept full file holds. With
   * no kept full file to tell (only one file kept) it is taken for a place inside: a gap is reported rather
   * than a loss hidden.
   */
  const isEndOfLostFile = async (position: number): Promise<boolean> => {
    const index = positionFile(position);
    if (indexes.includes(index) || index >= newest || oldest === newest) return false;
    const fullBytes = await sizeOf(oldest);
    // 0: the oldest file was rotated away meanwhile; a full file is never empty.
    return fullBytes > 0 && positionOffset(position) === fullBytes;
  };
  switch (from.kind) {
    case 'start':
      return { index: oldest, offset: 0 };
    case 'position': {
      const at = (await isEndOfLostFile(from.position)) ? logPosition(positionFile(from.position) + 1, 0) : from.position;
      const index = positionFile(at);
      if (index < oldest) return { index: oldest, offset: 0, gap: { kind: 'gap', from: from.position, to: logPosition(oldest, 0) } };
      // A place beyond the end (a file not written yet) reads on from the end.
      if (index > newest) return { index: newest, offset: await sizeOf(newest) };
      const existing = indexes.find((candidate) => candidate >= index)!;
      if (existing !== index) return { index: existing, offset: 0, gap: { kind: 'gap', from: from.position, to: logPosition(existing, 0) } };
      return { index, offset: Math.min(positionOffset(at), await sizeOf(index)) };
    }
    case 'tail': {
      let wanted = from.bytes;
      for (let at = indexes.length - 1; at >= 0; at--) {
        const index = indexes[at]!;
        const size = await sizeOf(index);
        if (size >= wanted) return { index, offset: size - wanted };
        wanted -= size;
      }
      return { index: oldest, offset: 0 };
    }
  }
}

/** One log file being read, with the offset of the next read. */
class OpenLogFile {
  private constructor(
    readonly index: number,
    private readonly handle: fsp.FileHandle,
    public offset: number,
  ) {}

  static async open(dir: string, base: string, index: number, offset: number): Promise<OpenLogFile> {
    return new OpenLogFile(index, await fsp.open(path.join(dir, `${base}.${index}`), 'r'), offset);
  }

  /**
   * The next bytes (a view into `buffer`, empty at the end). A file shorter than the offset was truncated
   * (never by our writer; by hand perhaps): reading starts over from its beginning, as Nomad does.
   */
  async read(buffer: Buffer, checkTruncation = true): Promise<Buffer> {
    const { bytesRead } = await this.handle.read(buffer, 0, buffer.length, this.offset);
    if (bytesRead === 0 && checkTruncation && (await this.handle.stat()).size < this.offset) {
      this.offset = 0;
      return this.read(buffer, false);
    }
    this.offset += bytesRead;
    return buffer.subarray(0, bytesRead);
  }

  /** The event for bytes just read (copied: the buffer is read into again). */
  dataEvent(read: Buffer): LogEvent {
    const start = logPosition(this.index, this.offset - read.length);
    return { kind: 'data', start, end: start + read.length, data: Buffer.from(read) };
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

interface Waiter {
  changed: Promise<void>;
  cancel(): void;
}

/**
 * One inotify watch per directory, whoever follows files in it: a log written in small pieces wakes each
 * follower once per change, not once per follower per poll. Without a watch (disabled, or the system's
 * limit reached) followers rely on their poll.
 */
class DirectoryWatches {
  private readonly byDir = new Map<string, { watcher: fs.FSWatcher | undefined; refs: number; waiters: Set<() => void> }>();

  constructor(
    private readonly enabled: boolean,
    private readonly log: Logger,
  ) {}

  acquire(dir: string): { next(): Waiter; release(): void } {
    let entry = this.byDir.get(dir);
    if (!entry) {
      const created: { watcher: fs.FSWatcher | undefined; refs: number; waiters: Set<() => void> } = { watcher: undefined, refs: 0, waiters: new Set() };
      entry = created;
      if (this.enabled) {
        try {
          created.watcher = fs.watch(dir, { persistent: false }, () => {
            for (const wake of [...created.waiters]) wake();
          });
          created.watcher.on('error', (error) => {
            this.log.debug({ err: error, dir }, 'log directory watch failed; followers poll');
            created.watcher?.close();
            created.watcher = undefined;
          });
        } catch (error) {
          this.log.debug({ err: error, dir }, 'cannot watch the log directory; followers poll');
        }
      }
      this.byDir.set(dir, created);
    }
    const current = entry;
    current.refs++;
    let released = false;
    return {
      next: () => {
        let wake!: () => void;
        const changed = new Promise<void>((resolve) => (wake = resolve));
        current.waiters.add(wake);
        return { changed, cancel: () => current.waiters.delete(wake) };
      },
      release: () => {
        if (released) return;
        released = true;
        if (--current.refs > 0) return;
        current.watcher?.close();
        if (this.byDir.get(dir) === current) this.byDir.delete(dir);
      },
    };
  }
}

/**
 * Feeds a task's output into its log writer, holding the task back while the writer is behind (as a
 * pipe would). Unlike pipe(), output that comes after the writer ended or failed is read and dropped, so
 * a task is never blocked on a log that can no longer be written.
 */
export function forwardOutput(source: NodeJS.ReadableStream, sink: Writable): void {
  source.on('data', (chunk: Buffer) => {
    if (sink.destroyed || sink.writableEnded || sink.write(chunk)) return;
    source.pause();
    const resume = (): void => {
      sink.off('drain', resume);
      sink.off('close', resume);
      source.resume();
    };
    sink.on('drain', resume);
    sink.on('close', resume);
  });
}

/** Ends a writer and waits until its data is in the file (errors were reported by its 'error' listener). */
export async function closeWriter(writer: Writable): Promise<void> {
  if (writer.destroyed || writer.writableFinished) return;
  await new Promise<void>((resolve) => {
    writer.once('close', resolve);
    if (!writer.writableEnded) writer.end();
  });
}
