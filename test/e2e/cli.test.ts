import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

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
  });

  it('exits 2 with a message for an unknown command or option', () => {
    const unknown = run(['launch']);
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /unknown command "launch"/);
    const option = run(['up', '--colour']);
    assert.equal(option.status, 2);
    assert.match(option.stderr, /Unknown option '--colour'/);
  });

  it('refuses to start with a bad configuration file, naming the field, and starts nothing', () => {
    const file = path.join(dir, 'bad.yaml');
    fs.writeFileSync(file, 'router:\n  tcp:\n    portRangeStart: "low"\n');
    const result = run(['up', '--config', file], { MANTICORE_STORE_PATH: path.join(dir, 'state.db') });
    assert.equal(result.status, 2);
    assert.match(result.stderr, /\/router\/tcp\/portRangeStart: must be integer/);
    assert.equal(fs.existsSync(path.join(dir, 'state.db')), false);
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
});
