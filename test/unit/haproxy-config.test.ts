import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  HaproxyConfigError,
  MAX_RUN_DIR_LENGTH,
  parseMap,
  parseTcpBind,
  redactSecret,
  renderHaproxyConfig,
  renderMap,
  runPaths,
  validateRouteTable,
  type HaproxyConfigValues,
} from '../../controller/router/haproxy-config.js';
import { haproxyValues } from '../../controller/cli/up.js';
import { loadConfig } from '../../controller/config/config.js';
import { parseReloadReply, parseShowProc } from '../../controller/router/haproxy-process.js';
import {
  HaproxyRuntime,
  HaproxyRuntimeError,
  MAX_REQUEST_BYTES,
  classifyReply,
  describeCommand,
  parseShowMap,
  replyErrors,
} from '../../controller/router/haproxy-runtime.js';

const TEMPLATE = fs.readFileSync(path.resolve(__dirname, '../../../manifests/haproxy/haproxy.cfg'), 'utf8');
const VALUES: HaproxyConfigValues = { runDir: '/run/manticore', httpBind: '127.0.0.1:8080', tcpBind: '127.0.0.1:20000-20999' };

function problemsOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof HaproxyConfigError, `expected a HaproxyConfigError, got ${String(error)}`);
    return error.message;
  }
  assert.fail('expected a throw');
}

describe('HAProxy config rendering', () => {
  it('fills every placeholder of the shipped template', () => {
    const text = renderHaproxyConfig(TEMPLATE, VALUES);
    assert.doesNotMatch(text, /\{\{|\}\}/);
    assert.match(text, /^\s+stats socket \/run\/manticore\/admin\.sock mode 600 level admin expose-fd listeners$/m);
    assert.match(text, /^\s+bind 127\.0\.0\.1:8080$/m);
    assert.match(text, /^\s+bind 127\.0\.0\.1:20000-20999$/m);
    assert.match(text, /map\(\/run\/manticore\/hosts\.map\)/);
    assert.match(text, /dst_port,map\(\/run\/manticore\/tcp\.map\)/);
    assert.match(text, /^\s+maxconn 4000$/m);
    assert.match(text, /^\s+hard-stop-after 5m$/m);
  });

  it('gives every section a name of its own, as HAProxy 3.2 warns about a backend named like a frontend and 3.3 refuses it', () => {
    const text = renderHaproxyConfig(TEMPLATE, { ...VALUES, httpsBind: '127.0.0.1:8443', httpsPortSuffix: ':8443', tcpTls: true });
    const names = [...text.matchAll(/^(?:frontend|backend|listen) (\S+)/gm)].map((match) => match[1]!);
    assert.ok(names.length >= 4, `sections found: ${names.join(', ')}`);
    assert.deepEqual(names, [...new Set(names)], `section names: ${names.join(', ')}`);
  });

  it('uses given maxconn and hardStopAfter, numbers or strings', () => {
    const text = renderHaproxyConfig(TEMPLATE, { ...VALUES, maxconn: '2500', hardStopAfter: '30s' });
    assert.match(text, /^\s+maxconn 2500$/m);
    assert.match(text, /^\s+hard-stop-after 30s$/m);
    assert.match(renderHaproxyConfig(TEMPLATE, { ...VALUES, maxconn: 100 }), /^\s+maxconn 100$/m);
  });

  it('names an unknown placeholder', () => {
    assert.match(problemsOf(() => renderHaproxyConfig(`${TEMPLATE}\n# {{ nosuch }}\n`, VALUES)), /unknown placeholder \{\{nosuch\}\}/);
  });

  it('names a missing value', () => {
    const { runDir: _omitted, ...rest } = VALUES;
    const message = problemsOf(() => renderHaproxyConfig(TEMPLATE, rest as HaproxyConfigValues));
    assert.match(message, /missing value for placeholder \{\{runDir\}\}/);
  });

  it('names an unknown value and a required placeholder the template never uses', () => {
    const message = problemsOf(() => renderHaproxyConfig('bind {{httpBind}}\n{{runDir}}\n', { ...VALUES, extra: 'x' } as HaproxyConfigValues));
    assert.match(message, /unknown value "extra"/);
    assert.match(message, /template never uses \{\{tcpBind\}\}/);
  });

  it('rejects a malformed placeholder', () => {
    assert.match(problemsOf(() => renderHaproxyConfig(`${TEMPLATE}\n# {{runDir}\n`, VALUES)), /malformed placeholder on line/);
  });

  describe('with TLS at the edge', () => {
    const TLS: HaproxyConfigValues = { ...VALUES, httpsBind: '127.0.0.1:8443', httpsPortSuffix: ':8443' };

    it('leaves every TLS line out without it', () => {
      const text = renderHaproxyConfig(TEMPLATE, VALUES);
      const directives = text.split('\n').filter((line) => !line.trim().startsWith('#')).join('\n');
      assert.doesNotMatch(directives, /ssl|redirect|Strict-Transport-Security|X-Forwarded-Proto/);
      assert.doesNotMatch(text, /^\s*$\n^\s*$/m, 'dropped sections leave no blank lines behind');
    });

    it('serves HTTPS with the installed certificate and redirects plain HTTP, except the health check', () => {
      const text = renderHaproxyConfig(TEMPLATE, TLS);
      assert.match(text, /^\s+bind 127\.0\.0\.1:8080$/m);
      assert.match(text, /^\s+bind 127\.0\.0\.1:8443 ssl crt \/run\/manticore\/edge\.pem alpn http\/1\.1$/m);
      assert.match(text, /^\s+http-request redirect location https:\/\/%\[req\.hdr\(host\),field\(1,:\)\]:8443%\[capture\.req\.uri\] code 301 unless \{ ssl_fc \}$/m);
      assert.ok(text.indexOf('monitor-uri /haproxy-health') < text.indexOf('http-request redirect'), 'the monitor URI answers before the redirect');
      assert.ok(text.indexOf('http-request redirect') < text.indexOf('http-request set-var(txn.route)'), 'plain HTTP never reaches a session');
      assert.match(text, /^\s+ssl-default-bind-options ssl-min-ver TLSv1\.2$/m);
      assert.doesNotMatch(text, /Strict-Transport-Security/);
      assert.match(text, /^\s+bind 127\.0\.0\.1:20000-20999$/m, 'the TCP ports stay plain');
      // Port 443 goes unnamed in redirects.
      assert.match(renderHaproxyConfig(TEMPLATE, { ...TLS, httpsPortSuffix: '' }), /redirect location https:\/\/%\[req\.hdr\(host\),field\(1,:\)\]%\[capture\.req\.uri\]/);
    });

    it('adds HSTS to HTTPS answers and TLS to the TCP ports when asked', () => {
      const text = renderHaproxyConfig(TEMPLATE, { ...TLS, hstsMaxAge: 31536000, tcpTls: true });
      assert.match(text, /^\s+http-after-response set-header Strict-Transport-Security "max-age=31536000" if \{ ssl_fc \}$/m);
      assert.match(text, /^\s+bind 127\.0\.0\.1:20000-20999 ssl crt \/run\/manticore\/edge\.pem$/m);
      assert.match(renderHaproxyConfig(TEMPLATE, { ...TLS, tcpTls: false }), /^\s+bind 127\.0\.0\.1:20000-20999$/m);
    });

    for (const [name, values, pattern] of [
      ['an httpsBind without a port', { ...TLS, httpsBind: '127.0.0.1' }, /httpsBind must be addr:port/],
      ['a port suffix without its colon', { ...TLS, httpsPortSuffix: '8443' }, /httpsPortSuffix must be empty or :<port>/],
      ['an HSTS max-age of 0', { ...TLS, hstsMaxAge: 0 }, /hstsMaxAge must be a whole number of seconds of at least 1/],
    ] as const) {
      it(`rejects ${name}`, () => {
        assert.match(problemsOf(() => renderHaproxyConfig(TEMPLATE, values as HaproxyConfigValues)), pattern);
      });
    }

    it('refuses a template that would ignore TLS', () => {
      const plain = 'bind {{httpBind}}\n{{runDir}} {{tcpBind}}\n';
      assert.match(problemsOf(() => renderHaproxyConfig(plain, TLS)), /httpsBind is given but the template never uses \{\{httpsBind\}\} \(or a \{\{#httpsBind\}\} section\)/);
    });

    it('names malformed sections', () => {
      const base = 'bind {{httpBind}}\n{{runDir}} {{tcpBind}}\n';
      assert.match(problemsOf(() => renderHaproxyConfig(`${base}{{#nosuch}}x{{/nosuch}}\n`, VALUES)), /unknown section \{\{#nosuch\}\}/);
      assert.match(problemsOf(() => renderHaproxyConfig(`${base}{{#tcpTls}}x\n`, VALUES)), /section \{\{#tcpTls\}\} is never closed/);
      assert.match(problemsOf(() => renderHaproxyConfig(`${base}{{/tcpTls}}\n`, VALUES)), /\{\{\/tcpTls\}\} closes no open section/);
      assert.match(problemsOf(() => renderHaproxyConfig(`${base}{{#httpsBind}}{{#tcpTls}}x{{/tcpTls}}{{/httpsBind}}\n`, TLS)), /sections do not nest/);
    });

    it('follows the configuration: redirects to the public HTTPS port, unnamed when 443', () => {
      const render = (env: Record<string, string>): string =>
        renderHaproxyConfig(TEMPLATE, { ...haproxyValues(loadConfig(undefined, { MANTICORE_TLS_CERT_FILE: '/tls/cert.pem', ...env })), runDir: '/run/manticore' });
      const local = render({ MANTICORE_HTTPS_PORT: '9443' });
      assert.match(local, /^\s+bind 127\.0\.0\.1:9443 ssl crt /m);
      assert.match(local, /field\(1,:\)\]:9443%\[capture\.req\.uri\]/);
      // Behind a load balancer's 443 the redirect names no port, whatever HAProxy listens on.
      assert.match(render({ MANTICORE_PUBLIC_HTTP_PORT: '443' }), /field\(1,:\)\]%\[capture\.req\.uri\]/);
      assert.doesNotMatch(renderHaproxyConfig(TEMPLATE, { ...haproxyValues(loadConfig(undefined, {})), runDir: '/run/manticore' }), /ssl crt/);
    });

    it('needs no value for placeholders in a section it leaves out', () => {
      const text = renderHaproxyConfig('bind {{httpBind}}\n{{runDir}} {{tcpBind}}\n  {{#httpsBind}}\nbind {{httpsBind}} {{httpsPortSuffix}}\n  {{/httpsBind}}\nend\n', VALUES);
      assert.equal(text, 'bind 127.0.0.1:8080\n/run/manticore 127.0.0.1:20000-20999\nend\n');
    });
  });

  for (const [name, values, pattern] of [
    ['a relative runDir', { ...VALUES, runDir: 'run/here' }, /absolute/],
    ['an unnormalised runDir', { ...VALUES, runDir: '/run/x/../y' }, /absolute, normalised/],
    ['a runDir with a space', { ...VALUES, runDir: '/run/my dir' }, /may only contain/],
    ['a runDir too long for a unix socket', { ...VALUES, runDir: `/${'d'.repeat(MAX_RUN_DIR_LENGTH)}` }, /unix socket/],
    ['an httpBind without a port', { ...VALUES, httpBind: '127.0.0.1' }, /httpBind must be addr:port/],
    ['an httpBind with a space', { ...VALUES, httpBind: '127.0.0.1:80 ssl' }, /httpBind/],
    ['a reversed tcpBind', { ...VALUES, tcpBind: '127.0.0.1:20999-20000' }, /reversed/],
    ['a tcpBind with one port', { ...VALUES, tcpBind: '127.0.0.1:20000' }, /addr:start-end/],
    ['a maxconn above what the configuration allows', { ...VALUES, maxconn: 20000 }, /maxconn must be an integer from 1 to 15000/],
    ['a hardStopAfter that is not a time', { ...VALUES, hardStopAfter: 'soon' }, /hardStopAfter/],
  ] as const) {
    it(`rejects ${name}`, () => {
      assert.match(problemsOf(() => renderHaproxyConfig(TEMPLATE, values as HaproxyConfigValues)), pattern);
    });
  }

  it('parses the TCP bind range', () => {
    assert.deepEqual(parseTcpBind('127.0.0.1:20000-20999'), { start: 20000, end: 20999 });
    assert.deepEqual(parseTcpBind(':5-5'), { start: 5, end: 5 });
    assert.throws(() => parseTcpBind('127.0.0.1:0-10'), HaproxyConfigError);
  });

  it('derives the run directory paths the template uses', () => {
    const paths = runPaths('/run/manticore/');
    assert.equal(paths.hostsMap, '/run/manticore/hosts.map');
    assert.equal(paths.tcpMap, '/run/manticore/tcp.map');
    assert.equal(paths.adminSocket, '/run/manticore/admin.sock');
    assert.equal(paths.config, '/run/manticore/haproxy.cfg');
    assert.equal(paths.tlsCertificate, '/run/manticore/edge.pem');
  });
});

describe('HAProxy map files', () => {
  it('round-trips through render and parse, sorted by key', () => {
    const entries = new Map([
      ['zeta', '10.0.0.2:8080'],
      ['abc123', '127.0.0.1:3000'],
    ]);
    const text = renderMap(entries);
    assert.deepEqual(text.split('\n').filter((l) => !l.startsWith('#')), ['abc123 127.0.0.1:3000', 'zeta 10.0.0.2:8080', '']);
    assert.deepEqual(parseMap(text), entries);
    const ports = new Map([
      ['20010', '127.0.0.1:1'],
      ['20009', '127.0.0.1:2'],
      ['9000', '127.0.0.1:3'],
    ]);
    assert.deepEqual([...parseMap(renderMap(ports)).keys()], ['9000', '20009', '20010'], 'ports in numeric order');
  });

  it('renders an empty map as a comment only, and parses it back empty', () => {
    assert.equal(parseMap(renderMap(new Map())).size, 0);
  });

  it('skips blank lines and comments, tolerates CRLF and extra spaces', () => {
    assert.deepEqual(parseMap('# c\n\n  a   1.2.3.4:5  \r\nb 1.2.3.4:6\n'), new Map([['a', '1.2.3.4:5'], ['b', '1.2.3.4:6']]));
  });

  it('rejects a line without a value and a duplicate key, with line numbers', () => {
    assert.throws(() => parseMap('a 1.2.3.4:5\nlonely\n'), /line 2: no value/);
    assert.throws(() => parseMap('a 1.2.3.4:5\na 1.2.3.4:6\n'), /line 2: duplicate key/);
  });

  it('refuses to render keys or values that would break the line format', () => {
    assert.throws(() => renderMap(new Map([['two words', '1.2.3.4:5']])), HaproxyConfigError);
    assert.throws(() => renderMap(new Map([['key', '']])), HaproxyConfigError);
    assert.throws(() => renderMap(new Map([['key', '1.2.3.4:5\nevil 1.1.1.1:1']])), HaproxyConfigError);
    assert.throws(() => renderMap(new Map([['#comment', '1.2.3.4:5']])), HaproxyConfigError);
  });
});

describe('route table validation', () => {
  const ok = { hosts: new Map([['abc123', '127.0.0.1:8080']]), ports: new Map([[20000, '10.1.2.3:5000']]) };

  it('accepts tokens [a-z0-9], ipv4:port backends and ports in range', () => {
    validateRouteTable(ok, { start: 20000, end: 20999 });
    validateRouteTable({ hosts: new Map([['x'.repeat(63), '255.255.255.255:65535']]), ports: new Map() });
  });

  for (const token of ['', 'ABC', 'a.b', 'a-b', 'a b', 'x'.repeat(64)]) {
    it(`rejects host token ${JSON.stringify(token.length > 10 ? `${token.slice(0, 5)}…` : token)}`, () => {
      assert.throws(() => validateRouteTable({ hosts: new Map([[token, '127.0.0.1:1']]), ports: new Map() }), /host token/);
    });
  }

  for (const backend of ['localhost:80', '1.2.3.256:80', '1.2.3.4:0', '1.2.3.4:70000', '1.2.3.4', '[::1]:80', '1.2.3.4:80 x']) {
    it(`rejects backend ${JSON.stringify(backend)}`, () => {
      assert.throws(() => validateRouteTable({ hosts: new Map([['abc', backend]]), ports: new Map() }), /not ipv4:port/);
      assert.throws(() => validateRouteTable({ hosts: new Map(), ports: new Map([[20000, backend]]) }), /not ipv4:port/);
    });
  }

  it('rejects ports that are not integers or outside the range', () => {
    for (const port of [0, 1.5, 65536, 19999, 21000]) {
      assert.throws(() => validateRouteTable({ hosts: new Map(), ports: new Map([[port, '1.2.3.4:5']]) }, { start: 20000, end: 20999 }), /public port/);
    }
    assert.throws(() => validateRouteTable({ hosts: new Map(), ports: new Map([[70000, '1.2.3.4:5']]) }), /1-65535/);
  });

  it('does not put a whole secret token into the error', () => {
    const secret = 'supersecrettokenvalue123';
    try {
      validateRouteTable({ hosts: new Map([[secret, 'nowhere']]), ports: new Map() });
      assert.fail('expected a throw');
    } catch (error) {
      assert.doesNotMatch((error as Error).message, new RegExp(secret));
      assert.match((error as Error).message, /supe…\(24 chars\)/);
    }
    assert.equal(redactSecret('ab'), '…(2 chars)');
  });
});

describe('HAProxy runtime replies', () => {
  it('redacts map keys, values and payloads from commands', () => {
    assert.equal(describeCommand('add map /run/hosts.map secret 1.2.3.4:5'), 'add map /run/hosts.map <2 arguments redacted>');
    assert.equal(describeCommand('del map /run/hosts.map secret'), 'del map /run/hosts.map <1 argument redacted>');
    assert.equal(describeCommand('add map @3 /run/hosts.map <<\nsecret 1.2.3.4:5\n'), 'add map @3 /run/hosts.map <payload redacted>');
    assert.equal(describeCommand('show map /run/hosts.map'), 'show map /run/hosts.map');
    assert.equal(describeCommand('show info'), 'show info');
    assert.equal(describeCommand('reload'), 'reload');
    // A certificate's file is no secret; the payload (its private key) never shows.
    assert.equal(describeCommand('set ssl cert /run/edge.pem <<\n-----BEGIN PRIVATE KEY-----\n'), 'set ssl cert /run/edge.pem <payload redacted>');
    assert.equal(describeCommand('commit ssl cert /run/edge.pem'), 'commit ssl cert /run/edge.pem');
  });

  it('classifies error and success replies', () => {
    assert.deepEqual(classifyReply('\n[3]: Key not found.\n\n', true), { text: 'Key not found.', error: true });
    assert.deepEqual(classifyReply('\n\n', true), { text: '', error: false });
    assert.deepEqual(classifyReply('\n[6]: Done.\n\n', true), { text: 'Done.', error: false });
    assert.equal(classifyReply('\n[6]: Unknown command, but maybe one of the following ones is a better match:\n  help\n\n', true).error, true);
    assert.equal(classifyReply('Unknown command, but maybe…\n\n', false).error, true);
    assert.deepEqual(classifyReply('\n0x1 a 1.2.3.4:5\n\n', true), { text: '0x1 a 1.2.3.4:5', error: false });
  });

  it('finds every failure in the reply to several commands sent as one line', () => {
    assert.deepEqual(replyErrors('\n\n[3]: Key not found.\n\n\n'), ['Key not found.']);
    assert.deepEqual(replyErrors('\n\n\n\n'), []);
    assert.deepEqual(replyErrors('\n[3]: Unknown map identifier.\n\n[6]: Unknown command, but maybe…\n\n[6]: Done.\n\n'), ['Unknown map identifier.', 'Unknown command, but maybe…']);
  });

  it('parses show map output, duplicates included', () => {
    assert.deepEqual(parseShowMap('0x55 alpha 127.0.0.1:1\n0x56 alpha 127.0.0.1:2\n\n'), [
      { ref: '0x55', key: 'alpha', value: '127.0.0.1:1' },
      { ref: '0x56', key: 'alpha', value: '127.0.0.1:2' },
    ]);
    assert.deepEqual(parseShowMap(''), []);
  });

  it('parses show proc, including failed reloads and old workers', () => {
    const table = parseShowProc(
      [
        '#<PID>          <type>          <reloads>       <uptime>        <version>      ',
        '4474            master          3 [failed: 1]   0d00h10m53s     2.6.12-1+deb12u4',
        '# workers',
        '4477            worker          0               0d00h10m53s     2.6.12-1+deb12u4',
        '# old workers',
        '4400            worker          2               0d00h20m00s     2.6.12-1+deb12u4',
        '# programs',
        '',
      ].join('\n'),
    );
    assert.deepEqual(table, {
      master: { pid: 4474, reloads: 3, failedReloads: 1 },
      workers: [{ pid: 4477, reloads: 0 }],
      oldWorkers: [{ pid: 4400, reloads: 2 }],
    });
    assert.throws(() => parseShowProc('garbage'), /no master line/);
  });

  it('parses show proc as the 3.x management guide shows it (master CLI, show proc)', () => {
    const table = parseShowProc(
      [
        '#<PID>          <type>          <reloads>       <uptime>        <version>',
        '1162            master          5 [failed: 0]   0d00h02m07s     2.5-dev13',
        '# workers',
        '1271            worker          1               0d00h00m00s     2.5-dev13',
        '# old workers',
        '1233            worker          3               0d00h00m43s     2.0-dev3-6019f6-289',
      ].join('\n'),
    );
    assert.deepEqual(table, {
      master: { pid: 1162, reloads: 5, failedReloads: 0 },
      workers: [{ pid: 1271, reloads: 1 }],
      oldWorkers: [{ pid: 1233, reloads: 3 }],
    });
  });

  // From 2.7 on (3.x included) the master answers `reload` once it is done; 2.6 answers nothing.
  it('reads the status the master CLI answers to reload, and none from HAProxy 2.6', () => {
    // The management guide's examples (master CLI, reload).
    assert.deepEqual(
      parseReloadReply(
        [
          'Success=1',
          '--',
          '[NOTICE]   (482713) : haproxy version is 2.7-dev7-4827fb-69',
          '[NOTICE]   (482713) : path to executable is ./haproxy',
          "[WARNING]  (482713) : config : 'http-request' rules ignored for proxy 'frt1' as they require HTTP mode.",
          '[NOTICE]   (482713) : New worker (482720) forked',
          '[NOTICE]   (482713) : Loading success.',
        ].join('\n'),
      )?.success,
      true,
    );
    const failed = parseReloadReply(
      [
        'Success=0',
        '--',
        '[NOTICE]   (482886) : haproxy version is 2.7-dev7-4827fb-69',
        '[NOTICE]   (482886) : path to executable is ./haproxy',
        "[ALERT]    (482886) : config : parsing [test3.cfg:1]: unknown keyword 'Aglobal' out of section.",
        '[ALERT]    (482886) : config : Fatal errors found in configuration.',
        '[WARNING]  (482886) : Loading failure!',
        '',
      ].join('\n'),
    );
    assert.equal(failed?.success, false);
    assert.match(failed!.log, /^\[NOTICE\].*\n[\s\S]*unknown keyword 'Aglobal'[\s\S]*Loading failure!$/);
    // 3.1, whose master logs the new worker differently (a report on HAProxy's issue tracker).
    assert.equal(
      parseReloadReply(
        [
          'Success=1',
          '--',
          '[NOTICE]   (1161777) : Initializing new worker (1161786)',
          '[NOTICE]   (1161786) : haproxy version is 3.1-dev0-0aee24-2306',
          '[NOTICE]   (1161786) : path to executable is ./haproxy',
          '[WARNING]  (1161786) : config : hlua: please set "tune.lua.bool-sample-conversion" tunable to either "normal" or "pre-3.1-bug" explicitly to avoid ambiguities. This must be set before any "lua-load" or "lua-load-per-thread" directive. Defaulting to "pre-3.1-bug".',
          '[NOTICE]   (1161777) : Loading success.',
        ].join('\n'),
      )?.success,
      true,
    );
    assert.equal(parseReloadReply(''), undefined);
  });
});

describe('HAProxy runtime client (fake socket)', () => {
  let dir: string;
  let server: net.Server;
  let socketPath: string;
  const received: string[] = [];
  let reply = '\n\n';

  before(async () => {
    dir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'manticore-rt-'));
    socketPath = path.join(dir, 'admin.sock');
    server = net.createServer((socket) => {
      let data = '';
      socket.on('data', (chunk) => {
        data += String(chunk);
        if (data.endsWith('\n')) {
          received.push(data);
          socket.end(reply);
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  });

  after(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await fs.promises.rm(dir, { recursive: true, force: true });
  });

  it('sends one command per connection with severity output on, and returns the reply', async () => {
    reply = '\nName: HAProxy\nPid: 42\n\n';
    const runtime = new HaproxyRuntime(socketPath);
    assert.deepEqual(await runtime.showInfo(), { Name: 'HAProxy', Pid: '42' });
    assert.equal(received.at(-1), 'set severity-output number; show info\n');
  });

  it('turns an error reply into an error naming the redacted command and the message', async () => {
    reply = '\n[3]: Key not found.\n\n';
    const runtime = new HaproxyRuntime(socketPath);
    await assert.rejects(runtime.delMap('/run/hosts.map', 'verysecrettoken'), (error: unknown) => {
      assert.ok(error instanceof HaproxyRuntimeError);
      assert.equal(error.reply, 'Key not found.');
      assert.match(error.message, /del map \/run\/hosts\.map <1 argument redacted>.*Key not found/);
      assert.doesNotMatch(error.message, /verysecrettoken/);
      return true;
    });
  });

  it('sends payload commands with a terminating empty line', async () => {
    reply = '\n\n';
    await new HaproxyRuntime(socketPath).addMapEntries('/run/hosts.map', [
      ['a', '1.2.3.4:5'],
      ['b', '1.2.3.4:6'],
    ]);
    assert.equal(received.at(-1), 'set severity-output number; add map /run/hosts.map <<\na 1.2.3.4:5\nb 1.2.3.4:6\n\n');
  });

  it('deletes many keys in one request, taking keys already gone as deleted', async () => {
    reply = '\n\n[3]: Key not found.\n\n\n';
    const runtime = new HaproxyRuntime(socketPath);
    await runtime.delMapEntries('/run/hosts.map', ['a', 'b']);
    assert.equal(received.at(-1), 'set severity-output number; del map /run/hosts.map a; del map /run/hosts.map b\n');
    reply = '\n\n[3]: Unknown map identifier.\n\n';
    await assert.rejects(runtime.delMapEntries('/run/hosts.map', ['secrettoken']), (error: unknown) => {
      assert.ok(error instanceof HaproxyRuntimeError);
      assert.equal(error.reply, 'Unknown map identifier.');
      assert.doesNotMatch(error.message, /secrettoken/);
      return true;
    });
  });

  it('splits deletions into requests that fit HAProxy\'s buffer', async () => {
    reply = '\n\n';
    const before = received.length;
    const keys = Array.from({ length: 400 }, (_, i) => `key${i}`.padEnd(40, 'x'));
    await new HaproxyRuntime(socketPath).delMapEntries('/run/hosts.map', keys);
    const requests = received.slice(before);
    assert.ok(requests.length > 1, 'more than one request');
    assert.ok(requests.every((request) => Buffer.byteLength(request) <= MAX_REQUEST_BYTES));
    assert.deepEqual(requests.flatMap((request) => request.trim().split('; ').slice(1).map((command) => command.split(' ').at(-1))), keys);
  });

  it('takes a reply without HAProxy\'s closing blank line as a failure: the connection closed before the command was answered in full', async () => {
    const runtime = new HaproxyRuntime(socketPath);
    // A request larger than HAProxy's buffer gets the severity command's answer alone; a worker going away may cut a listing short.
    for (const cut of ['', '\n', '\n0x1 tokena 10.0.0.1:80\n']) {
      reply = cut;
      await assert.rejects(runtime.addMap('/run/hosts.map', 'tokena', '10.0.0.1:80'), /closed the connection before its reply was complete/);
      await assert.rejects(runtime.delMapEntries('/run/hosts.map', ['tokena']), /closed the connection before its reply was complete/);
      await assert.rejects(runtime.showMap('/run/hosts.map'), /closed the connection before its reply was complete/);
    }
    reply = '\n0x1 tokena 10.0.0.1:80\n\n';
    assert.deepEqual(await runtime.showMap('/run/hosts.map'), [{ ref: '0x1', key: 'tokena', value: '10.0.0.1:80' }]);
  });

  it('refuses junk before sending: line breaks, separators, oversized payloads', async () => {
    const runtime = new HaproxyRuntime(socketPath);
    const before = received.length;
    await assert.rejects(runtime.execute('show info\nshutdown frontend x'), /line break/);
    await assert.rejects(runtime.addMap('/run/hosts.map', 'a;shutdown', '1.2.3.4:5'), /refusing/);
    await assert.rejects(runtime.delMapEntries('/run/hosts.map', ['a', 'b;shutdown']), /refusing/);
    await assert.rejects(runtime.setMap('/run/hosts.map', 'a', '1.2.3.4:5 x'), /refusing/);
    const big = Array.from({ length: 400 }, (_, i) => [`key${i}`.padEnd(40, 'x'), '127.0.0.1:1000'] as [string, string]);
    await assert.rejects(runtime.addMapEntries('/run/hosts.map', big), new RegExp(`exceeds ${MAX_REQUEST_BYTES}`));
    assert.equal(received.length, before);
  });

  it('reports a socket that does not exist', async () => {
    await assert.rejects(new HaproxyRuntime(path.join(dir, 'nope.sock')).execute('show info'), /ENOENT/);
  });
});
