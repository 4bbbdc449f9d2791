import net from 'node:net';
import path from 'node:path';

/**
 * A client for HAProxy's Runtime API (the stats/admin socket, or the master CLI) over a unix socket.
 * Each command uses its own connection in non-interactive mode: HAProxy reads one line, answers and
 * closes. HAProxy reports errors as ordinary text, so replies are classified here. Connections to one
 * socket are bounded across every client in the process (MAX_CONNECTIONS_PER_SOCKET); commands beyond
 * that wait their turn.
 */

export interface MapEntry {
  /** HAProxy's reference for the entry (`0x...`), useful only for debugging. */
  readonly ref: string;
  readonly key: string;
  readonly value: string;
}

export interface HaproxyRuntimeOptions {
  /** Give up on a command after this long (default 10 s). */
  readonly timeoutMs?: number;
  /**
   * Prefix each command with `set severity-output number` so HAProxy tags its messages with a syslog
   * severity and errors can be told from output reliably. The master CLI lacks the command: turn off there.
   */
  readonly severityOutput?: boolean;
}

export class HaproxyRuntimeError extends Error {
  constructor(
    /** The command with secret arguments (map keys and values) redacted. */
    readonly command: string,
    /** HAProxy's reply, or the socket error. */
    readonly reply: string,
    readonly socketPath: string,
    options?: { cause?: unknown },
  ) {
    super(`HAProxy runtime command "${command}" on ${socketPath} failed: ${reply}`, options);
    this.name = 'HaproxyRuntimeError';
  }
}

/**
 * A request (command plus payload) must fit HAProxy's 16 KB buffer (tune.bufsize). HAProxy 2.6 drops a
 * larger one silently, closing the connection with no reply and no change, so refuse it here.
 */
export const MAX_REQUEST_BYTES = 15_000;

/**
 * HAProxy serves at most `stats maxconn` connections (10 by default) on a stats socket at once; further
 * connects wait in a short listen backlog and are then refused at once (EAGAIN), so a burst of commands
 * would lose most of them. Half of HAProxy's default leaves room for an operator's own commands.
 */
export const MAX_CONNECTIONS_PER_SOCKET = 5;

/** Runs at most `limit` tasks at once, the rest in the order they came. */
class ConnectionGate {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(private readonly limit: number) {}

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active < this.limit) this.active++;
    // The slot is handed over by the task that finishes, so `active` stays counted.
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await task();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}

/** One gate per socket: the limit is HAProxy's, shared by every client of that socket in this process. */
const gates = new Map<string, ConnectionGate>();

function gateFor(socketPath: string): ConnectionGate {
  const key = path.resolve(socketPath);
  let gate = gates.get(key);
  if (!gate) {
    gate = new ConnectionGate(MAX_CONNECTIONS_PER_SOCKET);
    gates.set(key, gate);
  }
  return gate;
}

/** Map and ACL commands: `<verb> map [@<ver>] <file> <key> <value>`; everything after the file may be secret. */
const MAP_VERBS = new Set(['add', 'set', 'del', 'get', 'show', 'clear', 'prepare', 'commit']);

/** The command as safe to log: verb, map, version and file kept; keys, values and payloads redacted. */
export function describeCommand(command: string): string {
  const firstLine = command.split('\n', 1)[0]!;
  const hasPayload = firstLine.trimEnd().endsWith('<<');
  const words = firstLine.trim().split(/\s+/).filter((w) => w !== '<<');
  let keep: number;
  if (words.length >= 2 && MAP_VERBS.has(words[0]!) && (words[1] === 'map' || words[1] === 'acl')) {
    keep = words[2]?.startsWith('@') ? 4 : 3;
  } else if (words[1] === 'ssl' && words[2] === 'cert') {
    // The certificate's file name is no secret; its payload (the private key) is.
    keep = 4;
  } else {
    keep = 2;
  }
  const kept = words.slice(0, keep);
  const redacted = words.length - kept.length;
  if (redacted > 0) kept.push(`<${redacted} argument${redacted === 1 ? '' : 's'} redacted>`);
  if (hasPayload) kept.push('<payload redacted>');
  return kept.join(' ');
}

/** Replies that mean the command failed though no severity tag says so. */
const UNTAGGED_ERRORS = [/^Unknown command/, /^Permission denied/, /^Unknown map identifier/, /^Missing /, /^Key not found/, /^entry not found/i];

/**
 * Splits a reply into its text and whether HAProxy reported an error. With severity output on, error
 * messages start with `[N]: ` where N ≤ 3 (emerg..err); `Unknown command` is tagged as info (6) in 2.6,
 * so a few untagged forms are recognised by their text too.
 */
export function classifyReply(raw: string, severityOutput: boolean): { readonly text: string; readonly error: boolean } {
  // `set severity-output` answers with an empty line of its own before the real command's reply.
  let text = severityOutput && raw.startsWith('\n') ? raw.slice(1) : raw;
  let error = false;
  const tagged = /^\[(\d)\]: /.exec(text);
  if (tagged) {
    error = Number(tagged[1]) <= 3;
    text = text.slice(tagged[0].length);
  }
  if (UNTAGGED_ERRORS.some((pattern) => pattern.test(text))) error = true;
  return { text: text.replace(/\n+$/, ''), error };
}

/**
 * The failures in the reply to several commands sent as one line: each command's tagged error (`[N]: …`
 * with N ≤ 3) or untagged error text, in order. Commands that succeed silently add only blank lines.
 */
export function replyErrors(raw: string): string[] {
  const errors: string[] = [];
  for (const line of raw.split('\n')) {
    const tagged = /^\[(\d)\]: (.*)$/.exec(line);
    const text = tagged ? tagged[2]! : line;
    if ((tagged && Number(tagged[1]) <= 3) || UNTAGGED_ERRORS.some((pattern) => pattern.test(text))) errors.push(text);
  }
  return errors;
}

/** Parses `show map <file>` output: one `<ref> <key> <value>` line per entry, duplicates kept. */
export function parseShowMap(text: string): MapEntry[] {
  const entries: MapEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const match = /^(\S+) (\S+) ?(.*)$/.exec(line);
    if (!match) throw new Error(`unexpected line in show map output (${line.length} chars)`);
    entries.push({ ref: match[1]!, key: match[2]!, value: match[3]! });
  }
  return entries;
}

/** Map keys, values and file names travel inside one command line; spaces or control characters would split it. */
function checkArgument(what: string, value: string): void {
  if (!/^[\x21-\x7e]+$/.test(value) || value.includes(';') || value.includes('\\')) {
    throw new Error(`refusing to send a ${what} with spaces, control characters, ';' or '\\' to HAProxy`);
  }
}

/** Groups commands, in order, so that each group joined with `; ` stays within `maxBytes`. */
function* joinedWithin(commands: readonly string[], maxBytes: number): Generator<string[]> {
  let batch: string[] = [];
  let bytes = 0;
  for (const command of commands) {
    const size = Buffer.byteLength(command) + 2;
    if (size > maxBytes) throw new Error(`a runtime command of ${size} bytes exceeds the ${maxBytes} bytes a request may hold`);
    if (batch.length > 0 && bytes + size > maxBytes) {
      yield batch;
      batch = [];
      bytes = 0;
    }
    batch.push(command);
    bytes += size;
  }
  if (batch.length > 0) yield batch;
}

export class HaproxyRuntime {
  private readonly timeoutMs: number;
  private readonly severityOutput: boolean;
  private readonly gate: ConnectionGate;

  constructor(
    readonly socketPath: string,
    options: HaproxyRuntimeOptions = {},
  ) {
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.severityOutput = options.severityOutput ?? true;
    this.gate = gateFor(socketPath);
  }

  /**
   * Runs one command on a fresh connection and returns HAProxy's reply (trailing blank lines removed).
   * `payload` lines follow a command that ends in `<<` and are terminated by an empty line.
   * Throws HaproxyRuntimeError on a socket problem, a timeout or an error reply.
   */
  async execute(command: string, payload?: readonly string[]): Promise<string> {
    const described = describeCommand(command);
    if (command.includes('\n') || command.includes('\r')) {
      throw new HaproxyRuntimeError(described, 'command contains a line break', this.socketPath);
    }
    if (payload?.some((line) => line.trim() === '' || /[\r\n]/.test(line))) {
      throw new HaproxyRuntimeError(described, 'payload lines must be non-empty single lines', this.socketPath);
    }
    const line = payload ? `${command} <<\n${payload.join('\n')}\n` : command;
    const wire = `${this.severityOutput ? 'set severity-output number; ' : ''}${line}\n`;
    if (Buffer.byteLength(wire) > MAX_REQUEST_BYTES) {
      throw new HaproxyRuntimeError(described, `request of ${Buffer.byteLength(wire)} bytes exceeds ${MAX_REQUEST_BYTES}; split the payload`, this.socketPath);
    }
    const raw = await this.exchange(wire, described);
    const { text, error } = classifyReply(raw, this.severityOutput);
    if (error) throw new HaproxyRuntimeError(described, text, this.socketPath);
    return text;
  }

  /**
   * Runs commands that print nothing when they succeed, several per request: joined with `;` on one line,
   * which HAProxy runs in turn, going on past a failure. One round trip instead of one connection each,
   * every request within MAX_REQUEST_BYTES. Throws naming the failures, except those `tolerate` matches.
   */
  private async executeQuietly(commands: readonly string[], tolerate?: RegExp): Promise<void> {
    const prefix = this.severityOutput ? 'set severity-output number; ' : '';
    for (const batch of joinedWithin(commands, MAX_REQUEST_BYTES - Buffer.byteLength(prefix) - 1)) {
      const described = `${describeCommand(batch[0]!)}${batch.length > 1 ? ` and ${batch.length - 1} more` : ''}`;
      if (batch.some((command) => /[\r\n;]/.test(command))) {
        throw new HaproxyRuntimeError(described, 'a command contains a line break or a separator', this.socketPath);
      }
      const errors = replyErrors(await this.exchange(`${prefix}${batch.join('; ')}\n`, described)).filter((error) => !tolerate?.test(error));
      if (errors.length > 0) throw new HaproxyRuntimeError(described, errors.join('; '), this.socketPath);
    }
  }

  /**
   * Sends one request on a connection of its own, once the socket's gate lets it; the timeout starts at the
   * connect. With severity output on, HAProxy ends every complete reply with a blank line: a reply without one
   * was cut short, and its command may not have run (HAProxy drops a request larger than its buffer, answering
   * only the severity command; a worker going away may end a listing half way).
   */
  private async exchange(wire: string, described: string): Promise<string> {
    const raw = await this.gate.run(() => this.exchangeNow(wire, described));
    if (this.severityOutput && !raw.endsWith('\n\n')) {
      throw new HaproxyRuntimeError(described, `HAProxy closed the connection before its reply was complete (${raw.length} bytes)`, this.socketPath);
    }
    return raw;
  }

  private exchangeNow(wire: string, described: string): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let settled = false;
      const socket = net.createConnection(this.socketPath);
      const finish = (error?: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        if (error) reject(new HaproxyRuntimeError(described, error.message, this.socketPath, { cause: error }));
        else resolve(Buffer.concat(chunks).toString('utf8'));
      };
      const timer = setTimeout(() => finish(new Error(`no complete reply within ${this.timeoutMs} ms`)), this.timeoutMs);
      // Half-closing our side tells the master CLI (which otherwise waits for more) that the request is complete.
      socket.once('connect', () => socket.end(wire));
      socket.on('data', (chunk: Buffer) => chunks.push(chunk));
      socket.once('end', () => finish());
      socket.once('close', () => finish());
      socket.once('error', (error) => finish(error));
    });
  }

  /** `show info` as a name → value record (Pid, Uptime_sec, CurrConns, …). */
  async showInfo(): Promise<Record<string, string>> {
    const info: Record<string, string> = {};
    for (const line of (await this.execute('show info')).split('\n')) {
      const at = line.indexOf(':');
      if (at > 0) info[line.slice(0, at)] = line.slice(at + 1).trim();
    }
    return info;
  }

  /** Every entry of a map, in HAProxy's order, duplicates included. */
  async showMap(file: string): Promise<MapEntry[]> {
    checkArgument('map file', file);
    return parseShowMap(await this.execute(`show map ${file}`));
  }

  /** Adds an entry (HAProxy keeps duplicates: the first one wins lookups). */
  async addMap(file: string, key: string, value: string): Promise<void> {
    for (const [what, arg] of [['map file', file], ['map key', key], ['map value', value]] as const) checkArgument(what, arg);
    await this.execute(`add map ${file} ${key} ${value}`);
  }

  /** Adds many entries with one command (payload form); the caller keeps each payload well under tune.bufsize. */
  async addMapEntries(file: string, entries: ReadonlyArray<readonly [string, string]>, version?: number): Promise<void> {
    if (entries.length === 0) return;
    checkArgument('map file', file);
    for (const [key, value] of entries) {
      checkArgument('map key', key);
      checkArgument('map value', value);
    }
    const target = version === undefined ? file : `@${version} ${file}`;
    await this.execute(`add map ${target}`, entries.map(([key, value]) => `${key} ${value}`));
  }

  /** Changes the value of an existing key; HAProxy replies "entry not found" (an error here) if it is absent. */
  async setMap(file: string, key: string, value: string): Promise<void> {
    for (const [what, arg] of [['map file', file], ['map key', key], ['map value', value]] as const) checkArgument(what, arg);
    await this.execute(`set map ${file} ${key} ${value}`);
  }

  /** Removes every entry with this key; HAProxy replies "Key not found" (an error here) if there is none. */
  async delMap(file: string, key: string): Promise<void> {
    checkArgument('map file', file);
    checkArgument('map key', key);
    await this.execute(`del map ${file} ${key}`);
  }

  /** Removes every entry of each key, in as few requests as fit; keys already absent are not an error. */
  async delMapEntries(file: string, keys: readonly string[]): Promise<void> {
    checkArgument('map file', file);
    for (const key of keys) checkArgument('map key', key);
    await this.executeQuietly(
      keys.map((key) => `del map ${file} ${key}`),
      /^Key not found/,
    );
  }

  /**
   * Replaces a certificate HAProxy loaded from `file` (its `crt` path) with `pem` (chain and key), for new
   * handshakes only: open connections keep theirs. A transaction that fails to commit is aborted, so the
   * next attempt starts clean. Throws with HAProxy's reason (e.g. a key that does not match, or one too weak
   * for its OpenSSL).
   */
  async replaceSslCert(file: string, pem: string): Promise<void> {
    checkArgument('certificate file', file);
    const lines = pem.split(/\r?\n/).filter((line) => line.trim() !== '');
    try {
      await this.execute(`set ssl cert ${file}`, lines);
      const committed = await this.execute(`commit ssl cert ${file}`);
      // A certificate HAProxy cannot load is answered "Failed!" with no severity tag: only "Success!" means it took it.
      if (!/^Success!$/m.test(committed)) throw new HaproxyRuntimeError(`commit ssl cert ${file}`, committed.replace(/\n+/g, ' '), this.socketPath);
    } catch (error) {
      await this.execute(`abort ssl cert ${file}`).catch(() => undefined);
      throw error;
    }
  }

  /** `show ssl cert <file>`: what HAProxy serves from that certificate (Serial, notAfter, Subject, …). */
  async showSslCert(file: string): Promise<Record<string, string>> {
    checkArgument('certificate file', file);
    const fields: Record<string, string> = {};
    for (const line of (await this.execute(`show ssl cert ${file}`)).split('\n')) {
      const at = line.indexOf(':');
      if (at > 0) fields[line.slice(0, at)] = line.slice(at + 1).trim();
    }
    return fields;
  }

  /** Starts a new, empty version of a map for an atomic swap; returns the version number. */
  async prepareMap(file: string): Promise<number> {
    checkArgument('map file', file);
    const reply = await this.execute(`prepare map ${file}`);
    const match = /New version created:\s*(\d+)/.exec(reply);
    if (!match) throw new HaproxyRuntimeError(`prepare map ${file}`, `unexpected reply: ${reply}`, this.socketPath);
    return Number(match[1]);
  }

  /** Adds an entry to a prepared (not yet visible) version of a map. */
  async addMapVersion(version: number, file: string, key: string, value: string): Promise<void> {
    for (const [what, arg] of [['map file', file], ['map key', key], ['map value', value]] as const) checkArgument(what, arg);
    await this.execute(`add map @${version} ${file} ${key} ${value}`);
  }

  /** Makes a prepared version the live one, atomically, and drops older versions. */
  async commitMap(version: number, file: string): Promise<void> {
    checkArgument('map file', file);
    await this.execute(`commit map @${version} ${file}`);
  }
}
