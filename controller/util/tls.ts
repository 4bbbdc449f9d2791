import fs from 'node:fs';

/** TLS files for talking to an agent (Consul, Nomad), as the configuration names them. */
export interface TlsFiles {
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly serverName?: string;
}

/** What node:https needs from those files. */
export interface TlsMaterial {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  servername?: string;
}

/**
 * Reads the files once, at start-up, so a missing or unreadable file stops start-up with its name rather
 * than failing the first request. `what` names the agent in messages ("Consul", "Nomad").
 */
export function loadTlsMaterial(tls: TlsFiles | undefined, what: string): TlsMaterial {
  if (!tls) return {};
  if ((tls.certFile === undefined) !== (tls.keyFile === undefined)) {
    throw new Error(`${what} TLS: certFile and keyFile go together: give both or neither`);
  }
  const read = (file: string | undefined, kind: string): Buffer | undefined => {
    if (file === undefined) return undefined;
    try {
      return fs.readFileSync(file);
    } catch (error) {
      throw new Error(`${what} TLS: cannot read the ${kind} file ${file}: ${(error as Error).message}`, { cause: error });
    }
  };
  const material: TlsMaterial = {};
  const ca = read(tls.caFile, 'CA');
  const cert = read(tls.certFile, 'certificate');
  const key = read(tls.keyFile, 'key');
  if (ca) material.ca = ca;
  if (cert) material.cert = cert;
  if (key) material.key = key;
  if (tls.serverName) material.servername = tls.serverName;
  return material;
}
