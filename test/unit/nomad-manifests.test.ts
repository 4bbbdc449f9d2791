import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../../controller/config/config.js';

const root = path.resolve(__dirname, '../../..');
const jobFiles = ['manifests/nomad/manticore.nomad.hcl', 'manifests/nomad/manticore-router.nomad.hcl'];

interface Task {
  readonly name: string;
  /** The `manticore <role>` the task runs. */
  readonly role: string;
  /** What its environment template (`<<-EOT … EOT`, `env = true`) sets, `{{ with … }}` guards left out. */
  readonly environment: Record<string, string>;
}

/** The `{ … }` block that starts at the first brace after `from`. */
function block(text: string, from: number): string {
  let depth = 0;
  for (let i = text.indexOf('{', from); i < text.length; i++) {
    if (text[i] === '{') depth++;
    else if (text[i] === '}' && --depth === 0) return text.slice(from, i + 1);
  }
  throw new Error('unbalanced braces');
}

function tasks(file: string): Task[] {
  const text = fs.readFileSync(path.join(root, file), 'utf8');
  return [...text.matchAll(/^\s*task "([^"]+)" \{/gm)].map((match) => {
    const body = block(text, match.index);
    const role = /args\s*=\s*\["([a-z]+)"/.exec(body)?.[1];
    const template = /<<-EOT\n([\s\S]*?)\n\s*EOT/.exec(body)?.[1];
    assert.ok(role !== undefined && template !== undefined, `${file}: task "${match[1]}" has no args or environment template`);
    const environment: Record<string, string> = {};
    for (const line of template.split('\n')) {
      const assignment = /^(?:\{\{ with [^}]*\}\})?([A-Z][A-Z0-9_]*)=(.*?)(?:\{\{ end \}\})?$/.exec(line.trim());
      if (assignment) environment[assignment[1]!] = assignment[2]!;
    }
    return { name: match[1]!, role, environment };
  });
}

/** The agent variables of a task: its addresses and tokens. */
function agentVariables(task: Task): Record<string, string> {
  return Object.fromEntries(Object.entries(task.environment).filter(([name]) => /^(CONSUL|NOMAD)_/.test(name)));
}

const consul = { CONSUL_HTTP_ADDR: 'http://{{ env "attr.unique.network.ip-address" }}:8500', CONSUL_HTTP_TOKEN: '{{ .consul_token }}' };
const nomad = { NOMAD_ADDR: 'http://{{ env "attr.unique.network.ip-address" }}:4646', NOMAD_TOKEN: '{{ .nomad_token }}' };

/**
 * production.yaml leaves the agents' addresses and tokens to the environment "as the Nomad job files set
 * them": each task must be given those of every agent its part talks to (controller/cli/up.ts and
 * backends.ts), and no other token.
 */
describe('the Nomad job files', () => {
  it('run production.yaml on Consul and Nomad, addresses and tokens taken from the environment', () => {
    const config = loadConfig(path.join(root, 'manifests/examples/production.yaml'), {});
    assert.equal(config.store.backend, 'consul');
    assert.equal(config.scheduler.backend, 'nomad');
    assert.equal(config.store.consul.token, undefined);
    assert.equal(config.scheduler.nomad.token, undefined);
  });

  it('give each part the address and the token of every agent it talks to, the tokens from the job\'s secrets', () => {
    const byRole = new Map(jobFiles.flatMap(tasks).map((task) => [task.role, task]));
    assert.deepEqual([...byRole.keys()].sort(), ['controller', 'frontend', 'router']);
    // The controller schedules sessions' jobs; the front end reads their task logs through the Nomad agent.
    assert.deepEqual(agentVariables(byRole.get('controller')!), { ...consul, ...nomad });
    assert.deepEqual(agentVariables(byRole.get('frontend')!), { ...consul, ...nomad });
    // The router follows the routes in Consul alone: the edge nodes hold no Nomad token.
    assert.deepEqual(agentVariables(byRole.get('router')!), consul);
  });
});
