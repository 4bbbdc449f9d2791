import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as FakeTimers from '@sinonjs/fake-timers';
import { pino, type Logger } from 'pino';
import { ValidationError } from '../../controller/api/schemas.js';
import { registry } from '../../controller/metrics/metrics.js';
import { EdgeTls, loadEdgeCertificate, type CertificateLoader, type EdgeTlsFiles } from '../../controller/router/edge-tls.js';
import { controllerClock } from '../support/controller-harness.js';
import { replaceFile, TestCa, type TestCertificate } from '../support/certificates.js';
import { waitFor } from '../support/wait.js';

const DOMAIN = 'sessions.localhost';
const DAY_MS = 86_400_000;

/** A logger whose records the test can read. */
function recordingLogger(): { log: Logger; records: Array<{ level: number; msg: string }> } {
  const records: Array<{ level: number; msg: string }> = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void records.push(JSON.parse(line) as { level: number; msg: string }) });
  return { log, records };
}

function problemOf(promise: Promise<unknown>): Promise<string> {
  return promise.then(
    () => assert.fail('expected the certificate to be refused'),
    (error: unknown) => {
      assert.ok(error instanceof ValidationError, `expected a ValidationError, got ${String(error)}`);
      return error.message;
    },
  );
}

describe('edge certificate', function () {
  this.timeout(30_000);
  let dir: string;
  let ca: TestCa;
  let good: TestCertificate;
  let renewed: TestCertificate;
  let shortLived: TestCertificate;
  let otherDomain: TestCertificate;
  let otherCa: TestCertificate;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-edge-tls-'));
    ca = new TestCa(path.join(dir, 'ca'));
    good = await ca.issue([`*.${DOMAIN}`, 'localhost'], 90);
    renewed = await ca.issue([`*.${DOMAIN}`, 'localhost'], 90);
    shortLived = await ca.issue([`*.${DOMAIN}`], 10);
    otherDomain = await ca.issue(['*.elsewhere.test']);
    otherCa = await new TestCa(path.join(dir, 'other-ca')).issue([`*.${DOMAIN}`]);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const file = (name: string, ...parts: string[]): string => {
    const target = path.join(dir, name);
    fs.writeFileSync(target, parts.map((part) => fs.readFileSync(part, 'utf8')).join(''));
    return target;
  };

  describe('checks', () => {
    it('takes a certificate with its key in another file, or both in one, and describes it', async () => {
      const separate = await loadEdgeCertificate(good, DOMAIN);
      const combined = await loadEdgeCertificate({ certFile: file('combined.pem', good.certFile, good.keyFile) }, DOMAIN);
      assert.equal(separate.pem, combined.pem, 'HAProxy gets the same PEM');
      assert.match(separate.pem, /^-----BEGIN CERTIFICATE-----[\s\S]+-----BEGIN CERTIFICATE-----[\s\S]+-----BEGIN PRIVATE KEY-----[\s\S]+\n$/);
      assert.equal(separate.subject, `CN=*.${DOMAIN}`);
      assert.deepEqual(separate.names, [`DNS:*.${DOMAIN}`, 'DNS:localhost']);
      assert.match(separate.serialNumber, /^[0-9A-F]+$/);
      assert.ok(separate.notAfter - Date.now() > 89 * DAY_MS && separate.notAfter - Date.now() <= 90 * DAY_MS);
      assert.deepEqual(separate.warnings, []);
      assert.notEqual(separate.sourceHash, combined.sourceHash);
    });

    it('refuses a key that is not the certificate’s, naming both files', async () => {
      const message = await problemOf(loadEdgeCertificate({ certFile: good.certFile, keyFile: renewed.keyFile }, DOMAIN));
      assert.ok(message.includes(`the private key in ${renewed.keyFile} does not belong to the certificate in ${good.certFile}`), message);
    });

    it('refuses files without a certificate or a key, with several keys, or with an encrypted key', async () => {
      assert.match(await problemOf(loadEdgeCertificate({ certFile: good.keyFile }, DOMAIN)), /holds no certificate/);
      assert.match(await problemOf(loadEdgeCertificate({ certFile: good.certFile }, DOMAIN)), /cert\.pem holds no private key \(set router\.tls\.keyFile/);
      assert.match(await problemOf(loadEdgeCertificate({ certFile: good.certFile, keyFile: file('two-keys.pem', good.keyFile, renewed.keyFile) }, DOMAIN)), /holds 2 private keys/);
      assert.match(
        await problemOf(loadEdgeCertificate({ certFile: file('with-key.pem', good.certFile, good.keyFile), keyFile: good.keyFile }, DOMAIN)),
        /both .* hold a private key/,
      );
      const encrypted = path.join(dir, 'encrypted.pem');
      await promisify(execFile)('openssl', ['pkcs8', '-topk8', '-in', good.keyFile, '-out', encrypted, '-passout', 'pass:secret']);
      assert.match(await problemOf(loadEdgeCertificate({ certFile: good.certFile, keyFile: encrypted }, DOMAIN)), /encrypted private key: HAProxy cannot load a key that needs a passphrase/);
    });

    it('refuses a missing file, naming it', async () => {
      const missing = path.join(dir, 'missing.pem');
      assert.ok((await problemOf(loadEdgeCertificate({ certFile: missing }, DOMAIN))).includes(`cannot read the certificate file ${missing}`));
    });

    it('refuses a certificate that does not cover every session hostname', async () => {
      const message = await problemOf(loadEdgeCertificate(otherDomain, DOMAIN));
      assert.match(message, /does not cover the sessions' hostnames <token>\.sessions\.localhost \(it names DNS:\*\.elsewhere\.test\): it needs the wildcard \*\.sessions\.localhost$/);
      // Clients refuse *.localhost, so a one-label domain is explained.
      assert.match(await problemOf(loadEdgeCertificate(good, 'localhost')), /use a public\.domain of two labels or more \(e\.g\. sessions\.localhost\)/);
    });

    it('refuses a wildcard only in the subject\'s common name, which clients ignore', async () => {
      const certFile = path.join(dir, 'cn-only-cert.pem');
      const keyFile = path.join(dir, 'cn-only-key.pem');
      // No subjectAltName: browsers take host names from that extension alone and refuse this certificate.
      await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '30', '-subj', `/CN=*.${DOMAIN}`]);
      assert.match(await problemOf(loadEdgeCertificate({ certFile, keyFile }, DOMAIN)), /does not cover the sessions' hostnames <token>\.sessions\.localhost \(it names no DNS names\)/);
    });

    it('warns about a chain out of order', async () => {
      const certificate = await loadEdgeCertificate({ certFile: file('misordered.pem', good.certFile, otherCa.caFile), keyFile: good.keyFile }, DOMAIN);
      // Its own CA follows it, then a CA that issued nothing here.
      assert.equal(certificate.warnings.length, 1);
      assert.match(certificate.warnings[0]!, /certificate 3 in .* did not issue certificate 2/);
    });
  });

  describe('following the files', () => {
    let work: string;
    let files: Required<EdgeTlsFiles>;
    let clock: FakeTimers.Clock;
    let loads: Array<{ path: string; pem: string }>;
    let loader: CertificateLoader;
    let edge: EdgeTls;
    let logs: ReturnType<typeof recordingLogger>;

    beforeEach(() => {
      work = fs.mkdtempSync(path.join(dir, 'work-'));
      files = { certFile: path.join(work, 'cert.pem'), keyFile: path.join(work, 'key.pem') };
      fs.copyFileSync(good.certFile, files.certFile);
      fs.copyFileSync(good.keyFile, files.keyFile);
      clock = FakeTimers.createClock(Date.now());
      loads = [];
      loader = async (installed, pem) => {
        loads.push({ path: installed, pem });
        return 'runtime';
      };
      logs = recordingLogger();
      edge = new EdgeTls({
        files,
        domain: DOMAIN,
        router: 'edge-test',
        installedPath: path.join(work, 'run', 'edge.pem'),
        expiryWarningMs: 21 * DAY_MS,
        log: logs.log,
        clock: controllerClock(clock),
        debounceMs: 200,
      });
    });
    afterEach(() => edge.stop());

    const messages = (level: number): string[] => logs.records.filter((record) => record.level === level).map((record) => record.msg);

    it('installs the PEM HAProxy loads (mode 600) and reports the expiry as status and metrics', async () => {
      const installed = await edge.install();
      const pem = fs.readFileSync(path.join(work, 'run', 'edge.pem'), 'utf8');
      assert.equal(pem, installed.pem);
      assert.equal(fs.statSync(path.join(work, 'run', 'edge.pem')).mode & 0o777, 0o600);
      const status = edge.status()!;
      assert.equal(status.state, 'valid');
      assert.equal(status.serialNumber, installed.serialNumber);
      assert.equal(status.notAfter, new Date(installed.notAfter).toISOString());
      assert.equal(status.expiresInSeconds, Math.floor((installed.notAfter - clock.now) / 1000));
      const metrics = await registry.metrics();
      assert.ok(metrics.includes(`manticore_router_tls_certificate_not_after_seconds{router="edge-test"} ${installed.notAfter / 1000}`), metrics);
      assert.ok(metrics.includes(`manticore_router_tls_certificate_expires_in_seconds{router="edge-test"} ${status.expiresInSeconds}`));
      edge.stop();
      assert.ok(!(await registry.metrics()).includes('router="edge-test"'), 'a stopped router reports nothing');
    });

    it('loads changed files once they are quiet, and only when their content changed', async () => {
      const before = await edge.install();
      edge.watch(loader);
      const timers = clock.countTimers();
      replaceFile(files.keyFile, renewed.keyFile);
      replaceFile(files.certFile, renewed.certFile);
      // The directory's events arm the debounce on the fake clock; nothing is read until it runs out.
      await waitFor('the change to be seen', () => clock.countTimers() > timers);
      clock.tick(199);
      assert.equal(loads.length, 0);
      await clock.tickAsync(1);
      await waitFor('the new certificate to be loaded', () => loads.length === 1);
      const next = edge.certificate!;
      assert.notEqual(next.serialNumber, before.serialNumber);
      assert.equal(loads[0]!.pem, next.pem);
      assert.equal(loads[0]!.path, path.join(work, 'run', 'edge.pem'));
      assert.equal(fs.readFileSync(loads[0]!.path, 'utf8'), next.pem, 'the file on disk holds it too, for a restart');
      assert.equal(edge.status()!.lastChange?.outcome, 'runtime');
      // Touched without a change: nothing to load.
      fs.utimesSync(files.certFile, new Date(), new Date());
      await edge.check();
      assert.equal(loads.length, 1);
    });

    it('refuses a bad replacement and keeps the certificate in use, until the files are fixed', async () => {
      const served = await edge.install();
      edge.watch(loader);
      replaceFile(files.keyFile, renewed.keyFile);
      await edge.check();
      assert.equal(loads.length, 0, 'HAProxy is not asked to load it');
      assert.equal(edge.certificate, served);
      assert.equal(fs.readFileSync(path.join(work, 'run', 'edge.pem'), 'utf8'), served.pem, 'nor is it installed for a restart');
      assert.equal(edge.status()!.lastChange?.outcome, 'refused');
      assert.match(edge.status()!.lastChange!.message!, /does not belong to the certificate/);
      assert.equal(messages(50).length, 1);
      await edge.check();
      assert.equal(messages(50).length, 1, 'the same bad files are refused once, not at every event');
      replaceFile(files.certFile, renewed.certFile);
      await edge.check();
      assert.equal(loads.length, 1);
      assert.equal(edge.certificate!.serialNumber, (await loadEdgeCertificate(renewed, DOMAIN)).serialNumber);
    });

    it('refuses a replacement that has already expired', async () => {
      await edge.install();
      edge.watch(loader);
      clock.setSystemTime(clock.now + 11 * DAY_MS);
      replaceFile(files.keyFile, shortLived.keyFile);
      replaceFile(files.certFile, shortLived.certFile);
      await edge.check();
      assert.equal(loads.length, 0);
      assert.match(edge.status()!.lastChange!.message!, /expired at/);
    });

    it('refuses a replacement that is not valid yet', async () => {
      await edge.install();
      edge.watch(loader);
      clock.setSystemTime((await loadEdgeCertificate(renewed, DOMAIN)).notBefore - 3_600_000);
      replaceFile(files.keyFile, renewed.keyFile);
      replaceFile(files.certFile, renewed.certFile);
      await edge.check();
      assert.equal(loads.length, 0, 'clients would refuse it for another hour');
      assert.match(edge.status()!.lastChange!.message!, /is not valid before/);
    });

    it('tries again when HAProxy did not take the certificate', async () => {
      await edge.install();
      let fail = true;
      let tries = 0;
      edge.watch(async (installed, pem) => {
        tries++;
        if (fail) throw new Error('HAProxy is restarting');
        return loader(installed, pem);
      });
      replaceFile(files.keyFile, renewed.keyFile);
      replaceFile(files.certFile, renewed.certFile);
      await edge.check();
      assert.equal(edge.status()!.lastChange?.outcome, 'failed');
      // More events for the same files (a renewer writes several) try nothing: each try puts it in the file a while.
      await edge.check();
      assert.equal(tries, 1);
      assert.notEqual(edge.certificate!.serialNumber, (await loadEdgeCertificate(renewed, DOMAIN)).serialNumber);
      assert.equal(fs.readFileSync(path.join(work, 'run', 'edge.pem'), 'utf8'), edge.certificate!.pem, 'a restart loads the one HAProxy took');
      fail = false;
      // The periodic recheck (hourly) finds the files still newer than what HAProxy serves.
      await clock.tickAsync(3_600_000);
      await waitFor('the retry', () => loads.length === 1);
      assert.equal(edge.status()!.lastChange?.outcome, 'runtime');
    });

    it('warns when the expiry comes within the window, once a day, and errs once it has passed', async () => {
      replaceFile(files.keyFile, shortLived.keyFile);
      replaceFile(files.certFile, shortLived.certFile);
      const certificate = await edge.install();
      edge.watch(loader);
      // Ten days left of a 21-day window: warned at once.
      assert.equal(edge.status()!.state, 'expiring');
      assert.match(messages(40).at(-1)!, /^the edge certificate expires in 9 days \(.*\): renew .*cert\.pem$/);
      const warned = messages(40).length;
      await clock.tickAsync(12 * 3_600_000);
      assert.equal(messages(40).length, warned, 'not again within the day');
      await clock.tickAsync(12 * 3_600_000);
      await waitFor('the next warning', () => messages(40).length === warned + 1);
      await clock.tickAsync(certificate.notAfter - clock.now);
      await waitFor('the expiry error', () => messages(50).some((message) => message.startsWith('the edge certificate expired at')));
      assert.equal(edge.status()!.state, 'expired');
      assert.ok(edge.status()!.expiresInSeconds <= 0);
    });
  });
});
