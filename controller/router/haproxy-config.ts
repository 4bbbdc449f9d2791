import fs from 'node:fs';
import path from 'node:path';
import { ValidationError } from '../api/schemas.js';

/**
 * Rendering of Manticore's HAProxy configuration template and of the two route map files, plus the
 * validation that keeps junk out of both (a bad map line or config token would reach HAProxy verbatim).
 */

/**
 * Reads the configuration template (router.configTemplate). A relative path is taken from the working
 * directory, as every path of the configuration is; an unreadable file is a configuration error naming the
 * field and the file it resolved to, so start-up stops before anything starts.
 */
export function readConfigTemplate(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new ValidationError('configuration', [`/router/configTemplate: cannot read the HAProxy configuration template ${path.resolve(file)}: ${(error as Error).message}`]);
  }
}

/** Values for the placeholders of manifests/haproxy/haproxy.cfg. */
export interface HaproxyConfigValues {
  /** Absolute, normalised directory holding the sockets, pidfile, config and map files. */
  readonly runDir: string;
  /** HTTP/websocket listener, `addr:port` (e.g. `127.0.0.1:8080`, `:80`). */
  readonly httpBind: string;
  /** TCP listener for the whole public range, `addr:start-end` (e.g. `127.0.0.1:20000-20999`). */
  readonly tcpBind: string;
  /** Global connection cap; default 4000. */
  readonly maxconn?: number | string;
  /** How long an old worker may keep connections after a reload (HAProxy time, e.g. `5m`); default 5m. */
  readonly hardStopAfter?: string;
  /**
   * Where HAProxy serves its statistics page and Prometheus exporter (`/stats`, `/metrics`): `addr:port`,
   * or by default a unix socket in the run directory, so nothing is exposed unless configured.
   */
  readonly statsBind?: string;
  /**
   * TLS at the edge: the HTTPS (and WSS) listener, `addr:port`, serving the certificate HAProxy loads from
   * `<runDir>/edge.pem`. When given, the `{{#httpsBind}}` sections of the template are kept: the plain
   * listener then redirects to HTTPS.
   */
  readonly httpsBind?: string;
  /** The public HTTPS port as redirects name it: `''` for 443, else `:<port>`. Goes with httpsBind. */
  readonly httpsPortSuffix?: string;
  /** TLS on the session TCP ports too (the `{{#tcpTls}}` sections), with the same certificate. */
  readonly tcpTls?: boolean;
  /** Strict-Transport-Security max-age in seconds on HTTPS answers (the `{{#hstsMaxAge}}` sections); absent: no header. */
  readonly hstsMaxAge?: number | string;
}

const DEFAULT_MAXCONN = 4000;
/**
 * The same bound as the configuration schema's router.maxconn. Each proxied connection holds two file
 * descriptors (and each TCP port one more); HAProxy raises its open-files limit to fit, or refuses to
 * start naming the limit it could not reach.
 */
const MAX_MAXCONN = 15000;
const DEFAULT_HARD_STOP_AFTER = '5m';

const KNOWN_PLACEHOLDERS = ['runDir', 'httpBind', 'tcpBind', 'maxconn', 'hardStopAfter', 'statsBind', 'httpsBind', 'httpsPortSuffix', 'tcpTls', 'hstsMaxAge'] as const;
type Placeholder = (typeof KNOWN_PLACEHOLDERS)[number];
/** A template that lacks these cannot route (maps, sockets and listeners hang off them). */
const REQUIRED_PLACEHOLDERS: readonly Placeholder[] = ['runDir', 'httpBind', 'tcpBind'];
/**
 * Optional features a template must use when they are asked for: a custom template that ignored TLS would
 * otherwise serve plain HTTP while every session's address says https.
 */
const USED_WHEN_GIVEN: readonly Placeholder[] = ['httpsBind', 'httpsPortSuffix', 'tcpTls', 'hstsMaxAge'];

/**
 * Unix socket paths are limited to 108 bytes; HAProxy also binds `<socket>.<pid>.tmp` before renaming,
 * so the run directory must leave room for that suffix.
 */
export const MAX_RUN_DIR_LENGTH = 80;

export class HaproxyConfigError extends Error {
  constructor(
    message: string,
    readonly problems: readonly string[],
  ) {
    super(`${message}: ${problems.join('; ')}`);
    this.name = 'HaproxyConfigError';
  }
}

/** File names inside the run directory; the config template and the runtime client must agree on them. */
export function runPaths(runDir: string): {
  readonly runDir: string;
  readonly config: string;
  readonly hostsMap: string;
  readonly tcpMap: string;
  readonly adminSocket: string;
  readonly masterSocket: string;
  readonly pidFile: string;
  readonly statsSocket: string;
  /** The edge certificate (chain and key, one PEM) that the TLS listeners load; the router keeps it current. */
  readonly tlsCertificate: string;
} {
  const dir = path.resolve(runDir);
  return {
    runDir: dir,
    config: path.join(dir, 'haproxy.cfg'),
    hostsMap: path.join(dir, 'hosts.map'),
    tcpMap: path.join(dir, 'tcp.map'),
    adminSocket: path.join(dir, 'admin.sock'),
    masterSocket: path.join(dir, 'master.sock'),
    pidFile: path.join(dir, 'haproxy.pid'),
    statsSocket: path.join(dir, 'stats.sock'),
    tlsCertificate: path.join(dir, 'edge.pem'),
  };
}

export interface PortRange {
  readonly start: number;
  readonly end: number;
}

const BIND_ADDRESS = /^[A-Za-z0-9.:[\]*-]*$/;

function isPort(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= 65535;
}

/** Splits `addr:start-end` (the TCP bind value) into its port range; throws on anything else. */
export function parseTcpBind(value: string): PortRange {
  const match = /^(.*):(\d{1,5})-(\d{1,5})$/.exec(value);
  if (!match || !BIND_ADDRESS.test(match[1]!)) {
    throw new HaproxyConfigError('invalid tcpBind', [`expected addr:start-end, got ${JSON.stringify(value)}`]);
  }
  const start = Number(match[2]);
  const end = Number(match[3]);
  if (!isPort(start) || !isPort(end) || start > end) {
    throw new HaproxyConfigError('invalid tcpBind', [`port range ${start}-${end} is not within 1-65535 or is reversed`]);
  }
  return { start, end };
}

function isAddressAndPort(value: string): boolean {
  const match = /^(.*):(\d{1,5})$/.exec(value);
  return match !== null && BIND_ADDRESS.test(match[1]!) && isPort(Number(match[2]));
}

function checkValue(name: Placeholder, value: string): string | undefined {
  switch (name) {
    case 'runDir':
      if (!path.isAbsolute(value) || path.resolve(value) !== value) return `runDir must be an absolute, normalised path, got ${JSON.stringify(value)}`;
      // Spaces, quotes and '#' would split or end the config line the path is written into.
      if (!/^[A-Za-z0-9._/-]+$/.test(value)) return `runDir may only contain letters, digits and . _ / -, got ${JSON.stringify(value)}`;
      if (value.length > MAX_RUN_DIR_LENGTH) return `runDir is ${value.length} characters; unix socket paths need it at most ${MAX_RUN_DIR_LENGTH}`;
      return undefined;
    case 'httpBind':
      return isAddressAndPort(value) ? undefined : `httpBind must be addr:port, got ${JSON.stringify(value)}`;
    case 'statsBind':
      if (/^unix@\/[A-Za-z0-9._/-]+$/.test(value) || isAddressAndPort(value)) return undefined;
      return `statsBind must be addr:port or unix@/absolute/path, got ${JSON.stringify(value)}`;
    case 'tcpBind':
      try {
        parseTcpBind(value);
        return undefined;
      } catch (error) {
        return (error as HaproxyConfigError).problems.join('; ');
      }
    case 'maxconn': {
      const n = Number(value);
      if (!/^\d+$/.test(value) || n < 1 || n > MAX_MAXCONN) return `maxconn must be an integer from 1 to ${MAX_MAXCONN}, got ${JSON.stringify(value)}`;
      return undefined;
    }
    case 'hardStopAfter':
      if (!/^\d+(us|ms|s|m|h|d)?$/.test(value)) return `hardStopAfter must be an HAProxy time such as 30s or 5m, got ${JSON.stringify(value)}`;
      return undefined;
    case 'httpsBind':
      return isAddressAndPort(value) ? undefined : `httpsBind must be addr:port, got ${JSON.stringify(value)}`;
    case 'httpsPortSuffix':
      if (value === '' || (/^:\d{1,5}$/.test(value) && isPort(Number(value.slice(1))))) return undefined;
      return `httpsPortSuffix must be empty or :<port>, got ${JSON.stringify(value)}`;
    case 'tcpTls':
      return value === 'true' || value === 'false' ? undefined : `tcpTls must be true or false, got ${JSON.stringify(value)}`;
    case 'hstsMaxAge':
      return /^\d{1,10}$/.test(value) && Number(value) >= 1 ? undefined : `hstsMaxAge must be a whole number of seconds of at least 1, got ${JSON.stringify(value)}`;
  }
}

const SECTION = /\{\{\s*([#/])\s*([^{}]*?)\s*\}\}/g;

/**
 * Keeps or drops the template's `{{#name}} … {{/name}}` sections: kept when the value `name` is given and
 * not false. A section tag alone on its line takes the line with it, so dropped sections leave no blank
 * lines. Sections do not nest. Placeholders inside a dropped section need no value.
 */
function renderSections(template: string, enabled: (name: Placeholder) => boolean, problems: string[], used: Set<string>): string {
  // Tags alone on their lines (indentation allowed) lose the line around them.
  const text = template.replace(/^[ \t]*(\{\{\s*[#/][^{}]*\}\})[ \t]*\r?\n/gm, '$1');
  let out = '';
  let at = 0;
  let open: { name: string; bodyStart: number } | undefined;
  for (const match of text.matchAll(SECTION)) {
    const [tag, kind, name] = match as unknown as [string, '#' | '/', string];
    const index = match.index!;
    used.add(name);
    if (!(KNOWN_PLACEHOLDERS as readonly string[]).includes(name)) {
      problems.push(`unknown section {{${kind}${name}}}`);
      continue;
    }
    if (kind === '#') {
      if (open) {
        problems.push(`section {{#${name}}} opens inside {{#${open.name}}}: sections do not nest`);
        continue;
      }
      out += text.slice(at, index);
      open = { name, bodyStart: index + tag.length };
    } else {
      if (open?.name !== name) {
        problems.push(`{{/${name}}} closes ${open ? `{{#${open.name}}}` : 'no open section'}`);
        continue;
      }
      if (enabled(name as Placeholder)) out += text.slice(open.bodyStart, index);
      open = undefined;
    }
    at = index + tag.length;
  }
  if (open) problems.push(`section {{#${open.name}}} is never closed`);
  return out + text.slice(at);
}

/**
 * Fills the `{{name}}` placeholders of the template. Throws a HaproxyConfigError naming every unknown
 * placeholder, every missing or invalid value, and every required placeholder the template never uses.
 */
export function renderHaproxyConfig(template: string, values: HaproxyConfigValues): string {
  const problems: string[] = [];
  const supplied = values as unknown as Record<string, unknown>;
  for (const key of Object.keys(supplied)) {
    if (!(KNOWN_PLACEHOLDERS as readonly string[]).includes(key)) problems.push(`unknown value ${JSON.stringify(key)}`);
  }
  const resolved = new Map<Placeholder, string>();
  const defaults: Partial<Record<Placeholder, string>> = {
    maxconn: String(DEFAULT_MAXCONN),
    hardStopAfter: DEFAULT_HARD_STOP_AFTER,
    ...(typeof supplied.runDir === 'string' ? { statsBind: `unix@${runPaths(supplied.runDir).statsSocket}` } : {}),
  };
  for (const name of KNOWN_PLACEHOLDERS) {
    const raw = supplied[name];
    const value = raw === undefined || raw === null ? defaults[name] : String(raw);
    if (value === undefined) continue;
    const problem = checkValue(name, value);
    if (problem) problems.push(problem);
    else resolved.set(name, value);
  }

  const used = new Set<string>();
  const enabled = (name: Placeholder): boolean => supplied[name] !== undefined && supplied[name] !== null && supplied[name] !== false;
  const withSections = renderSections(template, enabled, problems, used);
  const rendered = withSections.replace(/\{\{\s*([^{}]*?)\s*\}\}/g, (whole, name: string) => {
    used.add(name);
    if (!(KNOWN_PLACEHOLDERS as readonly string[]).includes(name)) {
      problems.push(`unknown placeholder {{${name}}}`);
      return whole;
    }
    const value = resolved.get(name as Placeholder);
    if (value === undefined) {
      if (supplied[name] === undefined) problems.push(`missing value for placeholder {{${name}}}`);
      return whole;
    }
    return value;
  });
  for (const name of REQUIRED_PLACEHOLDERS) {
    if (!used.has(name)) problems.push(`template never uses {{${name}}}`);
  }
  for (const name of USED_WHEN_GIVEN) {
    if (enabled(name) && !used.has(name)) problems.push(`${name} is given but the template never uses {{${name}}} (or a {{#${name}}} section)`);
  }
  if (problems.length === 0) {
    const stray = rendered.split('\n').findIndex((line) => line.includes('{{') || line.includes('}}'));
    if (stray >= 0) problems.push(`malformed placeholder on line ${stray + 1}`);
  }
  if (problems.length > 0) throw new HaproxyConfigError('cannot render the HAProxy configuration', [...new Set(problems)]);
  return rendered;
}

/** Map keys and values are whitespace-separated on one line; anything else would corrupt the file. */
const MAP_FIELD = /^[\x21-\x7e]+$/;

/** Digit-only keys (a port map's) compare as numbers: shorter first, then character by character. */
const DIGITS = /^\d+$/;
const compareNumbers = (a: string, b: string): number => a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);

/**
 * The text of a map file: a comment line, then `key value` lines sorted by key (stable diffs on disk):
 * ports in numeric order, tokens in character order. Neither needs a collator, which made sorting 20,000
 * tokens take ~40 ms of the router's event loop, once a second under churn, instead of ~8 ms.
 */
export function renderMap(entries: ReadonlyMap<string, string>): string {
  const lines: string[] = ['# managed by manticore: do not edit, the router rewrites this file'];
  const keys = [...entries.keys()];
  keys.sort(keys.every((key) => DIGITS.test(key)) ? compareNumbers : undefined);
  for (const key of keys) {
    const value = entries.get(key)!;
    if (!MAP_FIELD.test(key) || key.startsWith('#')) throw new HaproxyConfigError('invalid map entry', [`key ${redactSecret(key)} is empty or holds spaces or control characters`]);
    if (!MAP_FIELD.test(value)) throw new HaproxyConfigError('invalid map entry', [`value for key ${redactSecret(key)} is empty or holds spaces or control characters`]);
    lines.push(`${key} ${value}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Reads a map file as HAProxy does (blank lines and `#` comments skipped); rejects lines without a value and duplicates. */
export function parseMap(text: string): Map<string, string> {
  const entries = new Map<string, string>();
  const problems: string[] = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const match = /^(\S+)\s+(.+)$/.exec(line);
    if (!match) {
      problems.push(`line ${index + 1}: no value`);
      return;
    }
    const key = match[1]!;
    if (entries.has(key)) {
      problems.push(`line ${index + 1}: duplicate key ${redactSecret(key)}`);
      return;
    }
    entries.set(key, match[2]!);
  });
  if (problems.length > 0) throw new HaproxyConfigError('invalid map file', problems);
  return entries;
}

/** A session token as it appears as the first DNS label of the session's hostname. */
const TOKEN_PATTERN = /^[a-z0-9]{1,63}$/;
const BACKEND_PATTERN = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3}):(\d{1,5})$/;

/** True for `a.b.c.d:port` with octets 0-255 and port 1-65535 (what set-dst/set-dst-port can take). */
function isValidBackend(value: string): boolean {
  const match = BACKEND_PATTERN.exec(value);
  if (!match) return false;
  const octets = match.slice(1, 5).map(Number);
  return octets.every((o) => o <= 255) && isPort(Number(match[5]));
}

/** Shows enough of a secret (token/hostname) to tell entries apart in logs and errors, not enough to use it. */
export function redactSecret(secret: string): string {
  return secret.length <= 4 ? `…(${secret.length} chars)` : `${secret.slice(0, 4)}…(${secret.length} chars)`;
}

export interface RouteTableInput {
  readonly hosts: ReadonlyMap<string, string>;
  readonly ports: ReadonlyMap<number, string>;
}

/**
 * Checks every route before anything reaches HAProxy: tokens `[a-z0-9]+` (one DNS label), backends
 * IPv4 `ip:port`, public ports integers within `tcpPorts` (or 1-65535). Throws listing the problems.
 */
export function validateRouteTable(table: RouteTableInput, tcpPorts?: PortRange): void {
  const problems: string[] = [];
  for (const [token, backend] of table.hosts) {
    if (typeof token !== 'string' || !TOKEN_PATTERN.test(token)) problems.push(`host token ${redactSecret(String(token))} is not 1-63 of [a-z0-9]`);
    else if (typeof backend !== 'string' || !isValidBackend(backend)) problems.push(`backend ${JSON.stringify(backend)} of host ${redactSecret(token)} is not ipv4:port`);
  }
  for (const [port, backend] of table.ports) {
    const low = tcpPorts?.start ?? 1;
    const high = tcpPorts?.end ?? 65535;
    if (typeof port !== 'number' || !Number.isInteger(port) || port < low || port > high) problems.push(`public port ${JSON.stringify(port)} is not an integer in ${low}-${high}`);
    else if (typeof backend !== 'string' || !isValidBackend(backend)) problems.push(`backend ${JSON.stringify(backend)} of port ${port} is not ipv4:port`);
  }
  if (problems.length > 0) {
    const shown = problems.slice(0, 10);
    if (problems.length > shown.length) shown.push(`and ${problems.length - shown.length} more`);
    throw new HaproxyConfigError('invalid route table', shown);
  }
}
