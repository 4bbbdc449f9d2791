import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { WebSocket, type WebSocketServer } from 'ws';
import { registry } from '../../controller/metrics/metrics.js';
import { HaproxyDataPlane } from '../../controller/router/data-plane.js';
import { EdgeTls, haproxyCertificateLoader, loadEdgeCertificate, type EdgeCertificate } from '../../controller/router/edge-tls.js';
import { runPaths } from '../../controller/router/haproxy-config.js';
import { HaproxyProcess } from '../../controller/router/haproxy-process.js';
import { HaproxyRuntime } from '../../controller/router/haproxy-runtime.js';
import { writeFileAtomic } from '../../controller/util/files.js';
import { silentLogger } from '../../controller/util/log.js';
import { closeServer, httpBackend, tcpEchoBackend, type Backend } from '../support/backends.js';
import { replaceFile, TestCa, weakRsaCertificate, type TestCertificate } from '../support/certificates.js';
import { httpRequest, loopbackLookup, websocketEcho } from '../support/http.js';
import { startHaproxyOnFreePorts } from '../support/haproxy.js';
import { freePort, freePortRange } from '../support/ports.js';
import { waitFor } from '../support/wait.js';

// TLS at the edge through the real HAProxy: certificates made at test time by hack/local-tls.sh, clients that
// verify them against that CA only, every connection to loopback (session names resolve to 127.0.0.1).

const TEMPLATE = fs.readFileSync(path.resolve(__dirname, '../../../manifests/haproxy/haproxy.cfg'), 'utf8');
const DOMAIN = 'sessions.localhost';
const HOST = `alpha.${DOMAIN}`;

/** The certificate a new TLS handshake on `port` is shown, verified against `ca` for `servername`. */
function peerCertificate(port: number, servername: string, ca: Buffer): Promise<tls.PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ca }, () => {
      resolve(socket.getPeerCertificate());
      socket.end();
    });
    socket.setTimeout(5000, () => socket.destroy(new Error('TLS handshake timed out')));
    socket.once('error', reject);
  });
}

/** Sends `payload` over TLS to a TCP port and resolves with what comes back (as much as was sent). */
function tlsExchange(port: number, servername: string, ca: Buffer, payload: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let data = '';
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ca }, () => socket.write(payload));
    socket.setEncoding('utf8');
    socket.setTimeout(5000, () => socket.destroy(new Error('timed out')));
    socket.on('data', (chunk: string) => {
      data += chunk;
      if (data.length >= payload.length) {
        socket.end();
        resolve(data);
      }
    });
    socket.once('error', reject);
    socket.once('close', () => reject(new Error(`closed after ${JSON.stringify(data)}`)));
  });
}

/** An open WSS connection whose echoes the test reads one by one. */
async function openWss(url: string, ca: Buffer): Promise<{ socket: WebSocket; echo: (message: string) => Promise<string> }> {
  const socket = new WebSocket(url, { lookup: loopbackLookup, ca, handshakeTimeout: 5000 });
  await new Promise<void>((resolve, reject) => {
    socket.once('open', () => resolve());
    socket.once('error', reject);
  });
  const echo = (message: string): Promise<string> =>
    new Promise((resolve, reject) => {
      socket.once('message', (data) => resolve(String(data)));
      socket.once('close', () => reject(new Error('the websocket closed')));
      socket.send(message);
    });
  return { socket, echo };
}

describe('TLS at the edge (real haproxy)', function () {
  this.timeout(60_000);

  let dir: string;
  let runDir: string;
  let ca: Buffer;
  let first: TestCertificate;
  let second: TestCertificate;
  let third: TestCertificate;
  let live: { certFile: string; keyFile: string };
  let httpPort: number;
  let httpsPort: number;
  let tcpRange: { start: number; end: number };
  let backend: Backend & { wss: WebSocketServer };
  let echo: Backend;
  let proc: HaproxyProcess;
  let dataPlane: HaproxyDataPlane;
  let runtime: HaproxyRuntime;
  let edge: EdgeTls;

  const fingerprintOf = async (certificate: TestCertificate): Promise<string> => (await loadEdgeCertificate(certificate, DOMAIN)).fingerprint256;
  const servedFingerprint = async (port = httpsPort, servername = HOST): Promise<string> => (await peerCertificate(port, servername, ca)).fingerprint256;
  const reload = (): Promise<void> => dataPlane.replaceWorker(() => proc.reload(proc.currentConfig!));

  before(async () => {
    dir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'manticore-tls-'));
    runDir = path.join(dir, 'run');
    const testCa = new TestCa(path.join(dir, 'ca'));
    // The front end's name (localhost) on the same certificate, as hack/local-tls.sh makes it; the TCP ports are reached by it.
    [first, second, third] = [await testCa.issue([`*.${DOMAIN}`, 'localhost']), await testCa.issue([`*.${DOMAIN}`, 'localhost']), await testCa.issue([`*.${DOMAIN}`, 'localhost'])];
    ca = fs.readFileSync(testCa.caFile);
    fs.mkdirSync(path.join(dir, 'live'));
    live = { certFile: path.join(dir, 'live', 'cert.pem'), keyFile: path.join(dir, 'live', 'key.pem') };
    fs.copyFileSync(first.certFile, live.certFile);
    fs.copyFileSync(first.keyFile, live.keyFile);

    edge = new EdgeTls({
      files: live,
      domain: DOMAIN,
      router: 'tls-test',
      installedPath: runPaths(runDir).tlsCertificate,
      expiryWarningMs: 21 * 86_400_000,
      log: silentLogger(),
      debounceMs: 50,
    });
    await edge.install();
    [backend, echo] = await Promise.all([httpBackend('A'), tcpEchoBackend()]);
    proc = await startHaproxyOnFreePorts(async () => {
      [httpPort, httpsPort, tcpRange] = [await freePort(), await freePort(), await freePortRange(3)];
      return new HaproxyProcess({
        runDir,
        template: TEMPLATE,
        values: {
          httpBind: `127.0.0.1:${httpPort}`,
          httpsBind: `127.0.0.1:${httpsPort}`,
          httpsPortSuffix: `:${httpsPort}`,
          tcpBind: `127.0.0.1:${tcpRange.start}-${tcpRange.end}`,
          tcpTls: true,
          hstsMaxAge: 600,
          maxconn: 2000,
          hardStopAfter: '10s',
        },
        log: silentLogger(),
        gracefulStopMs: 2000,
      });
    });
    runtime = new HaproxyRuntime(proc.adminSocket);
    dataPlane = new HaproxyDataPlane({ runtime, runDir, log: silentLogger(), tcpPorts: tcpRange });
    await dataPlane.apply({ hosts: new Map([['alpha', backend.address]]), ports: new Map([[tcpRange.start, echo.address]]) });
    edge.watch(haproxyCertificateLoader(runtime, reload, silentLogger()));
  });

  after(async () => {
    edge?.stop();
    await proc?.stop();
    backend?.wss.close();
    await Promise.all([backend, echo].filter(Boolean).map((b) => closeServer(b.server)));
    await fs.promises.rm(dir, { recursive: true, force: true });
  });

  it('serves a session over HTTPS to a client that verifies the certificate for the session’s name', async () => {
    const answer = await httpRequest(`https://${HOST}:${httpsPort}/x?y=1`, { ca });
    assert.equal(answer.status, 200);
    assert.equal(answer.body, 'A /x?y=1');
    assert.equal(answer.headers['strict-transport-security'], 'max-age=600');
    assert.equal(answer.headers['x-seen-proto'], 'https', 'the workload is told the client used HTTPS');
    // HAProxy's own answers carry HSTS too.
    const unknown = await httpRequest(`https://nosuch.${DOMAIN}:${httpsPort}/`, { ca });
    assert.equal(unknown.status, 404);
    assert.equal(unknown.headers['strict-transport-security'], 'max-age=600');
    // The verification is real: without the test CA, or for a name the certificate does not cover, it fails.
    await assert.rejects(httpRequest(`https://${HOST}:${httpsPort}/`), /self.signed|unable to (get|verify)/i);
    const other = await new TestCa(path.join(dir, 'other-ca')).issue([`*.${DOMAIN}`]);
    await assert.rejects(httpRequest(`https://${HOST}:${httpsPort}/`, { ca: fs.readFileSync(other.caFile) }), /unable to (get|verify)|self.signed/i);
    await assert.rejects(peerCertificate(httpsPort, 'alpha.elsewhere.test', ca), (error: NodeJS.ErrnoException) => error.code === 'ERR_TLS_CERT_ALTNAME_INVALID');
  });

  it('carries a websocket over WSS', async () => {
    assert.equal(await websocketEcho(`wss://${HOST}:${httpsPort}/socket`, 'hello', ca), 'A:hello');
  });

  it('redirects plain HTTP to HTTPS with the path and query kept, and answers the health check in plain HTTP', async () => {
    const redirected = await httpRequest(`http://${HOST}:${httpPort}/x?y=1`);
    assert.equal(redirected.status, 301);
    assert.equal(redirected.headers.location, `https://${HOST}:${httpsPort}/x?y=1`);
    assert.equal(redirected.headers['strict-transport-security'], undefined, 'HSTS only over HTTPS');
    // Every host: a plain request never reaches a session, known or not.
    assert.equal((await httpRequest(`http://nosuch.${DOMAIN}:${httpPort}/`)).status, 301);
    const health = await httpRequest(`http://127.0.0.1:${httpPort}/haproxy-health`);
    assert.equal(health.status, 200);
    assert.equal(health.headers.location, undefined);
  });

  it('speaks TLS on the session TCP ports and forwards plain TCP to the workload', async () => {
    assert.equal(await tlsExchange(tcpRange.start, 'localhost', ca, 'hello over tls\n'), 'hello over tls\n');
    // A port with no route is refused before any handshake.
    await assert.rejects(tlsExchange(tcpRange.start + 1, 'localhost', ca, 'x'), /ECONNRESET|socket disconnected|closed/);
  });

  it('swaps the certificate under an open WSS connection: it keeps talking, new handshakes get the new one', async () => {
    const [before, after] = [await fingerprintOf(first), await fingerprintOf(second)];
    assert.equal(await servedFingerprint(), before);
    const open = await openWss(`wss://${HOST}:${httpsPort}/socket`, ca);
    try {
      assert.equal(await open.echo('before'), 'A:before');
      // As a renewer does it: the new key, then the new certificate, each renamed into place.
      replaceFile(live.keyFile, second.keyFile);
      replaceFile(live.certFile, second.certFile);
      await waitFor('new handshakes to see the new certificate', async () => (await servedFingerprint()) === after);
      assert.equal(await servedFingerprint(tcpRange.start, 'localhost'), after, 'the TCP ports serve it too');
      for (let i = 0; i < 5; i++) assert.equal(await open.echo(`after ${i}`), `A:after ${i}`);
      assert.equal(open.socket.readyState, WebSocket.OPEN);
    } finally {
      open.socket.close();
    }
    assert.equal(proc.reloads, 0, 'through the runtime API, without a reload');
    assert.equal(edge.status()?.lastChange?.outcome, 'runtime');
    assert.equal((await runtime.showSslCert(runPaths(runDir).tlsCertificate)).Serial, (await loadEdgeCertificate(second, DOMAIN)).serialNumber);
    assert.equal(fs.readFileSync(runPaths(runDir).tlsCertificate, 'utf8'), edge.certificate!.pem, 'a restart would load it');
  });

  it('refuses a bad replacement: the certificate in use keeps being served', async () => {
    const served = await servedFingerprint();
    replaceFile(live.keyFile, third.keyFile); // the key of another certificate
    await waitFor('the refusal', () => edge.status()?.lastChange?.outcome === 'refused');
    assert.match(edge.status()!.lastChange!.message!, /does not belong to the certificate/);
    assert.equal(await servedFingerprint(), served);
    assert.equal(await websocketEcho(`wss://${HOST}:${httpsPort}/socket`, 'still', ca), 'A:still');
    // Putting the right pair in place is picked up as usual.
    replaceFile(live.certFile, third.certFile);
    const renewed = await fingerprintOf(third);
    await waitFor('the fixed pair to be loaded', async () => (await servedFingerprint()) === renewed);
  });

  it('reports a certificate HAProxy cannot load as not taken, through the runtime API, and keeps serving the one in use', async () => {
    const served = await servedFingerprint();
    const weak = await loadEdgeCertificate(await weakRsaCertificate(path.join(dir, 'weak'), [`*.${DOMAIN}`]), DOMAIN);
    await assert.rejects(runtime.replaceSslCert(runPaths(runDir).tlsCertificate, weak.pem), /unable to load SSL certificate/);
    assert.equal(await servedFingerprint(), served);
    // No transaction is left open to block the next replacement.
    const next = await loadEdgeCertificate(first, DOMAIN);
    await runtime.replaceSslCert(runPaths(runDir).tlsCertificate, next.pem);
    assert.equal(await servedFingerprint(), next.fingerprint256);
    await runtime.replaceSslCert(runPaths(runDir).tlsCertificate, edge.certificate!.pem);
  });

  it('keeps the certificate in use installed when HAProxy refuses a new one, so that a restart still starts', async () => {
    const inUse = edge.certificate!;
    const served = await servedFingerprint();
    const weak = await weakRsaCertificate(path.join(dir, 'weak-files'), [`*.${DOMAIN}`]);
    replaceFile(live.keyFile, weak.keyFile);
    replaceFile(live.certFile, weak.certFile);
    await edge.check();
    assert.equal(edge.status()?.lastChange?.outcome, 'failed');
    assert.equal(edge.certificate, inUse);
    assert.equal(fs.readFileSync(runPaths(runDir).tlsCertificate, 'utf8'), inUse.pem);
    await proc.stop();
    await proc.start();
    assert.equal(await servedFingerprint(), served);
    // Back to the files in use: nothing to load.
    replaceFile(live.keyFile, third.keyFile);
    replaceFile(live.certFile, third.certFile);
    await edge.check();
    assert.equal(edge.certificate, inUse);
  });

  it('reports the certificate’s expiry as metrics and status', async () => {
    const certificate: EdgeCertificate = edge.certificate!;
    const metrics = await registry.metrics();
    assert.ok(metrics.includes(`manticore_router_tls_certificate_not_after_seconds{router="tls-test"} ${certificate.notAfter / 1000}`), metrics);
    assert.match(metrics, /manticore_router_tls_certificate_changes_total\{outcome="refused"\} [1-9]/);
    const status = edge.status()!;
    assert.equal(status.state, 'valid');
    assert.equal(status.fingerprint256, await servedFingerprint());
    assert.ok(status.expiresInSeconds > 29 * 86_400 && status.expiresInSeconds <= 30 * 86_400);
  });

  it('falls back to a validated reload when the runtime API does not take a certificate, and a restart loads the newest', async () => {
    const next = await loadEdgeCertificate(first, DOMAIN);
    await writeFileAtomic(runPaths(runDir).tlsCertificate, next.pem);
    const unreachable = new HaproxyRuntime(path.join(dir, 'no-such.sock'));
    assert.equal(await haproxyCertificateLoader(unreachable, reload, silentLogger())(runPaths(runDir).tlsCertificate, next.pem), 'reload');
    assert.equal(proc.reloads, 1);
    assert.equal(await servedFingerprint(), next.fingerprint256);
    assert.equal((await httpRequest(`https://${HOST}:${httpsPort}/`, { ca })).body, 'A /', 'routes survive the reload');
    await proc.stop();
    await proc.start();
    assert.equal(await servedFingerprint(), next.fingerprint256);
  });
});
