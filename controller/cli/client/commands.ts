import { once } from 'node:events';
import os from 'node:os';
import type { WriteStream } from 'node:tty';
import { parseArgs } from 'node:util';
import type { Session } from '../../api/types.js';
import { isUserId, userIdRule } from '../../frontend/identity.js';
import { jitteredBackoffMs } from '../../util/backoff.js';
import { FrontendClient, FrontendError, InterruptedError, TokenExpiredError, UnreachableError, type LogQuery, type TemplateSummary } from './frontend-client.js';
import { clusterView, describeSession, detail, limitsView, progressLine, sessionTable, templateTable } from './format.js';

/** Exit codes the client commands promise to scripts. */
export const exitCodes = {
  ok: 0,
  /** The front end could not be reached or failed (network error, 5xx, not a Manticore API). */
  unavailable: 1,
  usage: 2,
  /** 404: no such session (or not yours), no such template. */
  notFound: 3,
  /**
   * Any other 4xx: invalid request, not allowed (401, 403), a limit reached (409), rate limited (429); and a
   * watch or log follow whose stream the front end closed because the token expired.
   */
  refused: 4,
  /** `watch` (or `create --wait`): the session failed or was deleted before it was Ready. */
  sessionEnded: 5,
  /**
   * Ctrl-C stopped `watch` (or `create --wait`) before the session was Ready, or any command but `logs` before the
   * front end answered: 128 + SIGINT, as a shell reports it.
   */
  interrupted: 130,
} as const;

export const clientUsage = `Client commands (talk to a front end; no cluster access needed):
  sessions list                         your sessions
  sessions get ID                       one session: phase, queue position, addresses, recent events
  sessions create --template NAME [--param NAME=VALUE ...] [--label NAME=VALUE ...]
                  [--idle-timeout SECONDS] [--wait]
                                        ask for a session; --idle-timeout ends it after that long
                                        idle instead of the operator's default (0: never), within the
                                        operator's limits; --wait follows it until Ready (like watch)
  sessions delete ID                    end a session (its workload and addresses are torn down)
  sessions keepalive ID                 record activity, so an idle session is not ended; prints
                                        when it now expires
  sessions watch ID                     follow a session live (queue position, phase) until it is Ready;
                                        exits 5 if it fails or ends first, 130 on Ctrl-C (it keeps running)
  sessions logs ID [--task NAME] [--stream stdout|stderr] [--tail N] [--follow]
                                        a task's output (default: the first task's stdout, all of it
                                        that is kept); --tail N the last N lines; --follow keeps
                                        printing as it is written, until Ctrl-C or the session ends;
                                        a Failed session's log is printed to its end, then the reason
  templates [NAME]                      the session templates and their parameters, in lines cut to the
                                        terminal's width (100 columns when not a terminal); with NAME, why
                                        it is unavailable, its description and its parameters' values in
                                        full, and its services
  limits                                what your creates are held to: sessions per user, the idle
                                        timeout a session gets and the --idle-timeout it may ask for,
                                        the idle warning, the maximum lifetime
  status                                operators: who leads, controller replicas, routers and how far
                                        behind they are, sessions by phase and the oldest wait

Client options:
  --url URL                 the front end (env MANTICORE_URL; default http://127.0.0.1:4000)
  --token TOKEN             bearer token: a JWT, or the operators' admin token (env MANTICORE_TOKEN)
  --user NAME               who you are in auth mode "none", where a token other than the admin token
                            is ignored (env MANTICORE_USER; default: the login name, and needed
                            without a token when that cannot be read or is not a user name)
  -o, --output table|json   json prints the API's objects (watch: one JSON object per line; not for logs,
                            which prints the log's text)

Exit codes: 0 success, 1 front end unreachable or failing, 2 bad usage, 3 not found, 4 refused
(invalid, not allowed, limit reached, rate limited, the token expired while following), 5 the watched
session failed or ended before Ready, 130 Ctrl-C stopped a watch (or create --wait) before Ready (the
session keeps running) or a command before the front end answered (a create, delete or keepalive may
have been carried out all the same).
`;

export interface ClientIo {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
  readonly env: NodeJS.ProcessEnv;
  /** Aborts a running watch (Ctrl-C). */
  readonly signal?: AbortSignal;
}

class UsageError extends Error {}

type Output = 'table' | 'json';

interface Invocation {
  readonly client: FrontendClient;
  readonly output: Output;
  readonly args: string[];
  readonly values: {
    template?: string;
    param?: string[];
    label?: string[];
    'idle-timeout'?: string;
    wait?: boolean;
    task?: string;
    stream?: string;
    tail?: string;
    follow?: boolean;
  };
  readonly io: ClientIo;
}

export type ClientCommand = 'sessions' | 'templates' | 'limits' | 'status';

/** Runs `manticore sessions|templates|limits|status …`; returns the exit code. */
export async function runClientCommand(command: ClientCommand, argv: string[], io: ClientIo): Promise<number> {
  try {
    const invocation = parse(argv, io);
    if (invocation === 'help') {
      io.stdout.write(clientUsage);
      return exitCodes.ok;
    }
    if (command !== 'sessions') refuseMisplaced(invocation.values, undefined);
    if (command === 'templates') return await templates(invocation);
    if (command === 'limits') return await limits(invocation);
    if (command === 'status') return await status(invocation);
    return await sessions(invocation);
  } catch (error) {
    return reportError(error, command, io);
  }
}

/** The options that take a whole number, and what it counts. */
const wholeNumberOptions = { tail: 'a whole number of lines', 'idle-timeout': 'a whole number of seconds (0: never)' } as const;

type WholeNumberOption = keyof typeof wholeNumberOptions;

/** The value of a whole-number option; the front end checks it against its limits. */
function wholeNumber(option: WholeNumberOption, given: string): number {
  if (!/^\d{1,15}$/.test(given)) throw new UsageError(`--${option} wants ${wholeNumberOptions[option]}, got "${given}"`);
  return Number(given);
}

function parse(argv: string[], io: ClientIo): Invocation | 'help' {
  // parseArgs refuses a value starting with a dash (`--tail -1`) as ambiguous without saying what the option takes.
  for (let at = 0; at < argv.length - 1 && argv[at] !== '--'; at++) {
    const option = argv[at]!.slice(2);
    if (argv[at]!.startsWith('--') && Object.hasOwn(wholeNumberOptions, option) && argv[at + 1]!.startsWith('-')) wholeNumber(option as WholeNumberOption, argv[at + 1]!);
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        url: { type: 'string' },
        token: { type: 'string' },
        user: { type: 'string' },
        output: { type: 'string', short: 'o', default: 'table' },
        template: { type: 'string', short: 't' },
        param: { type: 'string', short: 'p', multiple: true },
        label: { type: 'string', short: 'l', multiple: true },
        'idle-timeout': { type: 'string' },
        wait: { type: 'boolean', short: 'w' },
        task: { type: 'string' },
        stream: { type: 'string' },
        tail: { type: 'string' },
        follow: { type: 'boolean', short: 'f' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) return 'help';
  if (values.output !== 'table' && values.output !== 'json') throw new UsageError(`--output must be table or json, not "${values.output}"`);
  const token = values.token ?? nonEmpty(io.env.MANTICORE_TOKEN);
  const named = values.user ?? nonEmpty(io.env.MANTICORE_USER);
  // The front end's rule: a name it would refuse (HTTP 400) is a usage error here.
  if (named !== undefined && !isUserId(named)) throw new UsageError(`${values.user === undefined ? 'MANTICORE_USER' : '--user'} wants ${userIdRule}, got "${named}"`);
  const user = named ?? defaultUser(token !== undefined);
  let client: FrontendClient;
  try {
    client = new FrontendClient({ url: values.url ?? nonEmpty(io.env.MANTICORE_URL) ?? 'http://127.0.0.1:4000', token, user, ...(io.signal === undefined ? {} : { signal: io.signal }) });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  return { client, output: values.output, args: positionals, values, io };
}

/** The options of one `sessions` verb. */
const verbOptions: Readonly<Record<string, ReadonlyArray<keyof Invocation['values']>>> = {
  create: ['template', 'param', 'label', 'idle-timeout', 'wait'],
  logs: ['task', 'stream', 'tail', 'follow'],
};

/** Refuses, rather than ignores, an option given to any but its `sessions` verb (`verb`: the one given, if any). */
function refuseMisplaced(values: Invocation['values'], verb: string | undefined): void {
  for (const [owner, flags] of Object.entries(verbOptions)) {
    const misplaced = flags.filter((flag) => values[flag] !== undefined);
    if (misplaced.length > 0 && verb !== owner) throw new UsageError(`--${misplaced.join(', --')} ${misplaced.length === 1 ? 'goes' : 'go'} only with "sessions ${owner}"`);
  }
}

async function templates({ client, output, args, io }: Invocation): Promise<number> {
  if (args.length > 1) throw new UsageError(`templates takes at most one name, got ${args.length}`);
  const found: TemplateSummary[] = args.length === 1 ? [await client.template(args[0]!)] : await client.templates();
  io.stdout.write(output === 'json' ? `${JSON.stringify(args.length === 1 ? found[0] : found, null, 2)}\n` : templateTable(found, args.length === 1, outputWidth(io.stdout)));
  return exitCodes.ok;
}

/** The width tables are fitted to: the terminal's, or 100 columns when the output is not a terminal (a pipe, a file). */
function outputWidth(stdout: NodeJS.WritableStream): number {
  const { isTTY, columns } = stdout as Partial<WriteStream>;
  return isTTY === true && columns !== undefined && columns > 0 ? columns : 100;
}

async function limits({ client, output, args, io }: Invocation): Promise<number> {
  if (args.length > 0) throw new UsageError('limits takes no arguments');
  const answer = await client.limits();
  io.stdout.write(output === 'json' ? `${JSON.stringify(answer, null, 2)}\n` : limitsView(answer));
  return exitCodes.ok;
}

async function status({ client, output, args, io }: Invocation): Promise<number> {
  if (args.length > 0) throw new UsageError('status takes no arguments');
  const cluster = await client.cluster();
  io.stdout.write(output === 'json' ? `${JSON.stringify(cluster, null, 2)}\n` : clusterView(cluster));
  return exitCodes.ok;
}

async function sessions(invocation: Invocation): Promise<number> {
  const { client, output, args, values, io } = invocation;
  const [verb, ...rest] = args;
  const print = (session: Session): void => void io.stdout.write(output === 'json' ? `${JSON.stringify(session, null, 2)}\n` : describeSession(session));
  refuseMisplaced(values, verb);
  const id = (): string => {
    if (rest.length !== 1) throw new UsageError(`sessions ${verb} takes one session id`);
    return rest[0]!;
  };
  switch (verb) {
    case 'list': {
      if (rest.length > 0) throw new UsageError('sessions list takes no arguments');
      const items = await client.listSessions();
      io.stdout.write(output === 'json' ? `${JSON.stringify(items, null, 2)}\n` : sessionTable(items));
      return exitCodes.ok;
    }
    case 'get':
      print(await client.getSession(id()));
      return exitCodes.ok;
    case 'create': {
      if (rest.length > 0) throw new UsageError('sessions create takes options only (--template NAME, --param NAME=VALUE)');
      if (values.template === undefined) throw new UsageError('sessions create needs --template NAME (see: manticore templates)');
      const session = await client
        .createSession({
          template: values.template,
          parameters: pairs('--param', values.param),
          ...(values.label === undefined ? {} : { labels: pairs('--label', values.label) }),
          ...(values['idle-timeout'] === undefined ? {} : { idle: { timeoutSeconds: wholeNumber('idle-timeout', values['idle-timeout']) } }),
        })
        .catch((error: unknown) => {
          // The store may have taken the write before its answer was lost: creating again could make two.
          if (!(error instanceof FrontendError && error.statusCode === 503)) throw error;
          throw new FrontendError(503, error.message, [...error.details, 'the session may have been created all the same: run manticore sessions list before creating another']);
        });
      if (!values.wait) {
        print(session);
        return exitCodes.ok;
      }
      if (output === 'table') io.stdout.write(`session ${session.metadata.id} created\n`);
      return follow(invocation, session.metadata.id, Date.now());
    }
    case 'delete': {
      const session = await client.deleteSession(id());
      io.stdout.write(output === 'json' ? `${JSON.stringify(session, null, 2)}\n` : `session ${session.metadata.id} is being deleted\n`);
      return exitCodes.ok;
    }
    case 'keepalive': {
      const kept = await client.keepalive(id());
      io.stdout.write(output === 'json' ? `${JSON.stringify(kept, null, 2)}\n` : `session ${kept.id} kept alive${kept.expiresAt ? ` (expires ${kept.expiresAt})` : ''}\n`);
      return exitCodes.ok;
    }
    case 'watch':
      return follow(invocation, id());
    case 'logs':
      return logs(invocation, id());
    case undefined:
      throw new UsageError(`sessions needs a verb: ${sessionVerbs}`);
    default:
      throw new UsageError(`unknown verb "sessions ${verb}": use ${sessionVerbs}`);
  }
}

const sessionVerbs = 'list, get, create, delete, keepalive, watch or logs';

/** How long `watch` and `logs --follow` keep trying to reconnect after the front end was last heard from. */
const reconnectForMs = 30_000;

/**
 * Whether a stream that failed with `error` is opened again: only one the front end has answered for
 * (`lastNews`: its last event or keep-alive), up to 30 s after that. A front end never reached (a wrong
 * --url, one that is down) fails at once, as every other command does.
 */
function mayReconnect(error: unknown, lastNews: number | undefined): error is UnreachableError {
  return error instanceof UnreachableError && lastNews !== undefined && Date.now() - lastNews <= reconnectForMs;
}

/** Whether `error` says that a session the front end has answered for (`lastNews`) has gone since: 404 on a reconnection. */
function endedMeanwhile(error: unknown, lastNews: number | undefined): boolean {
  return error instanceof FrontendError && error.statusCode === 404 && lastNews !== undefined;
}

/**
 * Prints the session's progress on every change until it is Ready (0), fails or ends first (5), or Ctrl-C (130). A
 * stream closed by a front end shutting down, or broken, is opened again (another replica answers behind
 * a load balancer) for up to 30 s without word from the front end (an event, or its keep-alive); one closed
 * because its token expired is not, as the token would be refused (exit 4). `answeredAt`: when the front end last answered about the session (its create), if it has.
 */
async function follow({ client, output, io }: Invocation, id: string, answeredAt?: number): Promise<number> {
  let lastLine = '';
  let lastNews = answeredAt;
  const gone = (): number => {
    io.stderr.write(`manticore: session ${id} is gone: it was deleted before it was Ready\n`);
    return exitCodes.sessionEnded;
  };
  for (let attempt = 0; ; attempt++) {
    try {
      for await (const update of client.watch(id, io.signal)) {
        lastNews = Date.now();
        attempt = 0;
        if (update.kind === 'alive') continue;
        if (update.kind === 'closing') break;
        if (update.kind === 'gone') return gone();
        const { session } = update;
        if (output === 'json') io.stdout.write(`${JSON.stringify(session)}\n`);
        else {
          const line = progressLine(session);
          if (line !== lastLine) io.stdout.write(`${new Date().toISOString().slice(11, 19)}  ${line}\n`);
          lastLine = line;
        }
        if (session.status.phase === 'Ready') {
          if (output === 'table') io.stdout.write(describeSession(session));
          return exitCodes.ok;
        }
        if (session.status.phase === 'Failed') {
          const why = detail(session);
          // A stopped workload's logs are kept and usually say more; one failed before it had a workload has none.
          const logs = session.status.allocationId === undefined ? '' : `; its logs may say why: manticore sessions logs ${id} --stream stderr`;
          io.stderr.write(`manticore: session ${id} failed${why ? ` (${why})` : ''}${logs}\n`);
          return exitCodes.sessionEnded;
        }
        if (session.metadata.deletionRequestedAt !== undefined) {
          io.stderr.write(`manticore: session ${id} is being deleted (${session.metadata.deletionReason ?? 'Deleted'}) before it was Ready\n`);
          return exitCodes.sessionEnded;
        }
      }
    } catch (error) {
      if (endedMeanwhile(error, lastNews)) return gone();
      if (!mayReconnect(error, lastNews)) throw error;
      io.stderr.write(`manticore: ${error.message}; reconnecting\n`);
    }
    if (io.signal?.aborted) {
      // Not 0: `create --wait && run-tests` must not carry on as if the session were Ready.
      io.stderr.write(`manticore: interrupted before session ${id} was Ready; it keeps running (delete it with: manticore sessions delete ${id})\n`);
      return exitCodes.interrupted;
    }
    await pause(jitteredBackoffMs(attempt + 1, 200, 5_000), io.signal);
  }
}

/**
 * Prints a task's log as it is (raw text) on stdout. Following, a stream closed by the front end (shutting
 * down, the workload replaced) or broken is opened again just after the last output printed, as a browser's
 * EventSource does, for up to 30 s without word from the front end (an event, or its keep-alive), unless it
 * was closed because its token expired (exit 4); the session ending ends it (0), as does the end of a failed
 * session's log (its workload stopped), or Ctrl-C.
 */
async function logs({ client, output, values, io }: Invocation, id: string): Promise<number> {
  if (output === 'json') throw new UsageError('sessions logs prints the log as text; --output json does not apply to it');
  const tail = values.tail === undefined ? undefined : wholeNumber('tail', values.tail);
  if (values.stream !== undefined && values.stream !== 'stdout' && values.stream !== 'stderr') throw new UsageError(`--stream must be stdout or stderr, not "${values.stream}"`);
  const query: LogQuery = { ...(values.task === undefined ? {} : { task: values.task }), ...(values.stream === undefined ? {} : { stream: values.stream }), ...(tail === undefined ? {} : { tail }) };
  const print = async (chunk: Uint8Array | string): Promise<void> => {
    // An output whose reader has gone (`| head`) never drains: the abort that follows its EPIPE ends the wait.
    if (!io.stdout.write(chunk)) await once(io.stdout, 'drain', { signal: io.signal }).catch(() => undefined);
  };
  if (!values.follow) {
    try {
      for await (const chunk of await client.logText(id, query, io.signal)) await print(chunk);
    } catch (error) {
      if (io.signal?.aborted) return exitCodes.ok;
      if (error instanceof FrontendError || error instanceof UnreachableError) throw error;
      throw new UnreachableError(`reading the log of session ${id} broke: ${(error as Error).message}`);
    }
    return exitCodes.ok;
  }
  let lastEventId: string | undefined;
  let lastNews: number | undefined;
  const ended = (): number => {
    io.stderr.write(`manticore: session ${id} has ended\n`);
    return exitCodes.ok;
  };
  for (let attempt = 0; ; attempt++) {
    try {
      for await (const update of client.followLogs(id, query, lastEventId, io.signal)) {
        lastNews = Date.now();
        attempt = 0;
        if (update.kind === 'log') {
          await print(update.text);
          lastEventId = update.id;
        } else if (update.kind === 'gap') {
          io.stderr.write(`manticore: ${update.message}\n`);
        } else if (update.kind === 'gone') {
          return ended();
        } else if (update.kind === 'ended') {
          io.stderr.write(`manticore: ${update.reason}\n`);
          return exitCodes.ok;
        }
      }
    } catch (error) {
      if (endedMeanwhile(error, lastNews)) return ended();
      if (!mayReconnect(error, lastNews)) throw error;
      io.stderr.write(`manticore: ${error.message}; reconnecting\n`);
    }
    if (io.signal?.aborted) return exitCodes.ok;
    await pause(jitteredBackoffMs(attempt + 1, 200, 5_000), io.signal);
  }
}

/**
 * Waits `ms` before a reconnection, or less when `signal` aborts (Ctrl-C must not wait for the next attempt).
 * The wait is jittered by the caller: every watch of a front end that restarts breaks in the same instant.
 */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** What to do about a refusal, in the command's options: the front end's details name HTTP headers and its own settings. */
const refusalHints: Readonly<Record<number, string>> = {
  401: 'run it with a valid token: --token TOKEN (or MANTICORE_TOKEN)',
  403: "run it as an operator: --token (or MANTICORE_TOKEN) with the admin token or an operator's JWT",
};

function reportError(error: unknown, command: ClientCommand, io: ClientIo): number {
  if (error instanceof UsageError) {
    io.stderr.write(`manticore: ${error.message}\n(see: manticore ${command} --help)\n`);
    return exitCodes.usage;
  }
  if (error instanceof FrontendError) {
    const hint = refusalHints[error.statusCode];
    io.stderr.write(`manticore: ${error.message} (HTTP ${error.statusCode})\n${[...error.details, ...(hint === undefined ? [] : [hint])].map((line) => `  ${line}\n`).join('')}`);
    if (error.statusCode === 404) return exitCodes.notFound;
    return error.statusCode >= 400 && error.statusCode < 500 ? exitCodes.refused : exitCodes.unavailable;
  }
  if (error instanceof UnreachableError) {
    io.stderr.write(`manticore: ${error.message}\n`);
    return exitCodes.unavailable;
  }
  if (error instanceof InterruptedError) {
    io.stderr.write(`manticore: ${error.message}\n`);
    return exitCodes.interrupted;
  }
  if (error instanceof TokenExpiredError) {
    io.stderr.write(`manticore: ${error.message}\n  get a new token and run the command again with it (--token or MANTICORE_TOKEN)\n`);
    return exitCodes.refused;
  }
  throw error;
}

/** `NAME=VALUE` pairs of a repeated flag. */
function pairs(flag: string, given: string[] | undefined): Record<string, string> {
  const result: Record<string, string> = {};
  for (const pair of given ?? []) {
    const equals = pair.indexOf('=');
    if (equals <= 0) throw new UsageError(`${flag} wants NAME=VALUE, got "${pair}"`);
    result[pair.slice(0, equals)] = pair.slice(equals + 1);
  }
  return result;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

/**
 * The login name, sent when no --user is given. One that cannot be read, or that the front end would refuse, is
 * not sent: without a token each command would then be a new anonymous user (or be refused), so it is asked for.
 */
function defaultUser(hasToken: boolean): string | undefined {
  const login = loginName();
  if (login !== undefined && isUserId(login)) return login;
  if (hasToken) return undefined;
  const why = login === undefined ? 'cannot be read' : `"${login}" is not a user name (${userIdRule})`;
  throw new UsageError(`who you are is needed, and the login name ${why}: give --user NAME (or MANTICORE_USER), or a token`);
}

/** Who runs this process: the user name the client commands send in auth mode `none` by default. */
export function loginName(): string | undefined {
  try {
    return os.userInfo().username;
  } catch {
    return undefined;
  }
}
