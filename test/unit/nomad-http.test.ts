import assert from 'node:assert/strict';
import http from 'node:http';
import type net from 'node:net';
import { registry } from '../../controller/metrics/metrics.js';
import { connectNomad, NomadApiError } from '../../controller/scheduler/nomad-http.js';

/** How many calls of `operation` the backend metrics counted with `outcome`. */
async function counted(operation: string, outcome: string): Promise<number> {
  const metric = await registry.getSingleMetric('manticore_backend_requests_total')?.get();
  const value = metric?.values.find((v) => v.labels.backend === 'nomad' && v.labels.operation === operation && v.labels.outcome === outcome);
  return value?.value ?? 0;
}

describe('nomad-http: a call abandoned by its caller', () => {
  let server: http.Server;
  let agent: http.Agent;
  const closing = new AbortController();
  /** Requests received, each with a promise of its connection closing; none is ever answered. */
  const received: Array<{ method: string; url: string; closed: Promise<void> }> = [];
  let arrived: () => void;

  beforeEach(async () => {
    received.length = 0;
    server = http.createServer((req) => {
      received.push({ method: req.method ?? '', url: req.url ?? '', closed: new Promise((resolve) => req.socket.once('close', () => resolve())) });
      arrived();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  });
  afterEach(async () => {
    agent.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('aborts the request on its way when the signal aborts, and sends it no second time', async () => {
    const { port } = server.address() as net.AddressInfo;
    const connection = connectNomad({ address: `http://127.0.0.1:${port}`, requestTimeoutMs: 60_000, signal: closing.signal });
    agent = connection.agent;
    const before = await counted('PUT /v1/jobs', 'aborted');
    const onItsWay = new Promise<void>((resolve) => (arrived = resolve));
    const term = new AbortController();
    const call = connection.http.json('PUT', '/v1/jobs', {}, { Job: { ID: 'manticore-a' } }, term.signal);
    await onItsWay;
    term.abort();
    await assert.rejects(call, (error: unknown) => error instanceof NomadApiError && error.status === 0);
    // The connection is closed, not left to deliver an answer, and nothing else reached Nomad.
    await received[0]!.closed;
    assert.deepEqual(
      received.map(({ method, url }) => `${method} ${url}`),
      ['PUT /v1/jobs'],
    );
    assert.equal(await counted('PUT /v1/jobs', 'aborted'), before + 1, 'counted as aborted, not as Nomad unreachable');
  });
});
