import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { Session } from '../../controller/api/types.js';
import { Frontend } from '../../controller/frontend/server.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { frontendKeys as keys, testFrontend } from '../support/frontend.js';
import { freePort } from '../support/ports.js';
import { waitFor } from '../support/wait.js';


/**
 * The status stream behind a real HAProxy in HTTP mode, as front ends are deployed (several replicas
 * behind a proxy): every event must pass through at once, not be buffered until the response ends.
 */
describe('front end: the status stream through HAProxy', () => {
  let store: EmbeddedStore;
  let frontend: Frontend;
  let haproxy: ChildProcess;
  let dir: string;
  let proxied: string;

  before(async () => {
    store = EmbeddedStore.open(':memory:');
    frontend = testFrontend(store, { sessionsPerUser: 1 });
    const direct = new URL(await frontend.start('127.0.0.1', 0));
    const port = await freePort();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-sse-haproxy-'));
    const config = path.join(dir, 'haproxy.cfg');
    fs.writeFileSync(
      config,
      [
        'defaults',
        '  mode http',
        '  timeout connect 5s',
        '  timeout client 60s',
        '  timeout server 60s',
        'frontend api',
        `  bind 127.0.0.1:${port}`,
        '  default_backend frontends',
        'backend frontends',
        `  server frontend-1 127.0.0.1:${direct.port}`,
        '',
      ].join('\n'),
    );
    haproxy = spawn('haproxy', ['-db', '-f', config], { stdio: 'ignore' });
    proxied = `http://127.0.0.1:${port}`;
    await waitFor('HAProxy answering', () => new Promise<boolean>((resolve) => http.get(`${proxied}/healthz`, (res) => resolve(res.statusCode === 200)).on('error', () => resolve(false))));
  });

  after(async () => {
    haproxy.kill('SIGTERM');
    await frontend.stop();
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('delivers each change as it happens', async () => {
    const created = await frontend.app.inject({ method: 'POST', url: '/api/v1/sessions', headers: { 'content-type': 'application/json', 'x-manticore-user': 'ann' }, payload: { template: 'demo' } });
    const id = (JSON.parse(created.body) as Session).metadata.id;
    const phases: string[] = [];
    const request = http.get(`${proxied}/api/v1/sessions/${id}/events`, { headers: { 'x-manticore-user': 'ann' } }, (response) => {
      assert.equal(response.headers['content-type'], 'text/event-stream; charset=utf-8');
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        for (const match of chunk.matchAll(/"phase":"([A-Za-z]+)"/g)) phases.push(match[1]!);
      });
    });
    try {
      await waitFor('the first event through the proxy', () => phases.length === 1);
      for (const phase of ['Waiting', 'Starting', 'Ready']) {
        await store.put(keys.status(id), JSON.stringify({ phase, observedGeneration: 1, conditions: [], endpoints: {}, events: [] }));
        await waitFor(`${phase} through the proxy`, () => phases.at(-1) === phase);
      }
      assert.deepEqual(phases, ['Pending', 'Waiting', 'Starting', 'Ready']);
    } finally {
      request.destroy();
    }
  });
});
