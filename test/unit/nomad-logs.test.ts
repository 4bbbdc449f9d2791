import assert from 'node:assert/strict';
import http from 'node:http';
import type net from 'node:net';
import { connectNomad } from '../../controller/scheduler/nomad-http.js';
import { FramePositions, NomadTaskLogs, parseLogFrame, type LogFrame } from '../../controller/scheduler/nomad-logs.js';
import { LOG_CHUNK_BYTES, LogNotFoundError, logPosition, type LogEvent, type LogStart } from '../../controller/scheduler/task-logs.js';
import { silentLogger } from '../../controller/util/log.js';
import { waitFor } from '../support/wait.js';

const frame = (index: number, offset: number, data: string | Buffer, fileEvent?: string): LogFrame => ({
  file: `alloc/logs/core.stdout.${index}`,
  index,
  offset,
  data: typeof data === 'string' ? Buffer.from(data) : data,
  ...(fileEvent ? { fileEvent } : {}),
});
const json = (index: number, offset: number, data: string, fileEvent?: string): string =>
  JSON.stringify({ File: `alloc/logs/core.stdout.${index}`, Offset: offset, Data: Buffer.from(data).toString('base64'), ...(fileEvent ? { FileEvent: fileEvent } : {}) });

/** Every event the positions give for the frames, in order (a reopen ends it). */
function positionsOf(from: LogStart, frames: LogFrame[]): Array<LogEvent | { reopen: LogStart }> {
  const positions = new FramePositions(from);
  const out: Array<LogEvent | { reopen: LogStart }> = [];
  for (const item of frames) {
    const step = positions.accept(item);
    if ('reopen' in step) {
      out.push(step.gap, { reopen: step.reopen });
      break;
    }
    out.push(...step.events);
  }
  return out;
}

const data = (file: number, offset: number, text: string): LogEvent => ({ kind: 'data', start: logPosition(file, offset), end: logPosition(file, offset + text.length), data: Buffer.from(text) });

describe('Nomad task logs (client fs logs API)', () => {
  describe('parseLogFrame', () => {
    it('reads data frames, file events and heartbeats', () => {
      assert.equal(parseLogFrame('{}'), undefined);
      assert.deepEqual(parseLogFrame(json(3, 10, 'héllo')), frame(3, 10, 'héllo'));
      assert.deepEqual(parseLogFrame('{"File":"alloc/logs/core.stdout.1","Offset":4,"FileEvent":"file truncated"}'), frame(1, 4, '', 'file truncated'));
    });

    it('refuses what is not a frame, with the text in the message', () => {
      for (const bad of ['[]', '"x"', '{"File":3}', '{"File":"alloc/logs/core.stdout","Data":""}', '{"File":"a.1","Offset":-1}', '{"File":"a.1","Data":7}', '{nope']) {
        assert.throws(() => parseLogFrame(bad), /log frame/, bad);
      }
    });
  });

  describe('positions of frames', () => {
    it('from the start: the oldest file from 0, a newer file from its 0, a skipped file a gap, a truncation from 0', () => {
      assert.deepEqual(positionsOf({ kind: 'start' }, [frame(1, 5, 'hello'), frame(1, 99, ' world'), frame(3, 2, 'ab'), frame(3, 2, 'x', 'file truncated')]), [
        data(1, 0, 'hello'),
        data(1, 5, ' world'),
        { kind: 'gap', from: logPosition(2, 0), to: logPosition(3, 0) },
        data(3, 0, 'ab'),
        data(3, 0, 'x'),
      ]);
    });

    it('from the end: a whole first frame tells where it began; fewer bytes than asked began at 0', () => {
      const whole = Buffer.alloc(LOG_CHUNK_BYTES, 'a');
      const [first] = positionsOf({ kind: 'tail', bytes: LOG_CHUNK_BYTES }, [frame(2, 1_000 + LOG_CHUNK_BYTES, whole)]);
      assert.equal(first !== undefined && 'kind' in first && first.kind === 'data' && first.start, logPosition(2, 1_000));
      // The frame batched a later read (Offset is the end of its first read): at most the file's start.
      assert.deepEqual(positionsOf({ kind: 'tail', bytes: LOG_CHUNK_BYTES }, [frame(0, 3, 'abcdef')]), [data(0, 0, 'abcdef')]);
    });

    it('resuming in the oldest file kept: from the offset asked for', () => {
      assert.deepEqual(positionsOf({ kind: 'position', position: logPosition(4, 7) }, [frame(4, 9, 'xy'), frame(4, 0, 'z')]), [data(4, 7, 'xy'), data(4, 9, 'z')]);
    });

    it('resuming past older files kept: their frames are dropped until the file wanted, then up to the offset', () => {
      assert.deepEqual(
        positionsOf({ kind: 'position', position: logPosition(5, 3) }, [frame(4, 3, 'old'), frame(4, 77, 'older'), frame(5, 2, 'ab'), frame(5, 9, 'cdef')]),
        [data(5, 3, 'def')],
      );
    });

    it('resuming in a file rotated away: a gap, and the read opened again at the oldest file kept', () => {
      assert.deepEqual(positionsOf({ kind: 'position', position: logPosition(2, 40) }, [frame(6, 42, 'xx')]), [
        { kind: 'gap', from: logPosition(2, 40), to: logPosition(6, 0) },
        { reopen: { kind: 'position', position: logPosition(6, 0) } },
      ]);
    });
  });

  describe('reading from a scripted agent', () => {
    let server: http.Server;
    const sockets = new Set<net.Socket>();
    let requests: URL[];
    let respond: (url: URL, res: http.ServerResponse) => void;
    let logs: NomadTaskLogs;
    let abort: AbortController;

    beforeEach(async () => {
      requests = [];
      server = http.createServer((req, res) => {
        const url = new URL(req.url ?? '/', 'http://nomad.invalid');
        requests.push(url);
        respond(url, res);
      });
      server.on('connection', (socket) => {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      abort = new AbortController();
      const { port } = server.address() as net.AddressInfo;
      const { http: api } = connectNomad({ address: `http://127.0.0.1:${port}`, token: 'secret', namespace: 'sdl', requestTimeoutMs: 5_000, signal: abort.signal });
      logs = new NomadTaskLogs({ http: api, log: silentLogger(), silenceTimeoutMs: 500 });
    });

    afterEach(async () => {
      abort.abort();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    });

    async function collect(from: LogStart, follow: boolean, until?: (events: LogEvent[]) => boolean): Promise<LogEvent[]> {
      const events: LogEvent[] = [];
      const stop = new AbortController();
      for await (const event of logs.read({ allocId: 'a-1', task: 'core', stream: 'stdout', from, follow, signal: stop.signal })) {
        events.push(event);
        if (until?.(events)) stop.abort();
      }
      return events;
    }
    const text = (events: LogEvent[]): string => events.map((event) => (event.kind === 'data' ? event.data.toString() : '')).join('');

    it('asks as Nomad wants it and reads frames written back to back, with heartbeats between', async () => {
      respond = (_url, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(`{}${json(0, 6, 'hello ')}{}${json(0, 11, 'world')}\n{}`);
      };
      const events = await collect({ kind: 'start' }, false);
      assert.deepEqual(events.slice(0, 1), [{ kind: 'opened' }]);
      assert.equal(text(events), 'hello world');
      const [url] = requests;
      assert.equal(url?.pathname, '/v1/client/fs/logs/a-1');
      assert.deepEqual(Object.fromEntries(url!.searchParams), { task: 'core', type: 'stdout', follow: 'false', plain: 'false', origin: 'start', offset: '0', namespace: 'sdl' });
    });

    it('asks for a tail from the end, at least one frame of it', async () => {
      respond = (_url, res) => {
        res.writeHead(200);
        res.end();
      };
      await collect({ kind: 'tail', bytes: 10 }, false);
      assert.equal(requests[0]?.searchParams.get('origin'), 'end');
      assert.equal(requests[0]?.searchParams.get('offset'), String(LOG_CHUNK_BYTES));
    });

    it('turns 404 and an error written after the frames into LogNotFoundError; other failures stay errors', async () => {
      respond = (_url, res) => {
        res.writeHead(404);
        res.end('task "core" not started yet. No logs available');
      };
      await assert.rejects(collect({ kind: 'start' }, false), (error: unknown) => error instanceof LogNotFoundError && /not started yet/.test(error.message));
      respond = (_url, res) => {
        res.writeHead(200);
        res.end(`${json(0, 1, 'a')}Unknown allocation "a-1"`);
      };
      await assert.rejects(collect({ kind: 'start' }, false), LogNotFoundError);
      respond = (_url, res) => {
        res.writeHead(403);
        res.end('Permission denied');
      };
      await assert.rejects(collect({ kind: 'start' }, false), /read-logs/);
      // Following, a first refusal is the answer too: only a stream that was open is taken up again.
      const before = requests.length;
      await assert.rejects(collect({ kind: 'start' }, true), /read-logs/);
      assert.equal(requests.length, before + 1);
    });

    it('following, opens the stream again from the last position when it ends or goes silent', async () => {
      respond = (url, res) => {
        res.writeHead(200);
        const attempt = requests.length;
        if (attempt === 1) res.end(json(2, 3, 'abc'));
        // The second stream stays silent: no frame, no heartbeat.
        else if (attempt === 2) res.write(json(2, 5, 'de'));
        else res.write(`${json(2, Number(url.searchParams.get('offset')) + 1, 'f')}{}`);
      };
      const events = await collect({ kind: 'start' }, true, (seen) => text(seen) === 'abcdef');
      assert.equal(text(events), 'abcdef');
      assert.deepEqual(
        requests.map((url) => [url.searchParams.get('origin'), url.searchParams.get('offset')]),
        [['start', '0'], ['start', '3'], ['start', '5']],
      );
      assert.equal(events.filter((event) => event.kind === 'opened').length, 1, 'opened once per read, not per connection');
    });

    it('stops a follow at once when its signal aborts, closing the connection', async () => {
      respond = (_url, res) => {
        res.writeHead(200);
        res.write('{}');
        const beat = setInterval(() => res.write('{}'), 50);
        res.on('close', () => clearInterval(beat));
      };
      const stop = new AbortController();
      const reading = (async () => {
        for await (const event of logs.read({ allocId: 'a-1', task: 'core', stream: 'stdout', from: { kind: 'start' }, follow: true, signal: stop.signal })) void event;
      })();
      await waitFor('the stream open', () => sockets.size > 0 && requests.length === 1);
      stop.abort();
      await reading;
      await waitFor('the connection closed', () => sockets.size === 0);
    });
  });
});
