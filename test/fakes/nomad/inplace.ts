import { canonicalJson } from './validate.js';
import type { Json, JsonObject } from './types.js';

/**
 * Nomad's scheduler (scheduler/util.go `tasksUpdated`) decides per task group whether a new version of a job
 * can update an allocation in place or must replace it. This is its list, on the submitted jobs (Nomad's
 * defaults filled in): the first difference that forces a replacement, or undefined when the group can be
 * updated in place (update, migrate, reschedule and restart strategies, priority, services without Connect,
 * log sizes, count: all reach the allocation without restarting its tasks).
 */
export function destructiveChange(before: JsonObject, after: JsonObject, groupName: string): string | undefined {
  const a = groupOf(before, groupName);
  const b = groupOf(after, groupName);
  if (!a || !b) return 'task group';
  const tasksA = objects(a.Tasks);
  const tasksB = objects(b.Tasks);
  if (tasksA.length !== tasksB.length) return 'number of tasks';
  if (!same(a.EphemeralDisk, b.EphemeralDisk)) return 'ephemeral disk';
  const networks = networkChange(a.Networks, b.Networks);
  if (networks) return networks;
  if (!same(affinities(before, a, tasksA), affinities(after, b, tasksB))) return 'affinities';
  if (!same([...objects(before.Spreads), ...objects(a.Spreads)], [...objects(after.Spreads), ...objects(b.Spreads)])) return 'spreads';
  if (consulChange(a.Consul, b.Consul)) return 'consul';
  if (connectChange(objects(a.Services), objects(b.Services))) return 'connect service';
  if (!same(a.Volumes, b.Volumes)) return 'volume request';
  if (renderTemplates(a.RestartPolicy) !== renderTemplates(b.RestartPolicy)) return 'group restart render_templates';
  for (const at of tasksA) {
    const bt = tasksB.find((task) => task.Name === at.Name);
    if (!bt) return 'task deleted';
    for (const field of ['Driver', 'User', 'Config', 'Env', 'Artifacts', 'Vault', 'Templates', 'CSIPluginConfig', 'VolumeMounts', 'Identity', 'Identities']) {
      if (!same(at[field], bt[field])) return `task ${field}`;
    }
    if (consulChange(at.Consul, bt.Consul)) return 'task consul';
    // Job and group meta reach every task (Job.CombinedTaskMeta), the deepest scope winning.
    if (!same(combinedMeta(before, a, at), combinedMeta(after, b, bt))) return 'task meta';
    const ra = isObj(at.Resources) ? at.Resources : {};
    const rb = isObj(bt.Resources) ? bt.Resources : {};
    const taskNetworks = networkChange(ra.Networks, rb.Networks);
    if (taskNetworks) return taskNetworks;
    for (const field of ['CPU', 'Cores', 'MemoryMB', 'MemoryMaxMB', 'Devices', 'NUMA', 'SecretsMB']) {
      if (!same(ra[field], rb[field])) return `task resources ${field}`;
    }
    // Only turning log collection on or off recreates the task; sizes change in place.
    const logsA = isObj(at.LogConfig) && at.LogConfig.Disabled === true;
    const logsB = isObj(bt.LogConfig) && bt.LogConfig.Disabled === true;
    if (logsA !== logsB) return 'task log disabled';
    if (renderTemplates(at.RestartPolicy) !== renderTemplates(bt.RestartPolicy)) return 'task restart render_templates';
  }
  return undefined;
}

type Obj = Record<string, Json>;

function isObj(value: Json | undefined): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function objects(value: Json | undefined): Obj[] {
  return Array.isArray(value) ? value.filter((item): item is Obj => isObj(item)) : [];
}

function groupOf(job: JsonObject, name: string): Obj | undefined {
  return objects(job.TaskGroups).find((group) => group.Name === name);
}

/** Go's comparisons treat a nil and an empty map or list alike. */
function same(a: Json | undefined, b: Json | undefined): boolean {
  return canonicalJson(emptyToNull(a)) === canonicalJson(emptyToNull(b));
}

function emptyToNull(value: Json | undefined): Json {
  if (value === undefined || value === null) return null;
  if (Array.isArray(value)) return value.length === 0 ? null : value.map(emptyToNull);
  if (typeof value === 'object') {
    const entries = Object.entries(value).map(([key, item]) => [key, emptyToNull(item)] as const);
    return entries.length === 0 ? null : Object.fromEntries(entries);
  }
  return value;
}

function affinities(job: JsonObject, group: Obj, tasks: readonly Obj[]): Obj[] {
  return [...objects(job.Affinities), ...objects(group.Affinities), ...tasks.flatMap((task) => objects(task.Affinities))];
}

function combinedMeta(job: JsonObject, group: Obj, task: Obj): Record<string, Json> {
  const meta = (value: Json | undefined): Obj => (isObj(value) ? value : {});
  return { ...meta(job.Meta), ...meta(group.Meta), ...meta(task.Meta) };
}

/** networkUpdated: mode, bandwidth, hostname, DNS, CNI and the ports (a dynamic port's value never counts). */
function networkChange(a: Json | undefined, b: Json | undefined): string | undefined {
  const na = objects(a);
  const nb = objects(b);
  if (na.length !== nb.length) return 'network lengths';
  for (let index = 0; index < na.length; index++) {
    const x = na[index] ?? {};
    const y = nb[index] ?? {};
    for (const field of ['Mode', 'MBits', 'Hostname', 'DNS', 'CNI']) if (!same(x[field], y[field])) return `network ${field}`;
    if (!same(portMap(x), portMap(y))) return 'network port map';
  }
  return undefined;
}

function portMap(network: Obj): Json[] {
  const port = (item: Obj, value: Json): Json => ({ Label: item.Label ?? '', Value: value, To: item.To ?? 0, HostIP: item.HostNetwork ?? '' });
  return [...objects(network.ReservedPorts).map((item) => port(item, item.Value ?? 0)), ...objects(network.DynamicPorts).map((item) => port(item, -1))];
}

/** consulUpdated: only the namespace, cluster and partition force a replacement. */
function consulChange(a: Json | undefined, b: Json | undefined): boolean {
  const ca = isObj(a) ? a : undefined;
  const cb = isObj(b) ? b : undefined;
  if ((ca?.Namespace ?? '') !== (cb?.Namespace ?? '')) return true;
  return ca !== undefined && cb !== undefined && (ca.Cluster !== cb.Cluster || ca.Partition !== cb.Partition);
}

/** connectServiceUpdated, coarser: any change to a Connect service's block, port label or cluster. */
function connectChange(a: readonly Obj[], b: readonly Obj[]): boolean {
  for (const service of a) {
    if (service.Connect === undefined || service.Connect === null) continue;
    const other = b.find((candidate) => candidate.Name === service.Name);
    if (other && (!same(service.Connect, other.Connect) || service.PortLabel !== other.PortLabel || service.Cluster !== other.Cluster)) return true;
  }
  return false;
}

function renderTemplates(policy: Json | undefined): boolean {
  return isObj(policy) && policy.RenderTemplates === true;
}
