import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { NomadHttp } from '../../controller/scheduler/nomad-http.js';
import { ConsulStore } from '../../controller/store/consul-store.js';
import { testLog } from '../support/controller-harness.js';

/** Lists read element by element still refuse, with a clear error, an answer that is not a list of objects. */
describe('lists that cannot be understood', () => {
  let server: http.Server;
  let base: string;
  let body = '';

  before(async () => {
    server = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-consul-index': '7', 'x-nomad-index': '7' });
      res.end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  const bad = ['{"Key":"a"}', '[{"Key":"m/a","CreateIndex":1,"ModifyIndex":1}', '[{"Key":"m/a","CreateIndex":1,"ModifyIndex":1},7]', '[{"Key": nope}]'];

  it('Consul: a listing that is not a complete array of entries is a ConsulError', async () => {
    const store = new ConsulStore({ address: base, log: testLog });
    try {
      for (const text of bad) {
        body = text;
        await assert.rejects(store.list('m/'), /cannot be understood/, text);
      }
      body = '[{"Key":"m/a","Value":"eA==","CreateIndex":1,"ModifyIndex":2}]';
      assert.deepEqual((await store.list('m/')).entries.map((entry) => [entry.key, entry.value]), [['m/a', 'x']]);
    } finally {
      await store.close();
    }
  });

  it('Nomad: a list that is not a complete array is a NomadApiError naming the call', async () => {
    const api = new NomadHttp({ base: new URL(base), tls: {}, agent: new http.Agent(), requestTimeoutMs: 2_000, signal: new AbortController().signal });
    for (const text of bad) {
      body = text;
      await assert.rejects(api.list('/v1/allocations', {}, (item) => item), /GET \/v1\/allocations: Nomad answered something that cannot be understood/, text);
    }
    body = '[{"ID":"a"},{"ID":"b"}]';
    assert.deepEqual(await api.list('/v1/allocations', {}, (item) => (item as { ID: string }).ID), { items: ['a', 'b'], index: 7 });
  });
});
