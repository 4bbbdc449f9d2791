import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import sinon from 'sinon';
import { NomadHttp } from '../../controller/scheduler/nomad-http.js';
import { ConsulStore } from '../../controller/store/consul-store.js';
import { JsonArraySplitter } from '../../controller/util/http-body.js';
import { testLog } from '../support/controller-harness.js';
import { turnsUntil } from '../support/wait.js';

const REQUEST_TIMEOUT_MS = 1_000;

/**
 * A long listing read by a busy process takes longer than the request timeout; as long as it keeps coming it
 * is read whole (cut at a fixed deadline and read again from the start, it might never finish). The server
 * sends the listing element by element when told; the clients' clock is fake, so the pauses are exact.
 */
describe('lists that take longer than the request timeout to arrive', () => {
  let server: http.Server;
  let base: string;
  let answer: http.ServerResponse | undefined;
  let clock: sinon.SinonFakeTimers;
  let chunksRead: sinon.SinonSpy;

  beforeEach(async () => {
    answer = undefined;
    server = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-consul-index': '7', 'x-nomad-index': '7' });
      res.write('[');
      answer = res;
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    // setImmediate stays real: the test waits on it for the client to have read what the server sent.
    clock = sinon.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], shouldClearNativeTimers: true });
    chunksRead = sinon.spy(JsonArraySplitter.prototype, 'write');
  });
  afterEach(async () => {
    chunksRead.restore();
    clock.restore();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  /**
   * Sends `elements` one at a time, each after a pause just short of the timeout, the client reading each; then
   * what `reading` (the client's call) settled with. A client that gave up meanwhile settles it early.
   */
  async function sendSlowly<T>(reading: Promise<T>, elements: readonly string[]): Promise<T> {
    let settled = false;
    reading.then(
      () => (settled = true),
      () => (settled = true),
    );
    await turnsUntil(() => answer !== undefined && chunksRead.callCount >= 1);
    for (const [n, element] of elements.entries()) {
      clock.tick(REQUEST_TIMEOUT_MS - 1);
      const before = chunksRead.callCount;
      answer!.write(`${n === 0 ? '' : ','}${element}`);
      await turnsUntil(() => settled || chunksRead.callCount > before);
      if (settled) break;
    }
    answer!.end(']');
    return reading;
  }

  it('Consul: reads a listing that keeps coming for five times the request timeout', async () => {
    const store = new ConsulStore({ address: base, log: testLog, requestTimeoutMs: REQUEST_TIMEOUT_MS });
    try {
      const entries = ['a', 'b', 'c', 'd', 'e'].map((key, n) => JSON.stringify({ Key: `m/${key}`, Value: 'eA==', CreateIndex: n + 1, ModifyIndex: n + 1 }));
      const listing = await sendSlowly(store.list('m/'), entries);
      assert.deepEqual(listing.entries.map((entry) => entry.key), ['m/a', 'm/b', 'm/c', 'm/d', 'm/e']);
    } finally {
      await store.close();
    }
  });

  it('Nomad: reads a list that keeps coming for five times the request timeout', async () => {
    const api = new NomadHttp({ base: new URL(base), tls: {}, agent: new http.Agent(), requestTimeoutMs: REQUEST_TIMEOUT_MS, signal: new AbortController().signal });
    const list = await sendSlowly(
      api.list('/v1/allocations', {}, (item) => (item as { ID: string }).ID),
      ['a', 'b', 'c', 'd', 'e'].map((id) => JSON.stringify({ ID: id })),
    );
    assert.deepEqual(list, { items: ['a', 'b', 'c', 'd', 'e'], index: 7 });
  });

  it('Nomad: gives up on a list that stops coming, saying so', async () => {
    const api = new NomadHttp({ base: new URL(base), tls: {}, agent: new http.Agent(), requestTimeoutMs: REQUEST_TIMEOUT_MS, signal: new AbortController().signal });
    const list = assert.rejects(api.list('/v1/allocations', {}, (item) => item), /GET \/v1\/allocations: stopped answering for 1000 ms/);
    await turnsUntil(() => answer !== undefined && chunksRead.callCount >= 1);
    clock.tick(REQUEST_TIMEOUT_MS - 1);
    answer!.write(JSON.stringify({ ID: 'a' }));
    await turnsUntil(() => chunksRead.callCount >= 2);
    clock.tick(REQUEST_TIMEOUT_MS);
    await list;
  });
});
