import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadTemplates } from '../../controller/api/templates.js';
import { loadConfig } from '../../controller/config/config.js';

const root = path.resolve(__dirname, '../../..');
const jobFiles = ['manifests/nomad/manticore.nomad.hcl', 'manifests/nomad/manticore-router.nomad.hcl'];

interface Task {
  readonly name: string;
  /** The job and the task group it belongs to. */
  readonly job: string;
  readonly group: string;
  /** The Nomad variables its templates read (`nomadVar "<path>"`). */
  readonly variables: string[];
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

/** Both job files, one after the other. */
function jobFilesText(): string {
  return jobFiles.map((file) => fs.readFileSync(path.join(root, file), 'utf8')).join('');
}

/** The settings a group's tasks get from the job files: its env blocks, and the plain lines of its env templates. */
function envOf(text: string, group: string): Record<string, string> {
  const body = block(text, new RegExp(`^\\s*group "${group}" \\{`, 'm').exec(text)!.index);
  const settings = [...body.matchAll(/^\s*([A-Z][A-Z0-9_]*)\s*=\s*"([^"{}]*)"\s*$/gm), ...body.matchAll(/^\s*([A-Z][A-Z0-9_]*)=([^{}\s]+)\s*$/gm)];
  return Object.fromEntries(settings.map((found) => [found[1]!, found[2]!]));
}

function tasks(file: string): Task[] {
  const text = fs.readFileSync(path.join(root, file), 'utf8');
  const job = /^job "([^"]+)"/m.exec(text)?.[1];
  assert.ok(job !== undefined, `${file}: no job`);
  const groups = [...text.matchAll(/^\s*group "([^"]+)" \{/gm)];
  return [...text.matchAll(/^\s*task "([^"]+)" \{/gm)].map((match) => {
    const body = block(text, match.index);
    const group = groups.filter((candidate) => candidate.index < match.index).pop()?.[1];
    assert.ok(group !== undefined, `${file}: task "${match[1]}" is in no group`);
    const variables = [...body.matchAll(/nomadVar \\?"([^"\\]+)\\?"/g)].map((found) => found[1]!);
    const role = /args\s*=\s*\["([a-z]+)"/.exec(body)?.[1];
    const template = /<<-EOT\n([\s\S]*?)\n\s*EOT/.exec(body)?.[1];
    assert.ok(role !== undefined && template !== undefined, `${file}: task "${match[1]}" has no args or environment template`);
    const environment: Record<string, string> = {};
    for (const line of template.split('\n')) {
      const assignment = /^(?:\{\{ with [^}]*\}\})?([A-Z][A-Z0-9_]*)=(.*?)(?:\{\{ end \}\})?$/.exec(line.trim());
      if (assignment) environment[assignment[1]!] = assignment[2]!;
    }
    return { name: match[1]!, job, group, role, environment, variables };
  });
}

/** The agent variables of a task: its addresses and tokens. */
function agentVariables(task: Task): Record<string, string> {
  return Object.fromEntries(Object.entries(task.environment).filter(([name]) => /^(CONSUL|NOMAD)_/.test(name)));
}

interface WorkloadPolicy {
  readonly file: string;
  /** The job it is applied to (`nomad acl policy apply -job <job> … <file>`, as its header says). */
  readonly job: string;
  /** Variable paths (globs) it lets read. */
  readonly readable: string[];
}

/** The Nomad ACL policies of manifests/nomad/ that are applied to a job's workload identity. */
function workloadPolicies(): WorkloadPolicy[] {
  const dir = path.join(root, 'manifests/nomad');
  return fs
    .readdirSync(dir)
    .filter((name) => name.endsWith('.hcl') && !name.endsWith('.nomad.hcl'))
    .flatMap((name) => {
      const file = `manifests/nomad/${name}`;
      const text = fs.readFileSync(path.join(dir, name), 'utf8');
      const readable = [...text.matchAll(/path "([^"]+)" \{\s*capabilities\s*=\s*\[([^\]]*)\]/g)].filter((rule) => /"read"/.test(rule[2]!)).map((rule) => rule[1]!);
      return [...text.matchAll(/^#\s*nomad acl policy apply (.*)$/gm)].flatMap((command) => {
        const job = /(?:^|\s)-job[= ](\S+)/.exec(command[1]!)?.[1];
        return job !== undefined && command[1]!.trim().endsWith(file) ? [{ file, job, readable }] : [];
      });
    });
}

/** Nomad's variable path globs: `*` matches anything, even nothing. */
function globMatches(pattern: string, variable: string): boolean {
  return new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`).test(variable);
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

  it("read only Nomad variables their workload identity may read: the job's own paths, or a workload policy's the operator's guide applies to the job", () => {
    const policies = workloadPolicies();
    const guide = fs.readFileSync(path.join(root, 'docs/operations.md'), 'utf8');
    const all = jobFiles.flatMap(tasks);
    assert.ok(all.every((task) => task.variables.length > 0), 'every task renders its configuration from a Nomad variable');
    for (const task of all) {
      // Nomad's implicit policy for a task: exactly these paths, no glob (see Nomad's "Task Access to Variables").
      const own = ['nomad/jobs', `nomad/jobs/${task.job}`, `nomad/jobs/${task.job}/${task.group}`, `nomad/jobs/${task.job}/${task.group}/${task.name}`];
      for (const variable of task.variables) {
        if (own.includes(variable)) continue;
        const policy = policies.find((candidate) => candidate.job === task.job && candidate.readable.some((pattern) => globMatches(pattern, variable)));
        assert.ok(policy, `task "${task.name}" (job ${task.job}, group ${task.group}) reads ${variable}: neither its own paths (${own.join(', ')}) nor a workload policy applied to job ${task.job} lets it`);
        const applied = guide.split('\n').some((line) => line.includes('nomad acl policy apply') && new RegExp(`-job[= ]${task.job}\\b`).test(line) && line.includes(policy.file));
        assert.ok(applied, `docs/operations.md does not apply ${policy.file} to job ${task.job}`);
      }
    }
  });

  it("has the edge nodes reserve, in their Nomad client configuration, the ports HAProxy binds on the host network outside Nomad's knowledge", () => {
    const config = loadConfig(path.join(root, 'manifests/examples/production.yaml'), {});
    const { http, tcp } = config.router;
    // Nomad hands out host ports for every allocation's dynamic ports (the sessions' own, the controller's and
    // the front end's) from its client's dynamic range, 20000-32000 by default: the TCP range lies inside it.
    const dynamic = { start: 20_000, end: 32_000 };
    assert.ok(tcp.portRangeStart <= dynamic.end && tcp.portRangeEnd >= dynamic.start, 'the example range no longer overlaps Nomad\'s dynamic ports');
    const guide = fs.readFileSync(path.join(root, 'docs/operations.md'), 'utf8');
    const nodes = /\*\*Nodes\.\*\*[\s\S]*?(?=\n\d+\. \*\*)/.exec(guide)?.[0] ?? '';
    const reserved = /reserved_ports\s*=\s*"([^"]*)"/.exec(nodes)?.[1];
    assert.ok(reserved !== undefined, 'the guide\'s Nodes step gives the edge nodes no client reserved { reserved_ports = "…" }');
    const ranges = reserved.split(',').map((part) => {
      const [start, end = start] = part.trim().split('-').map(Number);
      return { start: start!, end: end! };
    });
    const isReserved = (port: number): boolean => ranges.some((range) => range.start <= port && port <= range.end);
    assert.ok(isReserved(http.port), `router.http.port ${http.port} is not reserved (${reserved})`);
    for (let port = tcp.portRangeStart; port <= tcp.portRangeEnd; port++) assert.ok(isReserved(port), `TCP port ${port} is not reserved (${reserved})`);
    // The ports the router job declares itself must stay free for it: Nomad places no static port that is reserved.
    const routerJob = fs.readFileSync(path.join(root, 'manifests/nomad/manticore-router.nomad.hcl'), 'utf8');
    for (const [, port] of routerJob.matchAll(/static\s*=\s*(\d+)/g)) assert.ok(!isReserved(Number(port)), `the router job's static port ${port} is reserved too`);
  });

  it('give each part the ports production.yaml has it listen on, beyond loopback, where Nomad maps them and Consul checks them', () => {
    const text = jobFilesText();
    /** The port a group declares under `label`: the container port it maps to (`to`), or its static host port. */
    const declared = (group: string, label: string): number => {
      const start = new RegExp(`^\\s*group "${group}" \\{`, 'm').exec(text);
      assert.ok(start, `no group "${group}"`);
      const port = new RegExp(`port "${label}" \\{\\s*(?:to|static)\\s*=\\s*(\\d+)`).exec(block(text, start.index));
      assert.ok(port, `group "${group}" declares no port "${label}"`);
      return Number(port[1]);
    };
    // The job files set the listeners they depend on; an operator's configuration that leaves them out (the
    // defaults listen on loopback) must not leave the port mapping and the checks without an answer.
    for (const file of [path.join(root, 'manifests/examples/production.yaml'), undefined]) {
      const config = (group: string): ReturnType<typeof loadConfig> => loadConfig(file, envOf(text, group));
      const listeners: Array<[string, { host: string; port: number }, number]> = [
        ['controller status server', { host: config('controller').controller.statusHost, port: config('controller').controller.statusPort }, declared('controller', 'status')],
        ['front end', config('frontend').frontend, declared('frontend', 'http')],
        ["router's status server", { host: config('router').router.statusHost, port: config('router').router.statusPort }, declared('router', 'status')],
        ...(file === undefined ? [] : [["HAProxy's stats", config('router').router.haproxyStats, declared('router', 'haproxy-stats')] as [string, { host: string; port: number }, number]]),
      ];
      const where = file === undefined ? 'with no configuration file' : `with ${path.basename(file)}`;
      for (const [what, listener, port] of listeners) {
        assert.equal(listener.port, port, `${where}, the ${what} listens on ${listener.port}, the job file declares ${port}`);
        assert.equal(listener.host, '0.0.0.0', `${where}, the ${what} listens on ${listener.host}, out of reach of the port mapping and Consul's check`);
      }
    }
  });

  it("has the controller point the AWS load balancers' health checks at the routers' /readyz where the router job serves it", () => {
    const text = jobFilesText();
    // An operator's file with an AWS pool and no router status settings: the router job's environment sets them.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-manifests-'));
    try {
      const file = path.join(dir, 'aws.yaml');
      fs.writeFileSync(file, 'aws:\n  loadBalancers: [{ name: edge, type: classic }]\n');
      const router = loadConfig(file, envOf(text, 'router')).router;
      assert.ok(router.statusPort > 0 && router.statusHost === '0.0.0.0', 'the router job serves its /readyz beyond loopback');
      // The controller, which configures the checks, derives them from the router's status server as it knows it.
      const { port, path: checked } = loadConfig(file, envOf(text, 'controller')).aws!.healthCheck;
      assert.deepEqual({ port, path: checked }, { port: router.statusPort, path: '/readyz' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("has the session nodes given the CNI plugins that a shipped template's bridge network needs", () => {
    const bridged = [...loadTemplates(path.join(root, 'manifests/templates')).values()].filter((template) => {
      const nomad = template.spec.backends.nomad;
      return nomad !== undefined && (nomad.networkMode ?? 'bridge') === 'bridge';
    });
    assert.deepEqual(bridged.map((template) => template.metadata.name), ['sdl']);
    // Nomad sets up a bridge network namespace with the CNI reference plugins (bridge, portmap, …), which a
    // client does not ship with: an allocation on a node without them fails to start.
    const guide = fs.readFileSync(path.join(root, 'docs/operations.md'), 'utf8');
    const nodes = /\*\*Nodes\.\*\*[\s\S]*?(?=\n\d+\. \*\*)/.exec(guide)?.[0] ?? '';
    assert.match(nodes, /CNI\s+reference\s+plugins/, "the guide's Nodes step does not have the session nodes install the CNI reference plugins");
    assert.match(nodes, /cni_path|\/opt\/cni\/bin/, "the guide's Nodes step does not say where Nomad looks for the CNI plugins");
  });
});
