import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Session } from '../../controller/api/types.js';
import type { EdgeTlsStatus } from '../../controller/router/edge-tls.js';
import { TestCa } from '../support/certificates.js';
import { httpRequest, jsonRequest, tcpConversation, websocketEcho } from '../support/http.js';
import { isolatedEnvironment, startManticore, stopManticore, waitForFrontend, type ManticoreProcess } from '../support/manticore.js';
import { freePort } from '../support/ports.js';
import { waitFor } from '../support/wait.js';

/**
 * `manticore up` with the TLS example configuration (manifests/examples/tls.yaml) and a certificate made by
 * hack/local-tls.sh: a session's every address is https, wss or TLS over TCP, and each works for a client that
 * verifies the certificate against that CA alone.
 */
describe('end to end: `manticore up` with TLS at the edge', function () {
  this.timeout(120_000);
  let stateDir: string;
  let api: string;
  let httpPort: number;
  let httpsPort: number;
  let routerStatus: string;
  let ca: Buffer;
  let instance: ManticoreProcess;

  before(async () => {
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-e2e-tls-'));
    const certificate = await new TestCa(path.join(stateDir, 'tls')).issue(['*.sessions.localhost', 'sessions.localhost', 'localhost']);
    ca = fs.readFileSync(certificate.caFile);
    const isolated = await isolatedEnvironment(stateDir, 3);
    ({ api, httpPort } = isolated);
    httpsPort = await freePort();
    routerStatus = `http://127.0.0.1:${isolated.statusPorts.router}/status`;
    const env = {
      ...process.env,
      ...isolated.env,
      MANTICORE_TLS_CERT_FILE: certificate.certFile,
      MANTICORE_TLS_KEY_FILE: certificate.keyFile,
      MANTICORE_HTTPS_PORT: String(httpsPort),
    };
    instance = startManticore('manifests/examples/tls.yaml', env);
    await waitForFrontend(api, instance);
  });

  after(async () => {
    await stopManticore(instance);
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it('hands out https, wss and tls:// addresses that work through HAProxy for a verifying client', async () => {
    const user = { 'x-manticore-user': 'alice' };
    const { status, body: created } = await jsonRequest<Session>(`${api}/api/v1/sessions`, 'POST', { template: 'demo' }, user);
    assert.equal(status, 201, JSON.stringify(created));
    const session = await waitFor(
      'the session to be Ready',
      async () => {
        const { body } = await jsonRequest<Session>(`${api}/api/v1/sessions/${created.metadata.id}`, 'GET', undefined, user);
        if (body.status.phase === 'Failed') throw new Error(`session failed: ${JSON.stringify(body.status)}`);
        return body.status.phase === 'Ready' ? body : undefined;
      },
      30_000,
      50,
    );
    const { hmi, broker, tcp } = session.status.endpoints;
    assert.match(hmi!.url, new RegExp(`^https://[a-z2-7]{26}\\.sessions\\.localhost:${httpsPort}/$`));
    assert.match(broker!.url, new RegExp(`^wss://[a-z2-7]{26}\\.sessions\\.localhost:${httpsPort}/$`));
    assert.match(tcp!.url, /^tls:\/\/localhost:\d+$/);
    assert.deepEqual([hmi!.tls, broker!.tls, tcp!.tls], [true, true, true]);

    const page = await httpRequest(hmi!.url, { ca });
    assert.equal(page.status, 200);
    assert.match(page.body, /Manticore demo HMI/);
    assert.equal(await websocketEcho(broker!.url, 'ping', ca), 'ping');
    assert.deepEqual(await tcpConversation(tcp!.url, 'hello', ca), { greeting: 'manticore demo core 8.2.0', reply: 'hello' });

    // The same session's plain address only redirects to its https one.
    const plain = hmi!.url.replace('https:', 'http:').replace(`:${httpsPort}/`, `:${httpPort}/`);
    const redirect = await httpRequest(plain);
    assert.equal(redirect.status, 301);
    assert.equal(redirect.headers.location, hmi!.url);

    const tls = (await jsonRequest<{ tls: EdgeTlsStatus }>(routerStatus, 'GET')).body.tls;
    assert.equal(tls.state, 'valid');
    assert.deepEqual(tls.names, ['DNS:*.sessions.localhost', 'DNS:sessions.localhost', 'DNS:localhost']);
  });
});
