import fs from 'node:fs';
import net from 'node:net';
import YAML from 'yaml';
import { validate, ValidationError } from '../api/schemas.js';

export interface TlsFiles {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  serverName?: string;
}

/** The configuration file's shape (crds/config.yaml); after loading every field but the derived ones is set. */
export interface ManticoreConfig {
  store: {
    backend: 'embedded' | 'consul';
    path: string;
    prefix: string;
    consul: { address: string; token?: string; datacenter?: string; namespace?: string; tls?: TlsFiles };
  };
  scheduler: {
    backend: 'embedded' | 'nomad';
    stateDir: string;
    workDir: string;
    restart: { attempts: number; intervalSeconds: number; delaySeconds: number };
    logs: { maxFiles: number; maxFileSizeMB: number };
    nomad: {
      address: string;
      token?: string;
      region?: string;
      namespace?: string;
      datacenters: string[];
      nodePool?: string;
      constraints: Array<{ attribute: string; operator: string; value: string }>;
      priority: number;
      healthyDeadlineSeconds: number;
      checkIntervalSeconds: number;
      checkTimeoutSeconds: number;
      requestTimeoutSeconds: number;
      tls?: TlsFiles;
    };
  };
  router: {
    name: string;
    runDir: string;
    haproxyBinary: string;
    configTemplate: string;
    maxconn: number;
    http: { host: string; port: number };
    tcp: { host: string; portRangeStart: number; portRangeEnd: number };
    heartbeatSeconds: number;
    statusHost: string;
    statusPort: number;
    haproxyStats: { host: string; port: number };
    tls?: RouterTlsConfig;
    storeLossGracePeriodSeconds: number;
  };
  /** httpScheme, httpPort and tcpTls are derived from router.tls (and aws.tcpTls) when not configured. */
  public: { domain: string; httpScheme: 'http' | 'https'; httpPort: number; tcpHost: string; tcpTls: boolean };
  frontend: {
    host: string;
    port: number;
    bodyLimitBytes: number;
    /** IP addresses, CIDR ranges or proxy-addr's names (loopback, linklocal, uniquelocal). */
    trustedProxies: string[];
    rateLimit: { requestsPerSecond: number; burst: number };
    logs: { streamsPerUser: number };
    statusStreamsPerUser: number;
    /** protocol is derived from router.tls when not configured. */
    v2: { domain?: string; port?: number; protocol: 'ws' | 'wss' };
  };
  auth: {
    mode: 'none' | 'jwt';
    jwt: { secret?: string; publicKeys?: string[]; userClaim: string; operatorClaim: string; issuer?: string; audience?: string };
    adminToken?: string;
  };
  templates: { dir: string };
  controller: {
    workers: number;
    retryBaseMs: number;
    retryMaxMs: number;
    rateLimitPerSecond: number;
    rateLimitBurst: number;
    routerStaleSeconds: number;
    orphanSweepSeconds: number;
    orphanGracePeriodSeconds: number;
    leaderElection: { ttlSeconds: number; lockDelaySeconds: number };
    heartbeatSeconds: number;
    statusHost: string;
    statusPort: number;
  };
  limits: { maxSessions: number; sessionsPerUser: number; maxStarting: number };
  lifecycle: {
    startTimeoutSeconds: number;
    maxLifetimeSeconds: number;
    maxRestarts: number;
    restartWindowSeconds: number;
    restartBackoffSeconds: number;
    failedRetentionSeconds: number;
    capacityRetrySeconds: number;
  };
  /** maxTimeoutSeconds defaults to timeoutSeconds when not configured. */
  idle: { timeoutSeconds: number; maxTimeoutSeconds: number; warningSeconds: number; activityWriteIntervalSeconds: number };
  shutdown: { graceSeconds: number };
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'; format: 'auto' | 'json' | 'pretty' };
  aws?: AwsConfig;
}

/** TLS at the edge, terminated by HAProxy. */
export interface RouterTlsConfig {
  certFile: string;
  keyFile?: string;
  port: number;
  hstsMaxAgeSeconds: number;
  tcp: boolean;
  expiryWarningDays: number;
}

export interface AwsLoadBalancerConfig {
  name: string;
  type: 'nlb' | 'classic';
  /** Set from the type when not configured. */
  listenerQuota: number;
  dnsName?: string;
  /** Leaving the pool: no new ports; Manticore's listeners on it are removed. */
  retired: boolean;
}

export interface AwsConfig {
  region?: string;
  loadBalancers: AwsLoadBalancerConfig[];
  edgeInstanceIds?: string[];
  /** `loadBalancer` is set to the first of the pool not retired when not configured. */
  httpListener?: { port: number; certificateArn?: string; loadBalancer: string };
  tcpTls?: { certificateArn: string };
  /** `port` and `path` are set by `finishAws` when not configured (the router's /readyz, or HAProxy's monitor URI). */
  healthCheck: { port: number; path: string; intervalSeconds: number; timeoutSeconds: number; healthyThreshold: number; unhealthyThreshold: number };
  securityGroups: { groupIds: string[]; cidrs: string[]; maxRanges: number };
  resyncSeconds: number;
  confirmSeconds: number;
  retryBaseMs: number;
  retryMaxMs: number;
  concurrency: number;
}

/** AWS fixes a Network Load Balancer's listener quota at 50; a Classic ELB's default is 100. */
const listenerQuotas = { nlb: 50, classic: 100 } as const;

type EnvParser = (raw: string) => unknown;
const asInteger: EnvParser = (raw) => (/^\d+$/.test(raw) ? Number(raw) : raw);
const asString: EnvParser = (raw) => raw;
/** CONSUL_HTTP_ADDR may be given as host:port, as the Consul CLI accepts it. */
const withScheme: EnvParser = (raw) => (/^https?:\/\//.test(raw) ? raw : `http://${raw}`);

/** Environment variables that override the file, each naming the field it sets. */
export const environmentOverrides: ReadonlyArray<{ variable: string; path: string[]; parse: EnvParser }> = [
  { variable: 'MANTICORE_STORE_BACKEND', path: ['store', 'backend'], parse: asString },
  { variable: 'MANTICORE_STORE_PATH', path: ['store', 'path'], parse: asString },
  { variable: 'CONSUL_HTTP_ADDR', path: ['store', 'consul', 'address'], parse: withScheme },
  { variable: 'CONSUL_HTTP_TOKEN', path: ['store', 'consul', 'token'], parse: asString },
  { variable: 'MANTICORE_SCHEDULER_BACKEND', path: ['scheduler', 'backend'], parse: asString },
  { variable: 'NOMAD_ADDR', path: ['scheduler', 'nomad', 'address'], parse: withScheme },
  { variable: 'NOMAD_TOKEN', path: ['scheduler', 'nomad', 'token'], parse: asString },
  { variable: 'MANTICORE_STORE_PREFIX', path: ['store', 'prefix'], parse: asString },
  { variable: 'MANTICORE_SCHEDULER_STATE_DIR', path: ['scheduler', 'stateDir'], parse: asString },
  { variable: 'MANTICORE_ROUTER_NAME', path: ['router', 'name'], parse: asString },
  { variable: 'MANTICORE_ROUTER_RUN_DIR', path: ['router', 'runDir'], parse: asString },
  { variable: 'MANTICORE_HAPROXY_BINARY', path: ['router', 'haproxyBinary'], parse: asString },
  { variable: 'MANTICORE_HTTP_HOST', path: ['router', 'http', 'host'], parse: asString },
  { variable: 'MANTICORE_HTTP_PORT', path: ['router', 'http', 'port'], parse: asInteger },
  { variable: 'MANTICORE_TLS_CERT_FILE', path: ['router', 'tls', 'certFile'], parse: asString },
  { variable: 'MANTICORE_TLS_KEY_FILE', path: ['router', 'tls', 'keyFile'], parse: asString },
  { variable: 'MANTICORE_HTTPS_PORT', path: ['router', 'tls', 'port'], parse: asInteger },
  { variable: 'MANTICORE_TCP_HOST', path: ['router', 'tcp', 'host'], parse: asString },
  { variable: 'MANTICORE_TCP_PORT_RANGE_START', path: ['router', 'tcp', 'portRangeStart'], parse: asInteger },
  { variable: 'MANTICORE_TCP_PORT_RANGE_END', path: ['router', 'tcp', 'portRangeEnd'], parse: asInteger },
  { variable: 'MANTICORE_ROUTER_STATUS_HOST', path: ['router', 'statusHost'], parse: asString },
  { variable: 'MANTICORE_ROUTER_STATUS_PORT', path: ['router', 'statusPort'], parse: asInteger },
  { variable: 'MANTICORE_HAPROXY_STATS_PORT', path: ['router', 'haproxyStats', 'port'], parse: asInteger },
  { variable: 'MANTICORE_CONTROLLER_STATUS_HOST', path: ['controller', 'statusHost'], parse: asString },
  { variable: 'MANTICORE_CONTROLLER_STATUS_PORT', path: ['controller', 'statusPort'], parse: asInteger },
  { variable: 'MANTICORE_DOMAIN', path: ['public', 'domain'], parse: asString },
  { variable: 'MANTICORE_PUBLIC_HTTP_PORT', path: ['public', 'httpPort'], parse: asInteger },
  { variable: 'MANTICORE_PUBLIC_TCP_HOST', path: ['public', 'tcpHost'], parse: asString },
  { variable: 'MANTICORE_FRONTEND_HOST', path: ['frontend', 'host'], parse: asString },
  { variable: 'MANTICORE_FRONTEND_PORT', path: ['frontend', 'port'], parse: asInteger },
  { variable: 'MANTICORE_TEMPLATES_DIR', path: ['templates', 'dir'], parse: asString },
  { variable: 'MANTICORE_LOG_LEVEL', path: ['log', 'level'], parse: asString },
  { variable: 'MANTICORE_SHUTDOWN_GRACE_SECONDS', path: ['shutdown', 'graceSeconds'], parse: asInteger },
  { variable: 'MANTICORE_LOG_FORMAT', path: ['log', 'format'], parse: asString },
  { variable: 'MANTICORE_AUTH_MODE', path: ['auth', 'mode'], parse: asString },
  { variable: 'MANTICORE_JWT_SECRET', path: ['auth', 'jwt', 'secret'], parse: asString },
  { variable: 'MANTICORE_ADMIN_TOKEN', path: ['auth', 'adminToken'], parse: asString },
  { variable: 'MANTICORE_MAX_SESSIONS', path: ['limits', 'maxSessions'], parse: asInteger },
  { variable: 'MANTICORE_SESSIONS_PER_USER', path: ['limits', 'sessionsPerUser'], parse: asInteger },
  { variable: 'MANTICORE_IDLE_TIMEOUT_SECONDS', path: ['idle', 'timeoutSeconds'], parse: asInteger },
  { variable: 'MANTICORE_IDLE_WARNING_SECONDS', path: ['idle', 'warningSeconds'], parse: asInteger },
  { variable: 'MANTICORE_IDLE_MAX_TIMEOUT_SECONDS', path: ['idle', 'maxTimeoutSeconds'], parse: asInteger },
];

/**
 * The configuration with each secret that is set (the agents' tokens, the JWT secret, the admin token) read
 * as "<set>", for printing: check-config's output ends up in CI logs and tickets. Add a new secret here.
 */
export function redactSecrets(config: ManticoreConfig): ManticoreConfig {
  const set = (secret: string | undefined): string | undefined => (secret === undefined ? undefined : '<set>');
  const { store, scheduler, auth } = config;
  return {
    ...config,
    store: { ...store, consul: { ...store.consul, token: set(store.consul.token) } },
    scheduler: { ...scheduler, nomad: { ...scheduler.nomad, token: set(scheduler.nomad.token) } },
    auth: { ...auth, jwt: { ...auth.jwt, secret: set(auth.jwt.secret) }, adminToken: set(auth.adminToken) },
  };
}

/**
 * Loads the configuration: the YAML file (optional), then environment overrides, then schema defaults.
 * Any problem throws a ValidationError naming the field, so start-up stops with a useful message.
 */
export function loadConfig(file: string | undefined, env: NodeJS.ProcessEnv = process.env): ManticoreConfig {
  let raw: unknown = {};
  if (file !== undefined) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (error) {
      throw new ValidationError(`configuration file ${file}`, [(error as Error).message]);
    }
    try {
      raw = YAML.parse(text) ?? {};
    } catch (error) {
      throw new ValidationError(`configuration file ${file}`, [`not valid YAML: ${(error as Error).message}`]);
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      throw new ValidationError(`configuration file ${file}`, ['(root): must be a mapping']);
    }
  }
  /** JSON pointer of each overridden field → its variable. */
  const overrides = new Map<string, string>();
  /** JSON pointers of the groups the file does not have, made for a variable (router.tls for MANTICORE_HTTPS_PORT). */
  const madeGroups = new Set<string>();
  for (const { variable, path, parse } of environmentOverrides) {
    const value = env[variable];
    if (value === undefined || value === '') continue;
    for (const made of setPath(raw as Record<string, unknown>, path, parse(value))) madeGroups.add(made);
    overrides.set(`/${path.join('/')}`, variable);
  }
  const what = file === undefined ? 'configuration' : `configuration file ${file}`;
  try {
    return finish(validate<ManticoreConfig>('config', raw, what), what);
  } catch (error) {
    if (!(error instanceof ValidationError)) throw error;
    // A bad value from the environment is not in the file the message names: say where it came from.
    const source = (problem: string): string => {
      const pointer = problem.slice(0, problem.indexOf(':'));
      const fromEnvironment = ([field]: [string, string]): boolean => field === pointer || (madeGroups.has(pointer) && field.startsWith(`${pointer}/`));
      const variables = [...overrides].filter(fromEnvironment).map(([, variable]) => variable);
      return variables.length === 0 ? problem : `${problem} (from ${variables.join(', ')})`;
    };
    throw new ValidationError(error.what, error.problems.map(source));
  }
}

/** Sets the field at `path`, making the groups on the way that are missing; returns their JSON pointers. */
function setPath(target: Record<string, unknown>, path: string[], value: unknown): string[] {
  const made: string[] = [];
  let node = target;
  path.slice(0, -1).forEach((part, depth) => {
    const next = node[part];
    if (typeof next !== 'object' || next === null) {
      node[part] = {};
      made.push(`/${path.slice(0, depth + 1).join('/')}`);
    }
    node = node[part] as Record<string, unknown>;
  });
  node[path[path.length - 1]!] = value;
  return made;
}

/** Each port of the range is a listening socket with its file descriptor; beyond this, one edge host is the wrong design. */
const MAX_TCP_PORTS = 30_000;

/** Fills the derived fields and checks the rules a schema cannot express. */
function finish(config: ManticoreConfig, what: string): ManticoreConfig {
  const { tcp } = config.router;
  if (tcp.portRangeEnd < tcp.portRangeStart) {
    throw new ValidationError(what, ['/router/tcp/portRangeEnd: must not be below portRangeStart']);
  }
  if (tcp.portRangeEnd - tcp.portRangeStart + 1 > MAX_TCP_PORTS) {
    throw new ValidationError(what, [`/router/tcp: the port range may hold at most ${MAX_TCP_PORTS} ports (each is a listening socket of HAProxy)`]);
  }
  // Between two heartbeats a live router would count as gone: sessions held in NoRouters, status showing it down.
  if (config.controller.routerStaleSeconds <= config.router.heartbeatSeconds) {
    throw new ValidationError(what, [`/controller/routerStaleSeconds: must be above router.heartbeatSeconds (${config.router.heartbeatSeconds}), how often each router heartbeats`]);
  }
  // As for aws.retryMaxMs: a cap below the first backoff would make every retry wait the cap.
  if (config.controller.retryMaxMs < config.controller.retryBaseMs) {
    throw new ValidationError(what, [`/controller/retryMaxMs: must not be below controller.retryBaseMs (${config.controller.retryBaseMs})`]);
  }
  const { restart } = config.scheduler;
  // Nomad refuses such a job (RestartPolicy.Validate); the embedded scheduler follows the same policy.
  if (restart.attempts * restart.delaySeconds > restart.intervalSeconds) {
    throw new ValidationError(what, [
      `/scheduler/restart/delaySeconds: ${restart.attempts} restarts ${restart.delaySeconds} s apart do not fit in intervalSeconds (${restart.intervalSeconds}): Nomad refuses the job`,
    ]);
  }
  const { idle, lifecycle } = config;
  if (idle.timeoutSeconds > 0 && idle.warningSeconds >= idle.timeoutSeconds) {
    throw new ValidationError(what, ['/idle/warningSeconds: must be below idle.timeoutSeconds (the warning comes before the deletion)']);
  }
  // By default a session may shorten its idle timeout, not lengthen it.
  idle.maxTimeoutSeconds ??= idle.timeoutSeconds;
  if (idle.maxTimeoutSeconds > 0 && idle.maxTimeoutSeconds <= idle.warningSeconds) {
    throw new ValidationError(what, ['/idle/maxTimeoutSeconds: must be above idle.warningSeconds (0: no limit), or no session could ask for a timeout the warning fits in']);
  }
  if (idle.maxTimeoutSeconds > 0 && (idle.timeoutSeconds === 0 || idle.timeoutSeconds > idle.maxTimeoutSeconds)) {
    throw new ValidationError(what, ['/idle/maxTimeoutSeconds: must not be below idle.timeoutSeconds (0 when that is 0, never), which sessions get when they ask for none']);
  }
  // Sessions may ask for an idle timeout of their own, so the warning counts even when the operator's is off.
  if (idle.activityWriteIntervalSeconds >= idle.warningSeconds) {
    throw new ValidationError(what, ['/idle/activityWriteIntervalSeconds: must be below idle.warningSeconds, or activity could arrive too late to count']);
  }
  if (lifecycle.maxLifetimeSeconds > 0 && idle.warningSeconds >= lifecycle.maxLifetimeSeconds) {
    throw new ValidationError(what, ['/lifecycle/maxLifetimeSeconds: must be above idle.warningSeconds (the warning comes before the end)']);
  }
  if (config.auth.mode === 'jwt' && config.auth.jwt.secret === undefined && (config.auth.jwt.publicKeys ?? []).length === 0) {
    throw new ValidationError(what, ['/auth/jwt: mode jwt needs a secret (HS256) or publicKeys (RS256/ES256)']);
  }
  checkTrustedProxies(config.frontend.trustedProxies, what);
  checkRouterPorts(config.router, what);
  if (config.router.tls) finishTls(config.router.tls, config, what);
  const { tls } = config.router;
  config.public.httpScheme ??= tls ? 'https' : 'http';
  config.public.httpPort ??= tls ? tls.port : config.router.http.port;
  config.public.tcpTls ??= tls?.tcp === true || config.aws?.tcpTls !== undefined;
  // v2 told its clients wss when its edge encrypted websockets.
  config.frontend.v2.protocol ??= tls ? 'wss' : 'ws';
  if (config.aws) finishAws(config.aws, config, what);
  return config;
}

/** The names Fastify's trustProxy (proxy-addr) knows for address ranges. */
const PROXY_RANGE_NAMES = new Set(['loopback', 'linklocal', 'uniquelocal']);

/** Fastify throws on a malformed entry only when it builds the server: refused here, with the field named. */
function checkTrustedProxies(proxies: readonly string[], what: string): void {
  const problems = proxies.flatMap((entry, index) => {
    if (PROXY_RANGE_NAMES.has(entry)) return [];
    const [address = '', prefix, ...rest] = entry.split('/');
    const family = net.isIP(address);
    const bits = family === 4 ? 32 : 128;
    const prefixValid = prefix === undefined || (/^\d{1,3}$/.test(prefix) && Number(prefix) <= bits);
    if (family !== 0 && prefixValid && rest.length === 0) return [];
    return [`/frontend/trustedProxies/${index}: "${entry}" is not an IP address, a CIDR range or one of ${[...PROXY_RANGE_NAMES].join(', ')}`];
  });
  if (problems.length > 0) throw new ValidationError(what, problems);
}

const ANY_ADDRESS = new Set(['', '0.0.0.0', '::', '*']);

/** Whether listeners on these hosts can collide: the same address, or either on every address. */
function sameInterface(a: string, b: string): boolean {
  return a === b || ANY_ADDRESS.has(a) || ANY_ADDRESS.has(b);
}

/**
 * The router binds all of these on the edge host (HAProxy its HTTP, HTTPS, stats and session ports; the
 * agent its status server): two on one port and the second fails to bind, so HAProxy or the router does
 * not start, or a session on that port is never reachable.
 */
function checkRouterPorts(router: ManticoreConfig['router'], what: string): void {
  const { http, tcp, tls, statusHost, statusPort, haproxyStats } = router;
  const listeners: Array<{ field: string; host: string; port: number }> = [
    { field: 'router.http.port', host: http.host, port: http.port },
    ...(tls ? [{ field: 'router.tls.port', host: http.host, port: tls.port }] : []),
    // 0 turns these off.
    ...(statusPort > 0 ? [{ field: 'router.statusPort', host: statusHost, port: statusPort }] : []),
    ...(haproxyStats.port > 0 ? [{ field: 'router.haproxyStats.port', host: haproxyStats.host, port: haproxyStats.port }] : []),
  ];
  const problems: string[] = [];
  listeners.forEach((listener, index) => {
    const pointer = `/${listener.field.replace(/\./g, '/')}`;
    const taken = listeners.slice(0, index).find((other) => other.port === listener.port && sameInterface(other.host, listener.host));
    if (taken) problems.push(`${pointer}: ${listener.port} is ${taken.field} too: each listener of the router needs a port of its own`);
    if (listener.port >= tcp.portRangeStart && listener.port <= tcp.portRangeEnd && sameInterface(tcp.host, listener.host)) {
      problems.push(`${pointer}: ${listener.port} is inside the session port range ${tcp.portRangeStart}-${tcp.portRangeEnd}`);
    }
  });
  if (problems.length > 0) throw new ValidationError(what, problems);
}

/** The TLS settings that conflict with AWS's (checked here: the files are checked where they are used). */
function finishTls(tls: RouterTlsConfig, config: ManticoreConfig, what: string): void {
  const problems: string[] = [];
  if (config.aws?.httpListener?.certificateArn !== undefined) {
    problems.push('/aws/httpListener/certificateArn: TLS terminates at HAProxy (router.tls), so the load balancer must pass TCP through: remove the certificate');
  }
  if (tls.tcp && config.aws?.tcpTls !== undefined) problems.push('/aws/tcpTls: router.tls.tcp already terminates TLS on the session ports at HAProxy: use one or the other');
  if (problems.length > 0) throw new ValidationError(what, problems);
}

/** HAProxy's monitor URI (manifests/haproxy/haproxy.cfg): up while HAProxy is. */
const HAPROXY_MONITOR_URI = '/haproxy-health';

/** Whether the router's status server listens where a load balancer can reach it (on, and not on loopback only). */
function statusServerReachable(router: ManticoreConfig['router']): boolean {
  const host = router.statusHost.toLowerCase();
  return router.statusPort > 0 && host !== 'localhost' && host !== '::1' && !host.startsWith('127.');
}

/** ConfigureHealthCheck refuses more (ValidationError), so every pass would fail to repair the check. */
const CLASSIC_MAX_HEALTH_CHECK_TIMEOUT_SECONDS = 60;

/** Defaults that depend on other fields, and the AWS rules a schema cannot express. */
function finishAws(aws: AwsConfig, config: ManticoreConfig, what: string): void {
  const problems: string[] = [];
  const names = new Set<string>();
  aws.loadBalancers.forEach((balancer, index) => {
    if (names.has(balancer.name)) problems.push(`/aws/loadBalancers/${index}/name: "${balancer.name}" is in the pool twice`);
    names.add(balancer.name);
    balancer.listenerQuota ??= listenerQuotas[balancer.type];
    if (balancer.type === 'nlb' && balancer.listenerQuota > listenerQuotas.nlb) {
      problems.push(`/aws/loadBalancers/${index}/listenerQuota: a Network Load Balancer holds at most ${listenerQuotas.nlb} listeners (an AWS quota that cannot be raised)`);
    }
  });
  const serving = aws.loadBalancers.filter((balancer) => !balancer.retired);
  if (serving.length === 0) problems.push('/aws/loadBalancers: every load balancer is retired: sessions need one that is not');
  if (aws.loadBalancers.some((balancer) => balancer.type === 'nlb') && (aws.edgeInstanceIds ?? []).length === 0) {
    problems.push('/aws/edgeInstanceIds: a Network Load Balancer needs the HAProxy edge instances for its target groups');
  }
  const { tcp } = config.router;
  if (aws.httpListener) {
    aws.httpListener.loadBalancer ??= (serving[0] ?? aws.loadBalancers[0]!).name;
    const carrier = aws.loadBalancers.find((balancer) => balancer.name === aws.httpListener!.loadBalancer);
    if (carrier === undefined) problems.push(`/aws/httpListener/loadBalancer: "${aws.httpListener.loadBalancer}" is not in aws.loadBalancers`);
    else if (carrier.retired) problems.push(`/aws/httpListener/loadBalancer: "${carrier.name}" is retired: put the listener on one that is not`);
    if (aws.httpListener.port >= tcp.portRangeStart && aws.httpListener.port <= tcp.portRangeEnd) {
      problems.push(`/aws/httpListener/port: ${aws.httpListener.port} is inside the session port range ${tcp.portRangeStart}-${tcp.portRangeEnd}`);
    }
  }
  // Unset, the check asks the router's /readyz: it answers 503 while the edge's agent cannot apply routes, which
  // HAProxy's monitor URI never shows. A check set in part keeps HAProxy's port and monitor URI for the rest.
  const check = aws.healthCheck as Partial<AwsConfig['healthCheck']>;
  if (check.port === undefined && check.path === undefined && statusServerReachable(config.router)) {
    check.port = config.router.statusPort;
    check.path = '/readyz';
  }
  check.port ??= config.router.http.port;
  check.path ??= HAPROXY_MONITOR_URI;
  if (aws.healthCheck.timeoutSeconds >= aws.healthCheck.intervalSeconds) problems.push('/aws/healthCheck/timeoutSeconds: must be below intervalSeconds');
  if (aws.healthCheck.timeoutSeconds > CLASSIC_MAX_HEALTH_CHECK_TIMEOUT_SECONDS && aws.loadBalancers.some((balancer) => balancer.type === 'classic')) {
    problems.push(`/aws/healthCheck/timeoutSeconds: a Classic ELB takes a health-check timeout of at most ${CLASSIC_MAX_HEALTH_CHECK_TIMEOUT_SECONDS} s (the schema's 120 is a Network Load Balancer's)`);
  }
  if (aws.retryMaxMs < aws.retryBaseMs) problems.push('/aws/retryMaxMs: must not be below retryBaseMs');
  if (problems.length > 0) throw new ValidationError(what, problems);
}
