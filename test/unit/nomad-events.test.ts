import assert from 'node:assert/strict';
import http from 'node:http';
import type net from 'node:net';
import type { Counter } from 'prom-client';
import { registry } from '../../controller/metrics/metrics.js';
import { followEvents, type EventSink, type EventTable, type NomadEvent } from '../../controller/scheduler/nomad-events.js';
import { NomadHttp } from '../../controller/scheduler/nomad-http.js';
import { silentLogger } from '../../controller/util/log.js';
import { waitFor } from '../support/wait.js';

/**
 * The event stream protocol against a scripted server (loopback): what is held while listing and what is
 * applied after, and every way a stream is given up and started over.
 */

/** Answers the n-th subscription (0-based) with `script(n, res)`. */
async function scriptedNomad(script: (n: number, res: http.ServerResponse) => void): Promise<{ address: string; subscriptions: () => number; stop(): Promise<void> }> {
  let count = 0;
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    if (!req.url?.startsWith('/v1/event/stream')) {
      res.writeHead(404).end();
      return;
    }
    script(count++, res);
  });
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    address: `http://127.0.0.1:${port}`,
    subscriptions: () => count,
    stop: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The stream's restarts counted so far in manticore_watch_restarts_total. */
async function streamRestarts(): Promise<number> {
  const { values } = await (registry.getSingleMetric('manticore_watch_restarts_total') as Counter).get();
  return values.find(({ labels }) => labels.resource === 'nomad-events')?.value ?? 0;
}

const frame = (index: number, ...topics: string[]): string =>
  JSON.stringify({ Index: index, Events: topics.map((topic) => ({ Topic: topic, Type: 'Test', Key: `${topic}-${index}`, Namespace: 'default', FilterKeys: null, Index: index, Payload: {} })) });

class RecordingSink implements EventSink {
  readonly applied: Array<{ index: number; keys: string[] }> = [];
  readonly failures: string[] = [];
  syncs = 0;
  constructor(private readonly lists: Record<EventTable, number>) {}
  resync(): Promise<Record<EventTable, number>> {
    return Promise.resolve(this.lists);
  }
  apply(index: number, events: readonly NomadEvent[]): void {
    this.applied.push({ index, keys: events.map((event) => event.key) });
  }
  synced(): void {
    this.syncs++;
  }
  failed(error: Error): void {
    this.failures.push(error.message);
  }
}

describe("following Nomad's event stream", function () {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  function follow(address: string, sink: EventSink, heartbeatMs = 30_000): void {
    const abort = new AbortController();
    const agent = new http.Agent({ keepAlive: true });
    const api = new NomadHttp({ base: new URL(address), tls: {}, agent, requestTimeoutMs: 2_000, signal: abort.signal });
    const following = followEvents({ http: api, sink, log: silentLogger(), heartbeatMs, openTimeoutMs: 2_000, signal: abort.signal });
    cleanups.push(async () => {
      abort.abort();
      await following;
      agent.destroy();
    });
  }

  it("applies, after the lists, the frames newer than their table's list, in order", async function () {
    const nomad = await scriptedNomad((_, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write(['{}', frame(5, 'Job'), frame(12, 'Allocation'), frame(12, 'Job'), frame(20, 'Node', 'Evaluation')].map((line) => `${line}\n`).join(''));
    });
    cleanups.push(() => nomad.stop());
    const sink = new RecordingSink({ jobs: 10, allocations: 15, evaluations: 0, nodes: 0 });
    follow(nomad.address, sink);
    await waitFor('every frame', () => sink.applied.length === 4);
    assert.deepEqual(sink.applied, [
      { index: 5, keys: [] },
      { index: 12, keys: [] },
      { index: 12, keys: ['Job-12'] },
      { index: 20, keys: ['Node-20', 'Evaluation-20'] },
    ]);
    assert.equal(sink.syncs, 1);
    assert.deepEqual(sink.failures, []);
  });

  it('starts over, subscribing and listing again, when access is denied, the index goes backwards, a line is not JSON, the stream ends or goes silent', async function () {
    const scripts: Array<(res: http.ServerResponse) => void> = [
      (res) => res.writeHead(500).end('Permission denied'),
      (res) => res.writeHead(200).write(`{}\n${frame(10, 'Job')}\n${frame(9, 'Job')}\n`),
      (res) => res.writeHead(200).write('{}\nPermission denied\n'),
      (res) => res.writeHead(200).end('{}\n'),
      // Silent after its first heartbeat.
      (res) => res.writeHead(200).write('{}\n'),
    ];
    const beats: NodeJS.Timeout[] = [];
    let healthyBeats = 0;
    const nomad = await scriptedNomad((n, res) => {
      const script = scripts[n];
      if (script) return script(res);
      // Healthy from then on: a heartbeat every 50 ms.
      res.writeHead(200).write('{}\n');
      beats.push(setInterval(() => {
        healthyBeats++;
        res.write('{}\n');
      }, 50));
    });
    cleanups.push(async () => {
      for (const beat of beats) clearInterval(beat);
      await nomad.stop();
    });
    let healthySyncs = 0;
    const sink = new (class extends RecordingSink {
      override synced(): void {
        if (nomad.subscriptions() === 6) healthySyncs++;
      }
    })({ jobs: 0, allocations: 0, evaluations: 0, nodes: 0 });
    const restartsBefore = await streamRestarts();
    follow(nomad.address, sink, 50);
    await waitFor('synced on a sixth subscription', () => healthySyncs === 1);
    assert.equal(sink.failures.length, 5);
    assert.equal((await streamRestarts()) - restartsBefore, 5, 'each start-over is counted, so a stream that keeps dropping shows on a dashboard');
    const [denied, backwards, garbled, ended, silent] = sink.failures;
    assert.match(denied ?? '', /Permission denied \(the event stream needs read-job in the namespace and node read\)/);
    assert.match(backwards ?? '', /index went backwards \(10 → 9\)/);
    assert.match(garbled ?? '', /not JSON: Permission denied/);
    assert.match(ended ?? '', /ended the event stream/);
    assert.match(silent ?? '', /sent nothing, not even a heartbeat, for 3 heartbeat intervals \(150 ms\)/);
    // Many heartbeat intervals later, the stream that sends its heartbeats is still the one followed.
    await waitFor('ten heartbeats', () => healthyBeats >= 10);
    assert.equal(nomad.subscriptions(), 6);
    assert.equal(sink.failures.length, 5);
  });
});
