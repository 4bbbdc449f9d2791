import assert from 'node:assert/strict';
import { controllerProbes } from '../../controller/controller/status-server.js';
import { StatusServer } from '../../controller/metrics/status-server.js';
import { ControllerHarness, testLog } from '../support/controller-harness.js';

describe('controller: status server', () => {
  let h: ControllerHarness;
  let server: StatusServer;
  afterEach(async () => {
    await server.stop();
    await h.stop();
  });

  it('answers the probes and names the leader', async () => {
    h = await ControllerHarness.embedded();
    server = new StatusServer('controller', controllerProbes(h.controller), testLog);
    const base = await server.start('127.0.0.1', 0);
    const get = async (path: string): Promise<{ status: number; body: Record<string, unknown> }> => {
      const response = await fetch(`${base}${path}`);
      return { status: response.status, body: (await response.json()) as Record<string, unknown> };
    };
    assert.deepEqual(await get('/healthz'), { status: 200, body: { ok: true } });
    assert.deepEqual(await get('/readyz'), { status: 200, body: { ready: true } });
    const { status, body } = await get('/status');
    assert.equal(status, 200);
    assert.equal(body.leading, true, 'the embedded controller always leads');
    const identity = body.identity as { host: string; pid: number };
    assert.equal(identity.pid, process.pid);
    const leader = body.leader as { host: string; pid: number; since: string };
    assert.equal(leader.pid, process.pid);
    assert.ok(!Number.isNaN(Date.parse(leader.since)));
  });
});
