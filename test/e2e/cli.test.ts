import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { TestCa } from '../support/certificates.js';
import { httpRequest, tcpProbe } from '../support/http.js';
import { isolatedEnvironment } from '../support/manticore.js';
import { freePort } from '../support/ports.js';
import { processesNaming } from '../support/processes.js';
import { waitFor } from '../support/wait.js';

const repoRoot = path.resolve(__dirname, '../../..');
const cli = path.join(repoRoot, 'dist/controller/cli/main.js');

function run(args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [cli, ...args], { cwd: repoRoot, env: { ...process.env, ...env }, encoding: 'utf8', timeout: 20_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('the manticore command', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-cli-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('prints usage with --help and exits 0', () => {
    const result = run(['--help']);
    assert.equal(result.status, 0);
    assert.match(result.stdout, /Usage: manticore <command>/);
    const wide = result.stdout.split('\n').filter((line) => line.length > 110);
    assert.deepEqual(wide, [], 'every line within the width the usage is written to');
  });

  it('exits 2 with a message for an unknown command or option', () => {
    const none = run([]);
    assert.equal(none.status, 2);
    assert.equal(none.stdout, '', 'a usage error writes nothing a pipe would take for output');
    assert.match(none.stderr, /^manticore: a command is needed\n\nUsage: manticore <command>/);
    const unknown = run(['launch']);
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /unknown command "launch"/);
    const option = run(['up', '--colour']);
    assert.equal(option.status, 2);
    assert.match(option.stderr, /Unknown option '--colour'/);
  });

  it('says that the options of a client command go after it (exit 2), in one line and a hint rather than the whole usage', () => {
    const before = run(['-o', 'yaml', 'sessions', 'list'], { MANTICORE_URL: 'http://127.0.0.1:9' });
    assert.equal(before.status, 2);
    assert.equal(before.stdout, '');
    assert.equal(before.stderr, 'manticore: options go after the command, as in: manticore sessions list -o yaml\n(see: manticore sessions --help)\n');
    const unknown = run(['--colour']);
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /^manticore: Unknown option '--colour'.*\n\(see: manticore --help\)\n$/s);
  });

  it('refuses to start with a bad configuration file, naming the field, and starts nothing', () => {
    const file = path.join(dir, 'bad.yaml');
    fs.writeFileSync(file, 'router:\n  tcp:\n    portRangeStart: "low"\n');
    const result = run(['up', '--config', file], { MANTICORE_STORE_PATH: path.join(dir, 'state.db') });
    assert.equal(result.status, 2);
    assert.match(result.stderr, /\/router\/tcp\/portRangeStart: must be integer/);
    assert.equal(fs.existsSync(path.join(dir, 'state.db')), false);
  });

  it('refuses to start, and check-config fails, when a JWT public key cannot be read, naming it, and starts nothing', () => {
    const file = path.join(dir, 'jwt.yaml');
    const key = path.join(dir, 'no-such-key.pem');
    fs.writeFileSync(file, `auth:\n  mode: jwt\n  jwt:\n    publicKeys: [${JSON.stringify(key)}]\n`);
    const problem = /\/auth\/jwt\/publicKeys\/0: cannot read the key file .*no-such-key\.pem/;
    const result = run(['up', '--config', file], { MANTICORE_STORE_PATH: path.join(dir, 'jwt-state.db') });
    assert.equal(result.status, 2);
    assert.match(result.stderr, problem);
    assert.equal(fs.existsSync(path.join(dir, 'jwt-state.db')), false);
    const checked = run(['check-config', '--config', file]);
    assert.equal(checked.status, 2, checked.stdout);
    assert.match(checked.stderr, problem);
  });

  it('refuses to start when the TLS certificate cannot be used, naming the file, and starts nothing', async () => {
    const missing = path.join(dir, 'no-such-cert.pem');
    const env = { MANTICORE_STORE_PATH: path.join(dir, 'tls-state.db'), MANTICORE_TLS_CERT_FILE: missing, MANTICORE_DOMAIN: 'sessions.localhost' };
    const result = run(['up'], env);
    assert.equal(result.status, 2);
    assert.ok(result.stderr.includes(`invalid router.tls: cannot read the certificate file ${missing}`), result.stderr);
    assert.equal(fs.existsSync(path.join(dir, 'tls-state.db')), false);
    // A certificate for other names is refused just as early, and check-config says so too.
    const other = await new TestCa(path.join(dir, 'ca')).issue(['*.elsewhere.test']);
    const tlsEnv = { ...env, MANTICORE_TLS_CERT_FILE: other.certFile, MANTICORE_TLS_KEY_FILE: other.keyFile };
    for (const command of ['up', 'check-config']) {
      const refused = run([command], tlsEnv);
      assert.equal(refused.status, 2);
      assert.match(refused.stderr, /does not cover the sessions' hostnames <token>\.sessions\.localhost/);
    }
    assert.equal(fs.existsSync(path.join(dir, 'tls-state.db')), false);
  });

  it('checks the TLS certificate of a good configuration', async () => {
    const certificate = await new TestCa(path.join(dir, 'good-ca')).issue(['*.sessions.localhost']);
    const result = run(['check-config'], { MANTICORE_TLS_CERT_FILE: certificate.certFile, MANTICORE_TLS_KEY_FILE: certificate.keyFile, MANTICORE_DOMAIN: 'sessions.localhost' });
    assert.equal(result.status, 0, result.stderr);
    const parsed = JSON.parse(result.stdout) as { edgeCertificate: { names: string[] }; config: { public: { httpScheme: string; httpPort: number } } };
    assert.deepEqual(parsed.edgeCertificate.names, ['DNS:*.sessions.localhost']);
    assert.deepEqual(parsed.config.public, { domain: 'sessions.localhost', httpScheme: 'https', httpPort: 8443, tcpHost: 'localhost', tcpTls: false });
  });

  it('refuses to start, and check-config fails, when the HAProxy config template cannot be read, naming the field and the file', () => {
    const file = path.join(dir, 'haproxy-template.yaml');
    fs.writeFileSync(file, 'router:\n  configTemplate: no-such-haproxy.cfg\n');
    const problem = new RegExp(`/router/configTemplate: cannot read the HAProxy configuration template ${path.join(repoRoot, 'no-such-haproxy.cfg')}`);
    const started = run(['up', '--config', file], { MANTICORE_STORE_PATH: path.join(dir, 'template-state.db') });
    assert.equal(started.status, 2, started.stderr);
    assert.match(started.stderr, problem);
    assert.equal(fs.existsSync(path.join(dir, 'template-state.db')), false);
    const checked = run(['check-config', '--config', file]);
    assert.equal(checked.status, 2, checked.stdout);
    assert.match(checked.stderr, problem);
  });

  it('refuses to start with a broken template, naming the file', () => {
    const templates = path.join(dir, 'templates');
    fs.mkdirSync(templates);
    fs.writeFileSync(path.join(templates, 'broken.yaml'), 'apiVersion: manticore/v1\nkind: SessionTemplate\nmetadata: { name: broken }\n');
    const result = run(['check-config'], { MANTICORE_TEMPLATES_DIR: templates });
    assert.equal(result.status, 2);
    assert.match(result.stderr, /broken\.yaml.*\(root\): must have required property 'spec'/);
  });

  it('checks a good configuration and lists the templates', () => {
    const result = run(['check-config', '--config', 'manifests/examples/embedded.yaml']);
    assert.equal(result.status, 0, result.stderr);
    const parsed = JSON.parse(result.stdout) as { templates: string[]; config: { frontend: { port: number } } };
    assert.deepEqual(parsed.templates, ['demo', 'sdl']);
    assert.equal(parsed.config.frontend.port, 4000);
  });

  it('checks a production configuration without printing its secrets, only that they are set', () => {
    const secrets = { CONSUL_HTTP_TOKEN: 'consul-acl-token-0f6c1d2e', NOMAD_TOKEN: 'nomad-acl-token-9a8b7c6d', MANTICORE_ADMIN_TOKEN: 'admin-'.repeat(6), MANTICORE_JWT_SECRET: 'jwt-hs256-'.repeat(4) };
    const result = run(['check-config', '--config', 'manifests/examples/production.yaml'], secrets);
    assert.equal(result.status, 0, result.stderr);
    for (const [variable, value] of Object.entries(secrets)) assert.ok(!result.stdout.includes(value), `${variable} printed in clear`);
    const { config } = JSON.parse(result.stdout) as { config: { store: { consul: { token: string } }; scheduler: { nomad: { token: string } }; auth: { adminToken: string; jwt: { secret: string } } } };
    assert.deepEqual([config.store.consul.token, config.scheduler.nomad.token, config.auth.adminToken, config.auth.jwt.secret], ['<set>', '<set>', '<set>', '<set>']);
  });

  it('runs one part alone: `manticore frontend` serves the API and starts no router', async () => {
    const frontendPort = await freePort();
    const httpPort = await freePort();
    const child = spawn(process.execPath, [cli, 'frontend'], {
      cwd: repoRoot,
      env: {
        ...process.env,
        MANTICORE_STORE_PATH: path.join(dir, 'frontend-only.db'),
        MANTICORE_FRONTEND_PORT: String(frontendPort),
        MANTICORE_HTTP_PORT: String(httpPort),
        MANTICORE_LOG_LEVEL: 'warn',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      const templates = await waitFor('the front end', async () => {
        const answer = await httpRequest(`http://127.0.0.1:${frontendPort}/api/v1/templates`);
        return answer.status === 200 ? answer : undefined;
      });
      assert.match(templates.body, /"demo"/);
      assert.equal(await tcpProbe('127.0.0.1', httpPort), 'refused', 'no HAProxy was started');

      // The banner's suggestion, run as printed, makes a session its caller can then read (and delete).
      const tryLine = await waitFor('the banner', () => /^ +try: +(curl .*)$/m.exec(output)?.[1]);
      const headers = Object.fromEntries([...tryLine.matchAll(/-H '([^:']+): ([^']+)'/g)].map((match) => [match[1]!, match[2]!]));
      const created = await httpRequest(/-XPOST (\S+)/.exec(tryLine)![1]!, { method: 'POST', headers, body: /-d '([^']+)'/.exec(tryLine)![1]! });
      assert.equal(created.status, 201, created.body);
      const { metadata } = JSON.parse(created.body) as { metadata: { id: string } };
      const caller = Object.fromEntries(Object.entries(headers).filter(([name]) => name !== 'content-type'));
      const read = await httpRequest(`http://127.0.0.1:${frontendPort}/api/v1/sessions/${metadata.id}`, { headers: caller });
      assert.equal(read.status, 200, `${tryLine}\n${read.body}`);
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await exited, 0);
  });

  it('exits 1 when a part cannot start (the front end\'s port is taken), having stopped the parts it started', async () => {
    const stateDir = path.join(dir, 'port-taken');
    const { env } = await isolatedEnvironment(stateDir, 4);
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    try {
      const result = run(['up'], { ...env, MANTICORE_FRONTEND_PORT: String((blocker.address() as net.AddressInfo).port) });
      assert.equal(result.status, 1, `exit ${result.status} (null: still running after 20 s)\n${result.stderr.slice(-500)}`);
      assert.match(result.stderr, new RegExp(`manticore: start-up failed: frontend\\.port: 127\\.0\\.0\\.1:${(blocker.address() as net.AddressInfo).port} is already in use \\(by another Manticore, or another program\\); stop it, or set another port\n`));
      // The router (HAProxy) starts first and was running when the front end failed.
      const haproxyConfig = path.join(stateDir, 'haproxy/haproxy.cfg');
      assert.ok(fs.existsSync(haproxyConfig));
      assert.deepEqual(processesNaming(haproxyConfig), [], 'the HAProxy it started was stopped');
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
    }
  });

  describe('render-job', () => {
    interface RenderedJobBody {
      Job: {
        ID: string;
        Meta: Record<string, string>;
        TaskGroups: Array<{
          Networks: Array<{ Mode: string; DynamicPorts: Array<{ Label: string; To?: number }> }>;
          Tasks: Array<{ Name: string; Driver: string; Config: { image?: string }; Env?: Record<string, string>; Resources: { CPU: number; MemoryMB: number } }>;
        }>;
      };
    }

    it('prints the Nomad job of an sdl session: every port, the images, resources and the HMI pointed at Core', () => {
      const result = run(['render-job', '--template', 'sdl', '--config', 'manifests/examples/production.yaml']);
      assert.equal(result.status, 0, result.stderr);
      const { Job: job } = JSON.parse(result.stdout) as RenderedJobBody;
      assert.match(job.ID, /^manticore-[a-z0-9]+$/);
      assert.equal(job.Meta.manticore_session_id, job.ID.slice('manticore-'.length));
      assert.equal(job.TaskGroups.length, 1);
      const [group] = job.TaskGroups;
      assert.equal(group!.Networks[0]!.Mode, 'bridge');
      assert.deepEqual(
        Object.fromEntries(group!.Networks[0]!.DynamicPorts.map((port) => [port.Label, port.To])),
        { broker: 9000, tcp: 12345, file: 3001, log: 8888, policy: 9898, wsServer: 2020, store: 3000, python: 8081, hmi: 8080 },
      );
      const core = group!.Tasks.find((task) => task.Name === 'core')!;
      const hmi = group!.Tasks.find((task) => task.Name === 'hmi')!;
      assert.equal(core.Config.image, 'smartdevicelink/manticore-sdl-core:default-8.2.0-ubuntu-update');
      assert.equal(hmi.Config.image, 'smartdevicelink/manticore-hmi-generic:minimal-0.13.0');
      assert.deepEqual(core.Resources, { CPU: 120, MemoryMB: 250 });
      // production.yaml's public port is 80: spelt out, slashes escaped for the HMI image's start script.
      assert.match(hmi.Env!.BROKER_ADDR!, /^ws:\\\/\\\/[a-z2-7]{26}\.sessions\.example\.com:80$/);
      assert.match(hmi.Env!.PYTHON_ADDRESS!, /^ws:\\\/\\\/[a-z2-7]{26}\.sessions\.example\.com:80$/);
    });

    it('takes parameters and refuses bad ones with exit code 2', () => {
      const bad = run(['render-job', '--template', 'sdl', '--param', 'coreVersion=1.0']);
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /\/parameters\/coreVersion/);
      assert.equal(run(['render-job', '--template', 'nope']).status, 2);
      assert.equal(run(['render-job']).status, 2);
      assert.match(run(['render-job', '--template', 'sdl', '--param', 'novalue']).stderr, /name=value/);
      assert.match(run(['up', '--template', 'sdl']).stderr, /belong to render-job/);
    });
  });
});
