import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { LogFiles, RotatingLogWriter, closeWriter } from '../../controller/scheduler/log-files.js';
import { lastLinesStart, readLastLines } from '../../controller/scheduler/log-tail.js';
import type { LogData, LogEvent } from '../../controller/scheduler/task-logs.js';
import { silentLogger } from '../../controller/util/log.js';
import { waitFor } from '../support/wait.js';

const piece = (start: number, text: string): LogData => ({ kind: 'data', start, end: start + Buffer.byteLength(text), data: Buffer.from(text) });
const textOf = (events: readonly LogEvent[]): string => events.map((event) => (event.kind === 'data' ? event.data.toString() : '')).join('');

describe('the last lines of a task log', () => {
  describe('lastLinesStart', () => {
    it('finds where the last N lines begin, a final line without its newline counting as one', () => {
      const pieces = [piece(100, 'a\nbb\n'), piece(105, 'ccc\ndd')];
      // "a\nbb\nccc\ndd": lines a, bb, ccc, dd (the last without a newline).
      assert.equal(lastLinesStart(pieces, 1), 109);
      assert.equal(lastLinesStart(pieces, 2), 105);
      assert.equal(lastLinesStart(pieces, 3), 102);
      assert.equal(lastLinesStart(pieces, 4), undefined, 'the first line may begin before the data');
      assert.equal(lastLinesStart(pieces, 0), 111);
      const ended = [piece(0, 'x\ny\n')];
      assert.equal(lastLinesStart(ended, 1), 2);
      assert.equal(lastLinesStart(ended, 2), undefined);
      assert.equal(lastLinesStart([], 3), undefined);
    });
  });

  describe('readLastLines over log files', () => {
    let root: string;
    let out: RotatingLogWriter;
    let logs: LogFiles;
    const write = (text: string): Promise<void> => new Promise((resolve, reject) => out.write(text, (error) => (error ? reject(error) : resolve())));

    beforeEach(() => {
      root = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-log-tail-'));
      // Small files: the lines asked for span several of them.
      out = new RotatingLogWriter(path.join(root, 'alloc', 'logs'), 'core.stdout', { maxFileBytes: 1_000, maxFiles: 500 });
      logs = new LogFiles({ dirOf: () => path.join(root, 'alloc', 'logs'), log: silentLogger() });
    });

    afterEach(async () => {
      await closeWriter(out);
      fs.rmSync(root, { recursive: true, force: true });
    });

    const request = { allocId: 'alloc', task: 'core', stream: 'stdout' as const };

    /** Follows the last `lines` lines in the background: the events so far, and how to stop. */
    function following(lines: number): { events: LogEvent[]; stop(): Promise<void> } {
      const abort = new AbortController();
      const events: LogEvent[] = [];
      const done = (async () => {
        for await (const event of readLastLines(logs, { ...request, lines, follow: true, signal: abort.signal })) events.push(event);
      })();
      return {
        events,
        stop: async () => {
          abort.abort();
          await done;
        },
      };
    }

    it('gives exactly the last N lines, however many files and windows they need', async () => {
      const lines = Array.from({ length: 20_000 }, (_, i) => `line ${i} ${'.'.repeat(i % 40)}`);
      await write(`${lines.join('\n')}\n`);
      for (const count of [0, 1, 7, 1_000, 5_000]) {
        const events: LogEvent[] = [];
        for await (const event of readLastLines(logs, { ...request, lines: count, follow: false })) events.push(event);
        assert.equal(events[0]?.kind, 'opened');
        assert.equal(textOf(events), count === 0 ? '' : `${lines.slice(-count).join('\n')}\n`, `${count} lines`);
      }
    });

    it('gives the whole log when it is shorter, and then follows from exactly where the lines end', async () => {
      await write('one\ntwo\n');
      const { events, stop } = following(10);
      await waitFor('the existing lines', () => textOf(events) === 'one\ntwo\n');
      await write('three\n');
      await write('four');
      await waitFor('the new lines', () => textOf(events) === 'one\ntwo\nthree\nfour');
      assert.deepEqual(events.filter((event) => event.kind === 'gap'), []);
      await stop();
    });

    it('follows from the end when asked for no lines, and from the start of a log still empty', async () => {
      await write('old\n');
      const { events, stop } = following(0);
      await waitFor('opened', () => events.length > 0);
      await write('new\n');
      await waitFor('the new line only', () => textOf(events) === 'new\n');
      await stop();
    });

    it('follows a log that ends exactly at a full file on into the next file, without a gap', async () => {
      // Fills file 0; file 1 is begun only by the next write.
      await write(`${'x'.repeat(999)}\n`);
      const { events, stop } = following(0);
      await waitFor('opened', () => events.length > 0);
      await write('next\n');
      await waitFor('the next line', () => textOf(events) === 'next\n');
      await stop();
      assert.deepEqual(events.filter((event) => event.kind === 'gap'), []);
    });
  });
});
