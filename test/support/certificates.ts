import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const script = path.resolve(__dirname, '../../../hack/local-tls.sh');

/** A certificate made at test time: its chain (certificate, then the CA) and key, in files of their own. */
export interface TestCertificate {
  readonly certFile: string;
  readonly keyFile: string;
  /** The CA that signed it: what a verifying client trusts. */
  readonly caFile: string;
}

/**
 * A throwaway CA in `dir`, made by hack/local-tls.sh (the script operators use to try TLS on one machine),
 * which issues certificates for the names asked for. Each issued pair is copied to files of its own, so a
 * test can hold several at once and put them in place when it likes.
 */
export class TestCa {
  private issued = 0;

  constructor(readonly dir: string) {}

  get caFile(): string {
    return path.join(this.dir, 'ca.pem');
  }

  /** Issues a certificate for `names` (the first is its subject), valid `days` days. */
  async issue(names: readonly string[], days = 30): Promise<TestCertificate> {
    await run('bash', [script, this.dir, ...names], { env: { ...process.env, DAYS: String(days) } });
    const label = `issued-${++this.issued}`;
    const certFile = path.join(this.dir, `${label}-cert.pem`);
    const keyFile = path.join(this.dir, `${label}-key.pem`);
    fs.copyFileSync(path.join(this.dir, 'cert.pem'), certFile);
    fs.copyFileSync(path.join(this.dir, 'key.pem'), keyFile);
    return { certFile, keyFile, caFile: this.caFile };
  }
}

/**
 * Puts a copy of the file `source` in place of `target` the way certificate renewers do: written beside it, then renamed over
 * it, so a reader sees the old file or the new, never half of one.
 */
export function replaceFile(target: string, source: string): void {
  const next = `${target}.next`;
  fs.copyFileSync(source, next);
  fs.renameSync(next, target);
}

/**
 * A self-signed certificate for `names` with a 1024-bit RSA key: well formed, so every check of ours takes
 * it, but HAProxy on OpenSSL 3 refuses to load it (its default security level wants 2048 bits).
 */
export async function weakRsaCertificate(dir: string, names: readonly string[]): Promise<{ readonly certFile: string; readonly keyFile: string }> {
  fs.mkdirSync(dir, { recursive: true });
  const certFile = path.join(dir, 'weak-cert.pem');
  const keyFile = path.join(dir, 'weak-key.pem');
  const san = names.map((name) => `DNS:${name}`).join(',');
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:1024', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '30', '-subj', `/CN=${names[0]}`, '-addext', `subjectAltName=${san}`]);
  return { certFile, keyFile };
}
