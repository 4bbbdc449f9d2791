import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import * as FakeTimers from '@sinonjs/fake-timers';
import sinon from 'sinon';
import { LogFiles, RotatingLogWriter, closeWriter, forwardOutput, logFileIndexes } from '../../controller/scheduler/log-files.js';
import { LogNotFoundError, logPosition, type LogEvent, type LogStart } from '../../controller/scheduler/task-logs.js';
import { silentLogger } from '../../controller/util/log.js';
import { controllerClock } from '../support/controller-harness.js';
import { waitFor } from '../support/wait.js';

/** Follows a read in the background: every event as it comes, until stopped. */
class Follower {
  readonly events: LogEvent[] = [];
  readonly done: Promise<void>;
  private readonly abort = new AbortController();

  constructor(logs: LogFiles, allocId: string, from: LogStart, follow = true) {
    this.done = (async () => {
      for await (const event of logs.read({ allocId, task: 'core', stream: 'stdout', from, follow, signal: this.abort.signal })) this.events.push(event);
    })();
  }

  get text(): string {
    return this.events.map((event) => (event.kind === 'data' ? event.data.toString() : '')).join('');
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.done;
  }
}

async function write(writer: RotatingLogWriter, text: string): Promise<void> {
  await new Promise<void>((resolve, reject) => writer.write(text, (error) => (error ? reject(error) : resolve())));
}

async function readAll(logs: LogFiles, allocId: string, from: LogStart): Promise<LogEvent[]> {
  const events: LogEvent[] = [];
  for await (const event of logs.read({ allocId, task: 'core', stream: 'stdout', from, follow: false })) events.push(event);
  return events;
}

const textOf = (events: readonly LogEvent[]): string => events.map((event) => (event.kind === 'data' ? event.data.toString() : '')).join('');
const gapsOf = (events: readonly LogEvent[]): LogEvent[] => events.filter((event) => event.kind === 'gap');

describe('task log files (rotated like Nomad logmon, read and followed)', function () {
  let root: string;
  let writers: RotatingLogWriter[];
  let logs: LogFiles;
  const dir = (allocId: string): string => path.join(root, allocId, 'logs');
  const writer = (allocId: string, maxFileBytes: number, maxFiles: number): RotatingLogWriter => {
    const created = new RotatingLogWriter(dir(allocId), 'core.stdout', { maxFileBytes, maxFiles });
    writers.push(created);
    return created;
  };

  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-log-files-'));
    writers = [];
    logs = new LogFiles({ dirOf: (allocId) => (/^[a-z0-9-]+$/.test(allocId) ? dir(allocId) : undefined), log: silentLogger() });
  });

  afterEach(async () => {
    sinon.restore();
    await Promise.all(writers.map(closeWriter));
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('splits writes exactly at the size limit and keeps only the newest files', async () => {
    const out = writer('a1', 10, 2);
    await write(out, '0123456789abcdefghij');
    await write(out, 'ABCDEFGHIJKLMNO');
    assert.deepEqual(await logFileIndexes(dir('a1'), 'core.stdout'), [2, 3]);
    assert.equal(fs.readFileSync(path.join(dir('a1'), 'core.stdout.2'), 'utf8'), 'ABCDEFGHIJ');
    assert.equal(fs.readFileSync(path.join(dir('a1'), 'core.stdout.3'), 'utf8'), 'KLMNO');
    assert.deepEqual(out.current, { index: 3, size: 5 });
    // Opened again (a restart), it goes on in the newest file.
    await closeWriter(out);
    const again = writer('a1', 10, 2);
    await write(again, 'xyz');
    assert.equal(fs.readFileSync(path.join(dir('a1'), 'core.stdout.3'), 'utf8'), 'KLMNOxyz');
  });

  it('reads from the start, a position or the tail, with each piece at its position (file × 2^32 + offset)', async () => {
    const out = writer('a2', 10, 3);
    await write(out, 'line one\nline two\nline three\n');
    const all = await readAll(logs, 'a2', { kind: 'start' });
    assert.equal(all[0]?.kind, 'opened');
    assert.equal(textOf(all), 'line one\nline two\nline three\n');
    const data = all.filter((event) => event.kind === 'data');
    assert.deepEqual(data.map((event) => [event.start, event.end]), [
      [logPosition(0, 0), logPosition(0, 10)],
      [logPosition(1, 0), logPosition(1, 10)],
      [logPosition(2, 0), logPosition(2, 9)],
    ]);
    assert.equal(textOf(await readAll(logs, 'a2', { kind: 'position', position: logPosition(1, 4) })), 'two\nline three\n');
    assert.equal(textOf(await readAll(logs, 'a2', { kind: 'tail', bytes: 12 })), '\nline three\n');
    assert.equal(textOf(await readAll(logs, 'a2', { kind: 'tail', bytes: 1_000 })), 'line one\nline two\nline three\n');
    // Beyond the end: nothing yet (a follower would wait there).
    assert.equal(textOf(await readAll(logs, 'a2', { kind: 'position', position: logPosition(7, 0) })), '');
  });

  it('says what was rotated away before it could be read: a gap, then the oldest output kept', async () => {
    const out = writer('a3', 4, 2);
    await write(out, 'aaaabbbbccccdd');
    const events = await readAll(logs, 'a3', { kind: 'position', position: logPosition(0, 2) });
    assert.deepEqual(gapsOf(events), [{ kind: 'gap', from: logPosition(0, 2), to: logPosition(2, 0) }]);
    assert.equal(textOf(events), 'ccccdd');
  });

  it('takes the end of a full file for the start of the next: resuming there misses nothing, even once that file is gone', async () => {
    const out = writer('a8', 10, 2);
    await write(out, '0123456789');
    const [read] = (await readAll(logs, 'a8', { kind: 'start' })).filter((event) => event.kind === 'data');
    assert.equal(read?.end, logPosition(0, 10));
    // File 0 is full; the next write begins file 1, and the one after file 2, which deletes file 0.
    await write(out, 'abcdefghijKLMNO');
    const resumed = await readAll(logs, 'a8', { kind: 'position', position: logPosition(0, 10) });
    assert.equal(textOf(resumed), 'abcdefghijKLMNO');
    assert.deepEqual(gapsOf(resumed), []);
    // What was lost still shows: a place inside a deleted file, and the end of one whose successor is deleted too.
    await write(out, 'PQRSTUVWXY');
    assert.deepEqual(gapsOf(await readAll(logs, 'a8', { kind: 'position', position: logPosition(1, 9) })), [
      { kind: 'gap', from: logPosition(1, 9), to: logPosition(2, 0) },
    ]);
    assert.deepEqual(gapsOf(await readAll(logs, 'a8', { kind: 'position', position: logPosition(0, 10) })), [
      { kind: 'gap', from: logPosition(0, 10), to: logPosition(2, 0) },
    ]);
  });

  it('follows a log as it is written, across rotations, missing nothing written while it reads', async () => {
    const out = writer('a4', 64, 1_000);
    await write(out, 'first\n');
    const follower = new Follower(logs, 'a4', { kind: 'start' });
    await waitFor('the first line', () => follower.text === 'first\n');
    let expected = 'first\n';
    for (let line = 0; line < 200; line++) {
      const text = `line ${line} ${'x'.repeat(line % 17)}\n`;
      expected += text;
      await write(out, text);
    }
    await waitFor('every line', () => follower.text === expected);
    assert.deepEqual(gapsOf(follower.events), []);
    // Each piece begins where the one before ended, or at the start of the next file.
    const data = follower.events.filter((event) => event.kind === 'data');
    for (let i = 1; i < data.length; i++) {
      const [previous, current] = [data[i - 1]!, data[i]!];
      assert.ok(current.start === previous.end || (current.start % 2 ** 32 === 0 && previous.end % 2 ** 32 === 64), `${previous.end} → ${current.start}`);
    }
    await follower.stop();
  });

  it('follows by polling on the given clock when change notifications are off', async () => {
    const clock = FakeTimers.createClock();
    const polling = new LogFiles({ dirOf: dir, log: silentLogger(), watch: false, clock: controllerClock(clock), pollMs: 500 });
    const out = writer('a5', 1_000, 2);
    await write(out, 'one\n');
    const follower = new Follower(polling, 'a5', { kind: 'start' });
    await waitFor('the first line', () => follower.text === 'one\n');
    await write(out, 'two\n');
    // Nothing wakes it but the clock: the file is looked at again only after the poll interval.
    await waitFor('the follower waiting for its next poll', () => clock.countTimers() > 0);
    assert.equal(follower.text, 'one\n');
    await clock.tickAsync(499);
    assert.equal(follower.text, 'one\n');
    await clock.tickAsync(1);
    await waitFor('the second line after the poll', () => follower.text === 'one\ntwo\n');
    await follower.stop();
  });

  it('answers LogNotFoundError for an unknown allocation, task or stream', async () => {
    writer('a6', 100, 1);
    await assert.rejects(readAll(logs, 'nope', { kind: 'start' }), LogNotFoundError);
    await assert.rejects(readAll(logs, '../etc', { kind: 'start' }), LogNotFoundError);
    await assert.rejects(
      (async () => {
        for await (const event of logs.read({ allocId: 'a6', task: 'hmi', stream: 'stdout', from: { kind: 'start' }, follow: false })) void event;
      })(),
      /no stdout log/,
    );
  });

  it('drops the output that finds the disk full and writes again once there is room, saying how much it dropped', async () => {
    const out = writer('a9', 8, 3);
    const events: unknown[] = [];
    out.on('dropping', (error: NodeJS.ErrnoException) => events.push(['dropping', error.code]));
    out.on('resumed', (bytes: number) => events.push(['resumed', bytes]));
    await write(out, 'before|!');
    const full = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    // The first file is full: the next write rotates, then finds no room.
    const write$ = sinon.stub(fs, 'write').callsFake(((...args: unknown[]) => (args.at(-1) as (error: Error) => void)(full)) as unknown as typeof fs.write);
    await write(out, 'lost');
    await write(out, 'lost too');
    write$.restore();
    await write(out, '|after');
    assert.deepEqual(events, [['dropping', 'ENOSPC'], ['resumed', 12]]);
    assert.ok(!out.destroyed);
    const text = textOf(await readAll(logs, 'a9', { kind: 'start' }));
    assert.equal(text, 'before|!|after');
    assert.deepEqual(await logFileIndexes(dir('a9'), 'core.stdout'), [0, 1]);
  });

  it('holds a writing task back while the writer is behind, and drops what comes after it ended', async () => {
    const out = writer('a7', 1_000_000, 1);
    const source = new PassThrough();
    forwardOutput(source, out);
    for (let i = 0; i < 100; i++) source.write(`${i}\n`);
    await waitFor('the output in the file', () => fs.readFileSync(path.join(dir('a7'), 'core.stdout.0'), 'utf8').endsWith('99\n'));
    await closeWriter(out);
    source.write('after the end\n');
    source.end();
    assert.ok(!fs.readFileSync(path.join(dir('a7'), 'core.stdout.0'), 'utf8').includes('after'));
  });
});
