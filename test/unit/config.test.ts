import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ValidationError } from '../../controller/api/schemas.js';
import { loadConfig, redactSecrets, type ManticoreConfig } from '../../controller/config/config.js';
import { configSchemaNodes } from '../support/config-schema.js';

describe('configuration', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-config-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const write = (text: string): string => {
    const file = path.join(dir, 'config.yaml');
    fs.writeFileSync(file, text);
    return file;
  };

  it('defaults to the embedded default with no file', () => {
    const config = loadConfig(undefined, {});
    assert.equal(config.frontend.port, 4000);
    assert.equal(config.router.http.port, 8080);
    assert.equal(config.public.httpPort, 8080, 'the public port follows the router port');
    assert.equal(config.router.tcp.portRangeStart, 20000);
    assert.equal(config.router.tcp.portRangeEnd, 20999);
    assert.equal(config.public.domain, 'localhost');
    assert.equal(config.store.prefix, 'manticore/');
    assert.deepEqual(config.frontend.trustedProxies, [], 'no proxy is trusted unless named');
  });

  it('reads the example configuration', () => {
    const config = loadConfig(path.resolve(__dirname, '../../../manifests/examples/embedded.yaml'), {});
    assert.equal(config.store.path, '.manticore/state.db');
  });

  it('applies environment overrides over the file', () => {
    const file = write('frontend:\n  port: 5000\nrouter:\n  http:\n    port: 9090\n');
    const config = loadConfig(file, { MANTICORE_FRONTEND_PORT: '6000', MANTICORE_DOMAIN: 'sdl.example.com' });
    assert.equal(config.frontend.port, 6000);
    assert.equal(config.router.http.port, 9090);
    assert.equal(config.public.httpPort, 9090);
    assert.equal(config.public.domain, 'sdl.example.com');
  });

  it('names the offending field', () => {
    const cases: Array<[string, RegExp]> = [
      ['frontend:\n  port: "eighty"\n', /\/frontend\/port: must be integer/],
      ['router:\n  htp: {}\n', /\/router: unknown field "htp"/],
      ['log:\n  level: loud\n', /\/log\/level: must be equal to one of the allowed values/],
      ['router:\n  tcp: { portRangeStart: 2000, portRangeEnd: 1000 }\n', /\/router\/tcp\/portRangeEnd/],
      ['router:\n  tcp: { portRangeStart: 20000, portRangeEnd: 50000 }\n', /\/router\/tcp: the port range may hold at most 30000 ports/],
      ['- a list\n', /\(root\): must be a mapping/],
      ['frontend: [unclosed\n', /not valid YAML/],
      ['frontend:\n  trustedProxies: [10.0.0.0/8, proxy.example.com]\n', /\/frontend\/trustedProxies\/1: "proxy.example.com" is not an IP address/],
      ['frontend:\n  trustedProxies: [10.0.0.0/33]\n', /\/frontend\/trustedProxies\/0: "10.0.0.0\/33" is not an IP address/],
    ];
    for (const [text, expected] of cases) {
      assert.throws(() => loadConfig(write(text), {}), (error: unknown) => {
        assert.ok(error instanceof ValidationError);
        assert.match(error.message, expected);
        return true;
      });
    }
  });

  it('leaves AWS off by default; with a pool, fills quotas by type and the HTTP listener\'s load balancer', () => {
    assert.equal(loadConfig(undefined, {}).aws, undefined);
    const config = loadConfig(
      write('aws:\n  loadBalancers: [{ name: nlb-a, type: nlb }, { name: elb-b, type: classic }]\n  edgeInstanceIds: [i-0123456789abcdef0]\n  httpListener: { port: 80 }\n'),
      {},
    );
    assert.deepEqual(config.aws!.loadBalancers.map((balancer) => balancer.listenerQuota), [50, 100]);
    assert.equal(config.aws!.httpListener!.loadBalancer, 'nlb-a');
    const pastRetired = loadConfig(write('aws:\n  loadBalancers: [{ name: old, type: classic, retired: true }, { name: new, type: classic }]\n  httpListener: { port: 80 }\n'), {});
    assert.equal(pastRetired.aws!.httpListener!.loadBalancer, 'new', 'the first load balancer not retired');
    assert.equal(config.aws!.healthCheck.port, 8080, 'health checks go to HAProxy\'s HTTP port');
    assert.deepEqual(config.aws!.securityGroups, { groupIds: [], cidrs: ['0.0.0.0/0', '::/0'], maxRanges: 20 });
    assert.equal(config.aws!.resyncSeconds, 300);
  });

  it('points the load balancers\' health check at the router\'s /readyz when its status server is reachable, else at HAProxy; a check set in part keeps the old defaults for the rest', () => {
    const pool = 'aws:\n  loadBalancers: [{ name: a, type: classic }]\n';
    const check = (text: string): string => {
      const { port, path: checkPath } = loadConfig(write(text), {}).aws!.healthCheck;
      return `${port}${checkPath}`;
    };
    const statusServer = 'router:\n  statusHost: 0.0.0.0\n  statusPort: 8405\n';
    assert.equal(check(statusServer + pool), '8405/readyz', 'an edge whose agent cannot apply routes answers 503 there');
    assert.equal(check(pool), '8080/haproxy-health', 'no status server: HAProxy\'s monitor URI');
    assert.equal(check('router:\n  statusPort: 8405\n' + pool), '8080/haproxy-health', 'a status server on loopback is out of the load balancer\'s reach');
    assert.equal(check(`${statusServer}${pool}  healthCheck: { path: /haproxy-health }\n`), '8080/haproxy-health');
    assert.equal(check(`${statusServer}${pool}  healthCheck: { port: 8080 }\n`), '8080/haproxy-health');
    assert.equal(check(`${statusServer}${pool}  healthCheck: { port: 9000, path: /up }\n`), '9000/up');
  });

  it('refuses AWS settings that cannot work, naming the field', () => {
    const cases: Array<[string, RegExp]> = [
      ['aws:\n  loadBalancers: [{ name: a, type: nlb, listenerQuota: 60 }]\n  edgeInstanceIds: [i-0123456789abcdef0]\n', /\/aws\/loadBalancers\/0\/listenerQuota: a Network Load Balancer holds at most 50/],
      ['aws:\n  loadBalancers: [{ name: a, type: nlb }]\n', /\/aws\/edgeInstanceIds: a Network Load Balancer needs/],
      ['aws:\n  loadBalancers: [{ name: a, type: classic }, { name: a, type: classic }]\n', /\/aws\/loadBalancers\/1\/name: "a" is in the pool twice/],
      ['aws:\n  loadBalancers: [{ name: a, type: classic }]\n  httpListener: { port: 20005 }\n', /\/aws\/httpListener\/port: 20005 is inside the session port range/],
      ['aws:\n  loadBalancers: [{ name: a, type: classic }]\n  httpListener: { port: 80, loadBalancer: b }\n', /\/aws\/httpListener\/loadBalancer: "b" is not in aws.loadBalancers/],
      ['aws:\n  loadBalancers: [{ name: a, type: classic }]\n  tcpTls: { certificateArn: nope }\n', /\/aws\/tcpTls\/certificateArn: must match pattern/],
      ['aws:\n  loadBalancers: []\n', /\/aws\/loadBalancers: must NOT have fewer than 1 items/],
      ['aws:\n  loadBalancers: [{ name: a, type: classic, retired: true }]\n', /\/aws\/loadBalancers: every load balancer is retired/],
      ['aws:\n  loadBalancers: [{ name: a, type: classic, retired: true }, { name: b, type: classic }]\n  httpListener: { port: 80, loadBalancer: a }\n', /\/aws\/httpListener\/loadBalancer: "a" is retired/],
      // AWS accepts up to 120 s from an NLB but refuses a Classic ELB's ConfigureHealthCheck beyond 60 s.
      ['aws:\n  loadBalancers: [{ name: a, type: classic }]\n  healthCheck: { intervalSeconds: 120, timeoutSeconds: 90 }\n', /\/aws\/healthCheck\/timeoutSeconds: a Classic ELB takes a health-check timeout of at most 60 s/],
    ];
    for (const [text, expected] of cases) assert.throws(() => loadConfig(write(text), {}), expected);
    const nlb = loadConfig(write('aws:\n  loadBalancers: [{ name: a, type: nlb }]\n  edgeInstanceIds: [i-0123456789abcdef0]\n  healthCheck: { intervalSeconds: 120, timeoutSeconds: 90 }\n'), {});
    assert.equal(nlb.aws!.healthCheck.timeoutSeconds, 90, 'a Network Load Balancer takes up to 120 s');
    const retiring = loadConfig(write('aws:\n  loadBalancers: [{ name: a, type: classic, retired: true }, { name: b, type: classic }]\n  httpListener: { port: 80 }\n'), {});
    assert.equal(retiring.aws!.httpListener!.loadBalancer, 'b', 'the fixed listener goes to the first load balancer not retired');
  });

  it('with router.tls, makes every public address https, wss and (with tls.tcp) TLS on TCP, and v2 answer wss', () => {
    const plain = loadConfig(undefined, {});
    assert.equal(plain.router.tls, undefined);
    assert.deepEqual([plain.public.httpScheme, plain.public.httpPort, plain.public.tcpTls, plain.frontend.v2.protocol], ['http', 8080, false, 'ws']);
    const tls = loadConfig(write('router:\n  tls: { certFile: /etc/edge/cert.pem, tcp: true }\n'), {});
    assert.deepEqual(tls.router.tls, { certFile: '/etc/edge/cert.pem', port: 8443, hstsMaxAgeSeconds: 0, tcp: true, expiryWarningDays: 21 });
    assert.deepEqual([tls.public.httpScheme, tls.public.httpPort, tls.public.tcpTls, tls.frontend.v2.protocol], ['https', 8443, true, 'wss']);
    // What is configured wins (e.g. a load balancer's port 443 in front of HAProxy's 8443).
    const explicit = loadConfig(write('router:\n  tls: { certFile: c.pem }\npublic: { httpPort: 443 }\nfrontend:\n  v2: { protocol: ws }\n'), {});
    assert.deepEqual([explicit.public.httpScheme, explicit.public.httpPort, explicit.public.tcpTls, explicit.frontend.v2.protocol], ['https', 443, false, 'ws']);
    // TLS terminated by AWS load balancers in front of the TCP ports says so too.
    assert.equal(loadConfig(write('aws:\n  loadBalancers: [{ name: a, type: classic }]\n  tcpTls: { certificateArn: "arn:aws:acm:eu-west-1:1:certificate/x" }\n'), {}).public.tcpTls, true);
  });

  it('takes the TLS files and port from the environment', () => {
    const config = loadConfig(undefined, { MANTICORE_TLS_CERT_FILE: '/tls/cert.pem', MANTICORE_TLS_KEY_FILE: '/tls/key.pem', MANTICORE_HTTPS_PORT: '9443' });
    assert.deepEqual([config.router.tls?.certFile, config.router.tls?.keyFile, config.router.tls?.port, config.public.httpPort], ['/tls/cert.pem', '/tls/key.pem', 9443, 9443]);
  });

  it('reads the TLS example configuration', () => {
    const config = loadConfig(path.resolve(__dirname, '../../../manifests/examples/tls.yaml'), {});
    assert.equal(config.router.tls?.certFile, '.manticore/tls/cert.pem');
    assert.deepEqual([config.public.domain, config.public.httpScheme, config.public.httpPort, config.public.tcpTls], ['sessions.localhost', 'https', 8443, true]);
  });

  it('refuses TLS settings that cannot work, naming the field', () => {
    const arn = '"arn:aws:acm:eu-west-1:1:certificate/x"';
    const cases: Array<[string, RegExp]> = [
      ['router:\n  tls: { port: 8443 }\n', /\/router\/tls: must have required property 'certFile'/],
      ['router:\n  http: { port: 8443 }\n  tls: { certFile: c.pem }\n', /\/router\/tls\/port: 8443 is router\.http\.port too/],
      ['router:\n  tls: { certFile: c.pem, port: 20001 }\n', /\/router\/tls\/port: 20001 is inside the session port range 20000-20999/],
      // HAProxy binds each of these on the edge host: a second bind of one port fails.
      ['router:\n  http: { port: 20005 }\n', /\/router\/http\/port: 20005 is inside the session port range 20000-20999/],
      ['router:\n  statusPort: 8080\n', /\/router\/statusPort: 8080 is router\.http\.port too/],
      ['router:\n  haproxyStats: { port: 20999 }\n', /\/router\/haproxyStats\/port: 20999 is inside the session port range/],
      ['router:\n  http: { host: 0.0.0.0 }\n  haproxyStats: { port: 8080 }\n', /\/router\/haproxyStats\/port: 8080 is router\.http\.port too/],
      [`router:\n  tls: { certFile: c.pem }\naws:\n  loadBalancers: [{ name: a, type: classic }]\n  httpListener: { port: 443, certificateArn: ${arn} }\n`, /\/aws\/httpListener\/certificateArn: TLS terminates at HAProxy/],
      [`router:\n  tls: { certFile: c.pem, tcp: true }\naws:\n  loadBalancers: [{ name: a, type: classic }]\n  tcpTls: { certificateArn: ${arn} }\n`, /\/aws\/tcpTls: router\.tls\.tcp already terminates TLS/],
    ];
    for (const [text, expected] of cases) assert.throws(() => loadConfig(write(text), {}), expected);
    // On another address the same port is free.
    assert.equal(loadConfig(write('router:\n  statusHost: 10.0.0.5\n  statusPort: 8080\n'), {}).router.statusPort, 8080);
  });

  it('rejects an environment override that is not valid, naming the variable rather than blaming the file', () => {
    assert.throws(() => loadConfig(undefined, { MANTICORE_HTTP_PORT: 'x' }), /\/router\/http\/port: must be integer \(from MANTICORE_HTTP_PORT\)/);
    assert.throws(() => loadConfig(path.resolve(__dirname, '../../../manifests/examples/embedded.yaml'), { MANTICORE_TCP_PORT_RANGE_END: '70000' }), /\/router\/tcp\/portRangeEnd: must be <= 65535 \(from MANTICORE_TCP_PORT_RANGE_END\)$/);
  });

  it('names the variable in the rules between fields too, and for a group only the environment made', () => {
    const embedded = path.resolve(__dirname, '../../../manifests/examples/embedded.yaml');
    assert.throws(() => loadConfig(embedded, { MANTICORE_ROUTER_STATUS_PORT: '8080' }), /: invalid configuration file .*embedded\.yaml: \/router\/statusPort: 8080 is router\.http\.port too.* \(from MANTICORE_ROUTER_STATUS_PORT\)$/);
    assert.throws(() => loadConfig(embedded, { MANTICORE_IDLE_WARNING_SECONDS: '1800' }), /\/idle\/warningSeconds: must be below idle\.timeoutSeconds .*\(from MANTICORE_IDLE_WARNING_SECONDS\)$/);
    // A certificate file turns TLS on: the port or the key alone make a router.tls the file does not have.
    assert.throws(() => loadConfig(embedded, { MANTICORE_HTTPS_PORT: '9443', MANTICORE_TLS_KEY_FILE: '/tls/key.pem' }), /\/router\/tls: must have required property 'certFile' \(from MANTICORE_TLS_KEY_FILE, MANTICORE_HTTPS_PORT\)$/);
    // A group the file has is the file's to complete.
    assert.throws(() => loadConfig(write('router:\n  tls: { port: 8443 }\n'), { MANTICORE_HTTPS_PORT: '9443' }), /\/router\/tls: must have required property 'certFile'$/);
  });

  it('reports a missing file clearly', () => {
    assert.throws(() => loadConfig(path.join(dir, 'missing.yaml'), {}), /configuration file .*missing\.yaml.*ENOENT/);
  });

  it('takes the Consul and Nomad agents from their usual variables, as their CLIs do', () => {
    const config = loadConfig(undefined, {
      MANTICORE_STORE_BACKEND: 'consul',
      MANTICORE_SCHEDULER_BACKEND: 'nomad',
      CONSUL_HTTP_ADDR: '10.0.0.5:8500',
      CONSUL_HTTP_TOKEN: 'c-token',
      NOMAD_ADDR: 'https://nomad.internal:4646',
      NOMAD_TOKEN: 'n-token',
    });
    assert.equal(config.store.backend, 'consul');
    assert.equal(config.store.consul.address, 'http://10.0.0.5:8500', 'host:port gets a scheme');
    assert.equal(config.store.consul.token, 'c-token');
    assert.equal(config.scheduler.backend, 'nomad');
    assert.equal(config.scheduler.nomad.address, 'https://nomad.internal:4646');
    assert.equal(config.scheduler.nomad.token, 'n-token');
    assert.deepEqual(config.scheduler.nomad.datacenters, ['dc1']);
    assert.equal(config.scheduler.nomad.requestTimeoutSeconds, 10);
    assert.throws(() => loadConfig(undefined, { MANTICORE_STORE_BACKEND: 'etcd' }), /\/store\/backend: must be equal to one of the allowed values \(embedded, consul\)/);
  });

  it('refuses a restart interval Nomad would refuse', () => {
    assert.throws(() => loadConfig(write('scheduler:\n  restart: { intervalSeconds: 2 }\n'), {}), /\/scheduler\/restart\/intervalSeconds: must be >= 5/);
    // Nomad refuses the job of a policy whose restarts do not fit in its interval: refused here, before any job is sent.
    assert.throws(
      () => loadConfig(write('scheduler:\n  backend: nomad\n  restart: { attempts: 3, intervalSeconds: 300, delaySeconds: 200 }\n'), {}),
      /\/scheduler\/restart\/delaySeconds: 3 restarts 200 s apart do not fit in intervalSeconds \(300\)/,
    );
    assert.equal(loadConfig(write('scheduler:\n  restart: { attempts: 3, intervalSeconds: 300, delaySeconds: 100 }\n'), {}).scheduler.restart.delaySeconds, 100);
  });

  it('refuses a duration a timer cannot hold, naming the field', () => {
    // setTimeout fires a delay beyond 2^31-1 ms at once: a heartbeat or sweep would run every millisecond.
    const timers: Array<[string, string]> = [
      ['controller: { heartbeatSeconds: %s }', '/controller/heartbeatSeconds'],
      ['controller: { orphanSweepSeconds: %s }', '/controller/orphanSweepSeconds'],
      ['router: { heartbeatSeconds: %s }\ncontroller: { routerStaleSeconds: 2147484 }', '/router/heartbeatSeconds'],
      ['router: { storeLossGracePeriodSeconds: %s }', '/router/storeLossGracePeriodSeconds'],
      ['scheduler: { nomad: { requestTimeoutSeconds: %s } }', '/scheduler/nomad/requestTimeoutSeconds'],
      ['aws: { loadBalancers: [{ name: a, type: classic }], resyncSeconds: %s }', '/aws/resyncSeconds'],
    ];
    const longest = Math.floor((2 ** 31 - 1) / 1000);
    for (const [text, field] of timers) {
      assert.doesNotThrow(() => loadConfig(write(`${text.replace('%s', String(longest))}\n`), {}), field);
      assert.throws(() => loadConfig(write(`${text.replace('%s', String(longest + 1))}\n`), {}), new RegExp(`${field}: must be <= ${longest}`));
    }
  });

  it('refuses a router staleness that a live router falls into between its heartbeats', () => {
    assert.throws(
      () => loadConfig(write('router: { heartbeatSeconds: 30 }\ncontroller: { routerStaleSeconds: 30 }\n'), {}),
      /\/controller\/routerStaleSeconds: must be above router\.heartbeatSeconds \(30\)/,
    );
    assert.equal(loadConfig(write('router: { heartbeatSeconds: 29 }\ncontroller: { routerStaleSeconds: 30 }\n'), {}).controller.routerStaleSeconds, 30);
  });

  it("refuses a controller retry cap below the retries' first backoff", () => {
    assert.throws(() => loadConfig(write('controller: { retryBaseMs: 500, retryMaxMs: 100 }\n'), {}), /\/controller\/retryMaxMs: must not be below controller\.retryBaseMs \(500\)/);
    assert.equal(loadConfig(write('controller: { retryBaseMs: 500, retryMaxMs: 500 }\n'), {}).controller.retryMaxMs, 500);
  });

  it('has lifecycle defaults, and refuses a warning that would come after the end', () => {
    const config = loadConfig(undefined, {});
    assert.deepEqual(config.limits, { maxSessions: 100, sessionsPerUser: 1, maxStarting: 20 });
    assert.equal(config.lifecycle.startTimeoutSeconds, 600);
    assert.equal(config.lifecycle.maxLifetimeSeconds, 0);
    assert.deepEqual(config.idle, { timeoutSeconds: 1800, maxTimeoutSeconds: 1800, warningSeconds: 300, activityWriteIntervalSeconds: 30 });
    assert.equal(loadConfig(undefined, { MANTICORE_MAX_SESSIONS: '7', MANTICORE_IDLE_TIMEOUT_SECONDS: '0' }).limits.maxSessions, 7);
    assert.throws(() => loadConfig(write('idle: { timeoutSeconds: 300, warningSeconds: 300 }\n'), {}), /\/idle\/warningSeconds: must be below idle.timeoutSeconds/);
    assert.throws(() => loadConfig(write('idle: { warningSeconds: 60, activityWriteIntervalSeconds: 60 }\n'), {}), /\/idle\/activityWriteIntervalSeconds/);
    assert.throws(() => loadConfig(write('lifecycle: { maxLifetimeSeconds: 100 }\n'), {}), /\/lifecycle\/maxLifetimeSeconds: must be above idle.warningSeconds/);
    assert.throws(() => loadConfig(write('limits: { maxSessions: 0 }\n'), {}), /\/limits\/maxSessions: must be >= 1/);
  });

  it("holds sessions' own idle timeouts to idle.maxTimeoutSeconds, by default the operator's timeout, and refuses a limit the warning does not fit", () => {
    const idle = (text: string, env: NodeJS.ProcessEnv = {}): ManticoreConfig['idle'] => loadConfig(write(`idle: ${text}\n`), env).idle;
    assert.equal(idle('{ timeoutSeconds: 600 }').maxTimeoutSeconds, 600, 'sessions may only shorten theirs by default');
    assert.equal(idle('{ timeoutSeconds: 0 }').maxTimeoutSeconds, 0, 'never idle by default: no limit');
    assert.equal(idle('{}', { MANTICORE_IDLE_TIMEOUT_SECONDS: '900' }).maxTimeoutSeconds, 900, 'the default follows an overridden timeout');
    assert.equal(idle('{ maxTimeoutSeconds: 7200 }').maxTimeoutSeconds, 7200);
    assert.equal(idle('{}', { MANTICORE_IDLE_MAX_TIMEOUT_SECONDS: '7200' }).maxTimeoutSeconds, 7200, 'set from the environment');
    assert.equal(idle('{ maxTimeoutSeconds: 0 }').maxTimeoutSeconds, 0);
    assert.throws(() => idle('{ maxTimeoutSeconds: 300 }'), /\/idle\/maxTimeoutSeconds: must be above idle.warningSeconds/);
    assert.throws(() => idle('{ maxTimeoutSeconds: 1200 }'), /\/idle\/maxTimeoutSeconds: must not be below idle.timeoutSeconds/);
    assert.throws(() => idle('{ timeoutSeconds: 0, maxTimeoutSeconds: 3600 }'), /\/idle\/maxTimeoutSeconds: must not be below idle.timeoutSeconds \(0 when that is 0/);
    assert.throws(() => idle('{ maxTimeoutSeconds: -1 }'), /\/idle\/maxTimeoutSeconds: must be >= 0/);
    // A session may ask for a timeout even when the operator's is off, so the warning's rule holds then too.
    assert.throws(() => idle('{ timeoutSeconds: 0, warningSeconds: 30 }'), /\/idle\/activityWriteIntervalSeconds: must be below idle.warningSeconds/);
  });

  it('reads every secret as "<set>" for printing, and leaves everything else as it is', () => {
    const secrets = { CONSUL_HTTP_TOKEN: 'c-token', NOMAD_TOKEN: 'n-token', MANTICORE_JWT_SECRET: 'j'.repeat(32), MANTICORE_ADMIN_TOKEN: 'a'.repeat(32) };
    const config = loadConfig(undefined, secrets);
    const redacted = redactSecrets(config);
    assert.deepEqual(redacted, {
      ...config,
      store: { ...config.store, consul: { ...config.store.consul, token: '<set>' } },
      scheduler: { ...config.scheduler, nomad: { ...config.scheduler.nomad, token: '<set>' } },
      auth: { ...config.auth, jwt: { ...config.auth.jwt, secret: '<set>' }, adminToken: '<set>' },
    });
    assert.equal(config.auth.adminToken, 'a'.repeat(32), 'the configuration itself keeps them');
    // Unset, they stay unset: the output does not claim a token that is not there.
    assert.equal(JSON.stringify(redactSecrets(loadConfig(undefined, {}))), JSON.stringify(loadConfig(undefined, {})));
    // A field added to the schema for a credential must be redacted too.
    const credentials = configSchemaNodes().filter(({ path: field }) => /(token|secret|password|credential)$/i.test(field)).map(({ path: field }) => field);
    assert.deepEqual(credentials.sort(), ['auth.adminToken', 'auth.jwt.secret', 'scheduler.nomad.token', 'store.consul.token']);
  });
});
