import { createHash, createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ValidationError } from '../api/schemas.js';
import { edgeCertificateChanges, edgeCertificateSources } from '../metrics/metrics.js';
import { systemClock, type Clock } from '../util/clock.js';
import { writeFileAtomic } from '../util/files.js';
import type { Logger } from '../util/log.js';
import type { HaproxyRuntime } from './haproxy-runtime.js';

/**
 * The certificate HAProxy serves at the edge (router.tls): read from the operator's files, checked, installed
 * as the one PEM HAProxy loads, and replaced while HAProxy runs when the files change (a renewal), with no
 * connection dropped. Its expiry is reported as metrics and status and warned about ahead of time.
 */

/** The configured files: the certificate chain, and the key when it is not in the same file. */
export interface EdgeTlsFiles {
  readonly certFile: string;
  readonly keyFile?: string;
}

/** A certificate and key that passed every check, as HAProxy gets them. */
export interface EdgeCertificate {
  /** The certificates in file order (the certificate, then its chain), then the key. */
  readonly pem: string;
  /** Of the files' bytes: tells a real change from an event that changed nothing. */
  readonly sourceHash: string;
  readonly subject: string;
  readonly issuer: string;
  /** The subject alternative names, e.g. `DNS:*.sessions.example.com`. */
  readonly names: readonly string[];
  readonly serialNumber: string;
  readonly fingerprint256: string;
  /** Milliseconds since the epoch. */
  readonly notBefore: number;
  readonly notAfter: number;
  /** Problems that do not stop it from being served (a chain out of order). */
  readonly warnings: readonly string[];
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n[\s\S]*?\r?\n-----END \1-----/g;
const KEY_LABELS = new Set(['PRIVATE KEY', 'RSA PRIVATE KEY', 'EC PRIVATE KEY']);
/** A name shaped like a session's hostname label, to ask whether the certificate covers every session. */
const SAMPLE_LABEL = 'manticoretlscoveragecheck';

function pemBlocks(text: string): Array<{ label: string; pem: string }> {
  return [...text.matchAll(PEM_BLOCK)].map((match) => ({ label: match[1]!, pem: match[0] }));
}

/** The files' contents; a missing or unreadable file is named in the error. */
async function readEdgeTlsFiles(files: EdgeTlsFiles): Promise<{ cert: string; key?: string; hash: string }> {
  const read = async (file: string, kind: string): Promise<string> => {
    try {
      return await fsp.readFile(file, 'utf8');
    } catch (error) {
      throw new ValidationError('router.tls', [`cannot read the ${kind} file ${file}: ${(error as Error).message}`]);
    }
  };
  const cert = await read(files.certFile, 'certificate');
  const key = files.keyFile === undefined ? undefined : await read(files.keyFile, 'key');
  const hash = createHash('sha256').update(cert).update('\0').update(key ?? '').digest('hex');
  return { cert, ...(key === undefined ? {} : { key }), hash };
}

/**
 * Checks what the files hold: at least one certificate, exactly one unencrypted private key (in keyFile, or
 * in certFile when there is none) that belongs to the first certificate, and that certificate valid for every
 * session hostname `<token>.<domain>` (a wildcard). Throws a ValidationError naming the file and the problem.
 * Expiry is not checked here: the caller decides what an expired certificate means.
 */
function checkEdgeCertificate(files: EdgeTlsFiles, contents: { cert: string; key?: string; hash: string }, domain: string): EdgeCertificate {
  const fail = (problem: string): never => {
    throw new ValidationError('router.tls', [problem]);
  };
  const blocks = pemBlocks(contents.cert);
  const certificateBlocks = blocks.filter((block) => block.label === 'CERTIFICATE');
  if (certificateBlocks.length === 0) fail(`${files.certFile} holds no certificate (a PEM "BEGIN CERTIFICATE" block)`);
  const certificates = certificateBlocks.map((block, index) => {
    try {
      return new X509Certificate(block.pem);
    } catch (error) {
      return fail(`certificate ${index + 1} in ${files.certFile} cannot be parsed: ${(error as Error).message}`);
    }
  });

  const keyFile = files.keyFile ?? files.certFile;
  const keyBlocks = (files.keyFile === undefined ? blocks : pemBlocks(contents.key ?? '')).filter((block) => block.label.endsWith('PRIVATE KEY'));
  if (files.keyFile !== undefined && blocks.some((block) => block.label.endsWith('PRIVATE KEY'))) {
    fail(`both ${files.certFile} and ${files.keyFile} hold a private key: keep it in keyFile alone`);
  }
  if (keyBlocks.length === 0) fail(`${keyFile} holds no private key${files.keyFile === undefined ? ' (set router.tls.keyFile when the key is in a file of its own)' : ''}`);
  if (keyBlocks.length > 1) fail(`${keyFile} holds ${keyBlocks.length} private keys; HAProxy takes one`);
  const keyBlock = keyBlocks[0]!;
  if (!KEY_LABELS.has(keyBlock.label)) fail(`the private key in ${keyFile} is ${keyBlock.label.toLowerCase()}: HAProxy cannot load a key that needs a passphrase`);
  let key: KeyObject;
  try {
    key = createPrivateKey(keyBlock.pem);
  } catch (error) {
    return fail(`the private key in ${keyFile} cannot be parsed: ${(error as Error).message}`);
  }
  const leaf = certificates[0]!;
  if (!leaf.checkPrivateKey(key)) fail(`the private key in ${keyFile} does not belong to the certificate in ${files.certFile} (${leaf.subject.replace(/\n/g, ', ')})`);

  const names = (leaf.subjectAltName ?? '').split(', ').filter((name) => name !== '');
  // Not the subject's common name: browsers match host names against the subjectAltName alone.
  if (leaf.checkHost(`${SAMPLE_LABEL}.${domain}`, { subject: 'never' }) === undefined) {
    fail(
      `the certificate in ${files.certFile} does not cover the sessions' hostnames <token>.${domain} (it names ${names.join(', ') || 'no DNS names'}): ` +
        `it needs the wildcard *.${domain}${domain.includes('.') ? '' : `, and clients refuse a wildcard directly under a top-level name: use a public.domain of two labels or more (e.g. sessions.${domain})`}`,
    );
  }
  const warnings: string[] = [];
  for (let i = 0; i + 1 < certificates.length; i++) {
    if (!certificates[i]!.checkIssued(certificates[i + 1]!)) {
      warnings.push(`certificate ${i + 2} in ${files.certFile} did not issue certificate ${i + 1}: the chain should follow the certificate in order, or clients may not verify it`);
    }
  }
  return {
    pem: `${[...certificateBlocks.map((block) => block.pem), keyBlock.pem].join('\n')}\n`,
    sourceHash: contents.hash,
    subject: leaf.subject.replace(/\n/g, ', '),
    issuer: leaf.issuer.replace(/\n/g, ', '),
    names,
    serialNumber: leaf.serialNumber,
    fingerprint256: leaf.fingerprint256,
    notBefore: Date.parse(leaf.validFrom),
    notAfter: Date.parse(leaf.validTo),
    warnings,
  };
}

/** Reads and checks the configured files (check-config and start-up). */
export async function loadEdgeCertificate(files: EdgeTlsFiles, domain: string): Promise<EdgeCertificate> {
  return checkEdgeCertificate(files, await readEdgeTlsFiles(files), domain);
}

/** Puts a certificate into the running HAProxy; says how. */
export type CertificateLoader = (installedPath: string, pem: string) => Promise<'runtime' | 'reload'>;

/**
 * Through the Runtime API (`set ssl cert` + `commit ssl cert`: new handshakes get the new certificate, open
 * connections keep theirs), or, should HAProxy not take it that way, by a validated reload of the same
 * configuration, which loads the file already installed on disk.
 */
export function haproxyCertificateLoader(runtime: HaproxyRuntime, reload: () => Promise<void>, log: Logger): CertificateLoader {
  return async (installedPath, pem) => {
    try {
      await runtime.replaceSslCert(installedPath, pem);
      return 'runtime';
    } catch (error) {
      log.warn({ err: error }, 'HAProxy did not take the certificate through its runtime API; reloading it (validated) instead');
      await reload();
      return 'reload';
    }
  };
}

export type ExpiryState = 'valid' | 'expiring' | 'expired';

/** What the router's status reports about the edge certificate. */
export interface EdgeTlsStatus {
  readonly certFile: string;
  readonly keyFile?: string;
  readonly subject: string;
  readonly issuer: string;
  readonly names: readonly string[];
  readonly serialNumber: string;
  readonly fingerprint256: string;
  readonly notBefore: string;
  readonly notAfter: string;
  readonly expiresInSeconds: number;
  readonly state: ExpiryState;
  readonly expiryWarningDays: number;
  /** The last change of the files that was acted on, if any since start-up. */
  readonly lastChange?: { readonly at: string; readonly outcome: 'runtime' | 'reload' | 'refused' | 'failed'; readonly message?: string };
}

export interface EdgeTlsOptions {
  readonly files: EdgeTlsFiles;
  /** public.domain: the certificate must cover `<token>.<domain>`. */
  readonly domain: string;
  /** The router's name, for the metrics. */
  readonly router: string;
  /** The file HAProxy loads (runPaths(runDir).tlsCertificate). */
  readonly installedPath: string;
  /** How long before the expiry to start warning. */
  readonly expiryWarningMs: number;
  readonly log: Logger;
  /** Times the debounce, the periodic check and the warnings (default: the system clock). */
  readonly clock?: Clock;
  /** How long the files must be quiet after a change event before they are read (default 500 ms): a renewer writes the key and the certificate one after the other. */
  readonly debounceMs?: number;
  /** The files are also read this often, for changes that no event reported (some network file systems), and the expiry looked at again (default 1 h). */
  readonly recheckMs?: number;
}

const DAY_MS = 86_400_000;

/**
 * Keeps HAProxy's edge certificate equal to the configured files. install() (before HAProxy starts) checks
 * them and writes the PEM HAProxy loads; watch() then follows the files' directories (renewers such as
 * certbot replace files by rename, so the files themselves cannot be watched), and on a change that holds a
 * valid certificate writes the PEM again (a restart or reload loads the new one) and hands it to HAProxy; one
 * HAProxy does not take is replaced in the file by the one in use. An invalid, expired or not yet valid
 * replacement is refused with an error in the log: the certificate in use stays.
 */
export class EdgeTls {
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly debounceMs: number;
  private readonly recheckMs: number;
  private served: EdgeCertificate | undefined;
  /** Files whose content was refused: not checked again until they change. */
  private refusedHash: string | undefined;
  /**
   * Files whose certificate HAProxy did not take: not tried again on their change events (a renewer writes
   * several files, each an event), only once they change or at the recheck, as the failure may have passed.
   */
  private failedHash: string | undefined;
  private lastChange: EdgeTlsStatus['lastChange'];
  private loader: CertificateLoader | undefined;
  private watchers: fs.FSWatcher[] = [];
  private debounceTimer: unknown;
  private recheckTimer: unknown;
  private checking: Promise<void> | undefined;
  private checkAgain = false;
  private lastState: ExpiryState | undefined;
  private lastWarnedAt = 0;
  private removeMetricsSource: (() => void) | undefined;
  private stopped = false;

  constructor(private readonly options: EdgeTlsOptions) {
    this.log = options.log.child({ component: 'edge-tls' });
    this.clock = options.clock ?? systemClock;
    this.debounceMs = options.debounceMs ?? 500;
    this.recheckMs = options.recheckMs ?? 3_600_000;
  }

  /** The certificate HAProxy serves (after install()). */
  get certificate(): EdgeCertificate | undefined {
    return this.served;
  }

  /**
   * Checks the files and writes the PEM HAProxy loads at start. Throws a ValidationError naming the file when
   * they are unusable; an expired certificate is served all the same (with an error logged), so that its
   * renewal is picked up without a restart.
   */
  async install(): Promise<EdgeCertificate> {
    const certificate = await loadEdgeCertificate(this.options.files, this.options.domain);
    await fsp.mkdir(path.dirname(this.options.installedPath), { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.options.installedPath, certificate.pem);
    this.served = certificate;
    for (const warning of certificate.warnings) this.log.warn({ certFile: this.options.files.certFile }, warning);
    this.log.info(this.describe(certificate), 'edge certificate installed');
    this.removeMetricsSource ??= edgeCertificateSources.add(() => this.expiry());
    this.lookAtExpiry();
    return certificate;
  }

  /** Follows the files from now on, handing changes to `loader`. */
  watch(loader: CertificateLoader): void {
    if (this.served === undefined) throw new Error('EdgeTls.watch() before install()');
    this.loader = loader;
    const directories = new Set([this.options.files.certFile, this.options.files.keyFile].filter((file): file is string => file !== undefined).map((file) => path.dirname(path.resolve(file))));
    for (const directory of directories) {
      try {
        const watcher = fs.watch(directory, { persistent: false }, () => this.changed());
        watcher.on('error', (error) => this.log.warn({ err: error, directory }, 'cannot watch the certificate directory any more; the files are still read every recheck'));
        this.watchers.push(watcher);
      } catch (error) {
        this.log.warn({ err: error, directory }, 'cannot watch the certificate directory; the files are read every recheck instead');
      }
    }
    this.armRecheck();
  }

  /** Reads the files now and loads them if they changed; resolves when done (what a change event leads to). */
  check(): Promise<void> {
    if (this.loader === undefined) return Promise.reject(new Error('EdgeTls.check() before watch()'));
    if (this.checking) {
      this.checkAgain = true;
      return this.checking;
    }
    this.checking = (async () => {
      do {
        this.checkAgain = false;
        await this.checkOnce();
      } while (this.checkAgain && !this.stopped);
    })().finally(() => (this.checking = undefined));
    return this.checking;
  }

  status(): EdgeTlsStatus | undefined {
    const certificate = this.served;
    if (certificate === undefined) return undefined;
    const { files, expiryWarningMs } = this.options;
    return {
      certFile: files.certFile,
      ...(files.keyFile === undefined ? {} : { keyFile: files.keyFile }),
      subject: certificate.subject,
      issuer: certificate.issuer,
      names: certificate.names,
      serialNumber: certificate.serialNumber,
      fingerprint256: certificate.fingerprint256,
      notBefore: new Date(certificate.notBefore).toISOString(),
      notAfter: new Date(certificate.notAfter).toISOString(),
      expiresInSeconds: Math.floor((certificate.notAfter - this.clock.now()) / 1000),
      state: this.stateOf(certificate),
      expiryWarningDays: expiryWarningMs / DAY_MS,
      ...(this.lastChange === undefined ? {} : { lastChange: this.lastChange }),
    };
  }

  stop(): void {
    this.stopped = true;
    for (const watcher of this.watchers.splice(0)) watcher.close();
    this.clock.clearTimeout(this.debounceTimer);
    this.clock.clearTimeout(this.recheckTimer);
    this.removeMetricsSource?.();
    this.removeMetricsSource = undefined;
  }

  /** A change event: wait for the files to be quiet, then read them. */
  private changed(): void {
    if (this.stopped) return;
    this.clock.clearTimeout(this.debounceTimer);
    this.debounceTimer = this.clock.setTimeout(() => void this.check(), this.debounceMs);
  }

  private async checkOnce(): Promise<void> {
    const { files, domain, installedPath } = this.options;
    const served = this.served!;
    let contents;
    try {
      contents = await readEdgeTlsFiles(files);
    } catch (error) {
      // Mid-rename, or removed for good: the next event or recheck tries again; HAProxy keeps what it has.
      this.log.warn({ err: error }, 'cannot read the certificate files; the certificate in use stays');
      return;
    }
    if (contents.hash === served.sourceHash) {
      this.refusedHash = undefined;
      this.failedHash = undefined;
      return;
    }
    if (contents.hash === this.refusedHash || contents.hash === this.failedHash) return;
    let next: EdgeCertificate;
    try {
      next = checkEdgeCertificate(files, contents, domain);
      if (next.notAfter <= this.clock.now()) {
        throw new ValidationError('router.tls', [`the certificate in ${files.certFile} expired at ${new Date(next.notAfter).toISOString()}`]);
      }
      // Issued ahead of its validity (or this host's clock is behind): clients would refuse it until then.
      if (next.notBefore > this.clock.now()) {
        throw new ValidationError('router.tls', [`the certificate in ${files.certFile} is not valid before ${new Date(next.notBefore).toISOString()}`]);
      }
    } catch (error) {
      if (!(error instanceof ValidationError)) throw error;
      this.refusedHash = contents.hash;
      this.record('refused', error.problems.join('; '));
      this.log.error(
        { problems: error.problems, serving: this.describe(served) },
        `refusing the changed certificate files: ${error.problems.join('; ')}; the certificate in use (serial ${served.serialNumber}) stays`,
      );
      return;
    }
    if (next.pem === served.pem) {
      // Rewritten with the same certificate and key (another layout of the same PEM blocks).
      this.served = next;
      this.refusedHash = undefined;
      return;
    }
    // Stopping (the router shuts down): HAProxy is going away too.
    if (this.stopped) return;
    try {
      // On disk first: the loader's fallback, a reload, loads it from there (and so would a restart meanwhile).
      await writeFileAtomic(installedPath, next.pem);
      const how = await this.loader!(installedPath, next.pem);
      this.served = next;
      this.refusedHash = undefined;
      this.failedHash = undefined;
      this.record(how);
      for (const warning of next.warnings) this.log.warn({ certFile: files.certFile }, warning);
      this.log.info({ ...this.describe(next), how, replaced: served.serialNumber }, 'new edge certificate loaded; open connections keep the old one');
      this.lookAtExpiry();
    } catch (error) {
      // HAProxy may have refused it (a key too weak for its OpenSSL): left installed, it would stop the next
      // restart or reload. Not marked refused: the failure may pass (HAProxy restarting), so the recheck tries again.
      await writeFileAtomic(installedPath, served.pem).catch((restoreError: unknown) => {
        this.log.error({ err: restoreError, installedPath }, 'could not put the certificate in use back in the file HAProxy loads; a restart may load the new one');
      });
      this.failedHash = contents.hash;
      this.record('failed', (error as Error).message);
      this.log.error({ err: error, serving: this.describe(served) }, 'HAProxy did not take the new certificate; trying again when the files change, or at the next recheck');
    }
  }

  private record(outcome: 'runtime' | 'reload' | 'refused' | 'failed', message?: string): void {
    edgeCertificateChanges.inc({ outcome });
    this.lastChange = { at: new Date(this.clock.now()).toISOString(), outcome, ...(message === undefined ? {} : { message }) };
  }

  private armRecheck(): void {
    if (this.stopped) return;
    this.clock.clearTimeout(this.recheckTimer);
    const served = this.served!;
    const now = this.clock.now();
    // Also wake when the warning window opens and at the expiry itself, so they are logged on time.
    const thresholds = [served.notAfter - this.options.expiryWarningMs, served.notAfter].filter((at) => at > now).map((at) => at - now);
    const delay = Math.min(this.recheckMs, ...thresholds);
    this.recheckTimer = this.clock.setTimeout(() => {
      this.failedHash = undefined;
      void this.check()
        .catch((error: unknown) => this.log.error({ err: error }, 'checking the certificate files failed'))
        .finally(() => {
          this.lookAtExpiry();
          this.armRecheck();
        });
    }, delay);
  }

  /** Logs the expiry when it enters the warning window or passes, and again once a day while it stays there. */
  private lookAtExpiry(): void {
    const certificate = this.served!;
    const now = this.clock.now();
    const state = this.stateOf(certificate);
    const entered = state !== this.lastState;
    this.lastState = state;
    if (state === 'valid' || (!entered && now - this.lastWarnedAt < DAY_MS)) return;
    this.lastWarnedAt = now;
    const fields = { ...this.describe(certificate), certFile: this.options.files.certFile };
    if (state === 'expired') {
      this.log.error(fields, `the edge certificate expired at ${new Date(certificate.notAfter).toISOString()}: clients refuse every session address; replace ${this.options.files.certFile}`);
    } else {
      const days = Math.max(0, Math.floor((certificate.notAfter - now) / DAY_MS));
      this.log.warn(fields, `the edge certificate expires in ${days} day${days === 1 ? '' : 's'} (${new Date(certificate.notAfter).toISOString()}): renew ${this.options.files.certFile}`);
    }
  }

  private stateOf(certificate: EdgeCertificate): ExpiryState {
    const remaining = certificate.notAfter - this.clock.now();
    if (remaining <= 0) return 'expired';
    return remaining <= this.options.expiryWarningMs ? 'expiring' : 'valid';
  }

  private expiry(): { router: string; notAfterSeconds: number; remainingSeconds: number } {
    const notAfter = this.served!.notAfter;
    return { router: this.options.router, notAfterSeconds: notAfter / 1000, remainingSeconds: Math.floor((notAfter - this.clock.now()) / 1000) };
  }

  private describe(certificate: EdgeCertificate): Record<string, unknown> {
    return { subject: certificate.subject, names: certificate.names, serial: certificate.serialNumber, notAfter: new Date(certificate.notAfter).toISOString() };
  }
}
