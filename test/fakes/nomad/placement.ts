import net from 'node:net';
import os from 'node:os';
import type { AllocMetric, ConstraintSpec, GroupSpec, JobSpec, NodeRecord, PortMapping } from './types.js';

/**
 * Placement of one task group as Nomad's generic scheduler does it, reduced to what the double needs:
 * feasibility (status, datacenter, node pool, constraints), then resources (cpu, memory, disk, reserved
 * ports) with bin packing among the nodes that fit, and an AllocMetric that says why when none does.
 */

/** What the live allocations on a node use. */
export interface NodeUsage {
  cpu: number;
  memoryMB: number;
  diskMB: number;
  ports: Set<number>;
}

export type Placement =
  | { ok: true; node: NodeRecord; metric: AllocMetric }
  | { ok: false; metric: AllocMetric };

export const NOMAD_VERSION = '1.9.7';
/** Nomad's default dynamic port range (client `min_dynamic_port`/`max_dynamic_port`). */
const MIN_DYNAMIC_PORT = 20_000;
const MAX_DYNAMIC_PORT = 32_000;

export function emptyMetric(): AllocMetric {
  return {
    NodesEvaluated: 0,
    NodesFiltered: 0,
    NodesInPool: 0,
    NodesAvailable: {},
    ClassFiltered: null,
    ConstraintFiltered: null,
    NodesExhausted: 0,
    ClassExhausted: null,
    DimensionExhausted: null,
    QuotaExhausted: null,
    AllocationTime: 0,
    CoalescedFailures: 0,
  };
}

/** The attributes a Nomad client fingerprints, as far as constraints are likely to ask for them. */
export function nodeAttributes(node: NodeRecord, hostIP: string): Record<string, string> {
  const arch = process.arch === 'x64' ? 'amd64' : process.arch;
  return {
    'kernel.name': process.platform,
    'os.name': process.platform,
    'cpu.arch': arch,
    'cpu.totalcompute': String(node.spec.cpu),
    'memory.totalbytes': String(node.spec.memoryMB * 1024 * 1024),
    'unique.hostname': node.spec.name,
    'unique.network.ip-address': hostIP,
    'nomad.version': NOMAD_VERSION,
    'driver.raw_exec': '1',
    'driver.docker': '1',
    'os.signals': 'SIGTERM,SIGKILL,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2',
    hostname: os.hostname(),
    ...node.spec.attributes,
  };
}

/** `*` and `?` globs, as Nomad 1.5+ accepts in Datacenters. */
export function matchesDatacenter(pattern: string, datacenter: string): boolean {
  const regex = new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
  return regex.test(datacenter);
}

/** Resolves a constraint target against a node; undefined when the node has no such property. */
function resolveTarget(target: string, node: NodeRecord, hostIP: string): string | undefined {
  const reference = /^\$\{(.+)\}$/.exec(target)?.[1];
  if (reference === undefined) return target;
  switch (reference) {
    case 'node.unique.id':
      return node.id;
    case 'node.unique.name':
      return node.spec.name;
    case 'node.datacenter':
      return node.spec.datacenter;
    case 'node.class':
      return node.spec.nodeClass;
    case 'node.pool':
      return node.spec.nodePool;
  }
  if (reference.startsWith('attr.')) return nodeAttributes(node, hostIP)[reference.slice('attr.'.length)];
  if (reference.startsWith('meta.')) return node.spec.meta[reference.slice('meta.'.length)];
  return undefined;
}

function compareVersions(a: string, b: string): number {
  const parts = (v: string): number[] => v.replace(/^v/, '').split(/[.-]/).map((p) => Number.parseInt(p, 10) || 0);
  const left = parts(a);
  const right = parts(b);
  for (let i = 0; i < Math.max(left.length, right.length); i++) {
    const diff = (left[i] ?? 0) - (right[i] ?? 0);
    if (diff !== 0) return diff;
  }
  return 0;
}

/** A version constraint such as ">= 1.2, < 2.0". */
function versionSatisfies(version: string, constraint: string): boolean {
  return constraint.split(',').every((part) => {
    const match = /^\s*(>=|<=|!=|>|<|=|~>)?\s*(\S+)\s*$/.exec(part);
    if (!match) return false;
    const diff = compareVersions(version, match[2] ?? '');
    switch (match[1] ?? '=') {
      case '>=': return diff >= 0;
      case '<=': return diff <= 0;
      case '>': return diff > 0;
      case '<': return diff < 0;
      case '!=': return diff !== 0;
      case '~>': return diff >= 0;
      default: return diff === 0;
    }
  });
}

export function constraintHolds(constraint: ConstraintSpec, node: NodeRecord, hostIP: string): boolean {
  const left = resolveTarget(constraint.LTarget, node, hostIP);
  const right = resolveTarget(constraint.RTarget, node, hostIP);
  const operand = constraint.Operand || '=';
  if (operand === 'is_set') return left !== undefined;
  if (operand === 'is_not_set') return left === undefined;
  // Count 1 per group: every placement is on a distinct host and a distinct property value.
  if (operand === 'distinct_hosts' || operand === 'distinct_property') return true;
  if (left === undefined || right === undefined) return operand === '!=' || operand === 'not' ? left !== right : false;
  const set = (text: string): Set<string> => new Set(text.split(',').map((item) => item.trim()));
  switch (operand) {
    case '=': case '==': case 'is': return left === right;
    case '!=': case 'not': return left !== right;
    case '<': case '<=': case '>': case '>=': {
      const l = Number(left);
      const r = Number(right);
      const cmp = Number.isFinite(l) && Number.isFinite(r) ? l - r : left.localeCompare(right);
      return operand === '<' ? cmp < 0 : operand === '<=' ? cmp <= 0 : operand === '>' ? cmp > 0 : cmp >= 0;
    }
    case 'regexp': return new RegExp(right).test(left);
    case 'version': case 'semver': return versionSatisfies(left, right);
    case 'set_contains': case 'set_contains_all': { const have = set(left); return [...set(right)].every((item) => have.has(item)); }
    case 'set_contains_any': { const have = set(left); return [...set(right)].some((item) => have.has(item)); }
    default: return false;
  }
}

/** Nomad's Constraint.String(), the key of ConstraintFiltered. */
const constraintKey = (c: ConstraintSpec): string => `${c.LTarget} ${c.Operand} ${c.RTarget}`;

/**
 * Chooses a node for one allocation of `group`: the feasible node that fits and is the most used
 * afterwards (Nomad's bin packing), or the AllocMetric of the failure.
 */
export function placeGroup(job: JobSpec, group: GroupSpec, nodes: readonly NodeRecord[], usage: (nodeId: string) => NodeUsage, hostIP: string): Placement {
  const metric = emptyMetric();
  const started = process.hrtime.bigint();
  const inPool = nodes.filter((node) => job.nodePool === 'all' || node.spec.nodePool === job.nodePool);
  metric.NodesInPool = inPool.length;
  for (const dc of job.datacenters) {
    metric.NodesAvailable[dc] = inPool.filter((node) => node.status === 'ready' && matchesDatacenter(dc, node.spec.datacenter)).length;
  }
  const candidates = inPool.filter((node) => node.status === 'ready' && job.datacenters.some((dc) => matchesDatacenter(dc, node.spec.datacenter)));
  const constraints = [...job.constraints, ...group.constraints, ...group.tasks.flatMap((task) => task.constraints)];
  const need = {
    cpu: group.tasks.reduce((sum, task) => sum + task.cpu, 0),
    memoryMB: group.tasks.reduce((sum, task) => sum + task.memoryMB, 0),
    diskMB: group.diskMB,
  };
  let best: { node: NodeRecord; score: number } | undefined;
  const constraintFiltered: Record<string, number> = {};
  const dimensions: Record<string, number> = {};
  for (const node of candidates) {
    metric.NodesEvaluated++;
    const failed = constraints.find((constraint) => !constraintHolds(constraint, node, hostIP));
    if (failed) {
      metric.NodesFiltered++;
      constraintFiltered[constraintKey(failed)] = (constraintFiltered[constraintKey(failed)] ?? 0) + 1;
      continue;
    }
    const used = usage(node.id);
    const exhausted =
      used.cpu + need.cpu > node.spec.cpu ? 'cpu'
      : used.memoryMB + need.memoryMB > node.spec.memoryMB ? 'memory'
      : used.diskMB + need.diskMB > node.spec.diskMB ? 'disk'
      : reservedCollision(group, used) ?? dynamicPortsExhausted(group, used);
    if (exhausted) {
      metric.NodesExhausted++;
      dimensions[exhausted] = (dimensions[exhausted] ?? 0) + 1;
      continue;
    }
    const score = (used.cpu + need.cpu) / node.spec.cpu + (used.memoryMB + need.memoryMB) / node.spec.memoryMB;
    if (!best || score > best.score) best = { node, score };
  }
  if (Object.keys(constraintFiltered).length > 0) metric.ConstraintFiltered = constraintFiltered;
  if (Object.keys(dimensions).length > 0) metric.DimensionExhausted = dimensions;
  metric.AllocationTime = Number(process.hrtime.bigint() - started);
  return best ? { ok: true, node: best.node, metric } : { ok: false, metric };
}

function reservedCollision(group: GroupSpec, used: NodeUsage): string | undefined {
  const clash = group.ports.find((port) => port.value > 0 && used.ports.has(port.value));
  return clash ? `network: reserved port collision ${clash.label}=${clash.value}` : undefined;
}

/** Bridge mode: the group's dynamic ports must fit in what the node's dynamic range has left (Nomad's NetworkIndex). */
function dynamicPortsExhausted(group: GroupSpec, used: NodeUsage): string | undefined {
  if (group.networkMode === 'host') return undefined;
  const wanted = group.ports.filter((port) => port.value === 0).length;
  if (wanted === 0) return undefined;
  const range = MAX_DYNAMIC_PORT - MIN_DYNAMIC_PORT + 1;
  // Fewer ports held than the range has room for beyond `wanted`: enough are free whichever they are.
  if (range - used.ports.size >= wanted) return undefined;
  let taken = 0;
  for (const port of used.ports) if (port >= MIN_DYNAMIC_PORT && port <= MAX_DYNAMIC_PORT) taken++;
  return range - taken < wanted ? 'network: dynamic port selection failed' : undefined;
}

/**
 * The group's ports on the chosen node. Host mode (the task binds the host port itself): a port free on
 * the host right now, found by binding port 0. Bridge mode: a port of Nomad's dynamic range unused on
 * the node (the double runs no real bridge, so nothing binds it).
 */
export async function assignPorts(group: GroupSpec, used: NodeUsage, hostIP: string): Promise<PortMapping[]> {
  const ports: PortMapping[] = [];
  for (const port of group.ports) {
    let value = port.value;
    if (value === 0) value = group.networkMode === 'host' ? await freeHostPort(hostIP, used.ports) : bridgePort(used.ports);
    used.ports.add(value);
    const to = port.to === -1 ? value : port.to;
    ports.push({ Label: port.label, Value: value, To: to, HostIP: hostIP });
  }
  return ports;
}

async function freeHostPort(hostIP: string, taken: ReadonlySet<number>): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const server = net.createServer();
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, hostIP, () => resolve((server.address() as net.AddressInfo).port));
    });
    await new Promise<void>((resolve) => server.close(() => resolve()));
    if (!taken.has(port)) return port;
  }
  throw new Error(`no free port on ${hostIP} that no allocation holds`);
}

function bridgePort(taken: ReadonlySet<number>): number {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = MIN_DYNAMIC_PORT + Math.floor(Math.random() * (MAX_DYNAMIC_PORT - MIN_DYNAMIC_PORT + 1));
    if (!taken.has(port)) return port;
  }
  // A nearly full range: look at every port rather than give up on a free one.
  for (let port = MIN_DYNAMIC_PORT; port <= MAX_DYNAMIC_PORT; port++) if (!taken.has(port)) return port;
  throw new Error(`no free port in ${MIN_DYNAMIC_PORT}-${MAX_DYNAMIC_PORT}`);
}
