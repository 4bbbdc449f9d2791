import type { Session } from '../../api/types.js';
import type { ClusterStatus } from '../../frontend/cluster.js';
import type { TemplateSummary } from './frontend-client.js';

/** Left-aligned columns, two spaces apart, with a header row. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] ?? '').length)));
  return [header, ...rows].map((row) => row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!))).join('  ')).join('\n') + '\n';
}

export function sessionTable(sessions: Session[]): string {
  if (sessions.length === 0) return 'no sessions\n';
  return table(
    // The owner too: an operator's list holds everyone's.
    ['ID', 'OWNER', 'TEMPLATE', 'PHASE', 'DETAIL', 'CREATED'],
    sessions.map((session) => [session.metadata.id, session.metadata.owner, session.spec.template, session.status.phase, detail(session), session.metadata.createdAt]),
  );
}

export function templateTable(templates: TemplateSummary[], withServices: boolean): string {
  if (templates.length === 0) return 'no templates\n';
  const rows = templates.map((template) => [
    template.name,
    template.available ? 'yes' : `no: ${template.unavailableReason ?? 'unavailable'}`,
    template.parameters.map((parameter) => `${parameter.name}=${parameter.enum.join('|')} (default ${parameter.default})`).join('; ') || '-',
    template.description,
  ]);
  const services = withServices
    ? templates.flatMap((template) => template.services.map((service) => `  service ${service.name} (${service.protocol})${service.description ? `: ${service.description}` : ''}\n`)).join('')
    : '';
  return table(['NAME', 'AVAILABLE', 'PARAMETERS', 'DESCRIPTION'], rows) + services;
}

/** What a session is waiting for or doing, in a few words. */
function detail(session: Session): string {
  const { status } = session;
  if (session.metadata.deletionRequestedAt !== undefined && status.phase !== 'Terminating') return 'deletion requested';
  if (status.phase === 'Waiting' && status.queuePosition !== undefined) {
    return `queue position ${status.queuePosition}${status.estimatedStartAt ? `, estimated start ${status.estimatedStartAt}` : ''}`;
  }
  if (status.phase === 'Ready') return status.expiresAt ? `expires ${status.expiresAt}` : 'serving';
  const ready = status.conditions.find((condition) => condition.type === 'Ready');
  return ready ? `${ready.reason}: ${ready.message}` : '';
}

/** One line of `watch` output; printed again only when it changes. */
export function progressLine(session: Session): string {
  const text = detail(session);
  return `${session.status.phase.padEnd(11)}${text}`;
}

/** The `get` view: identity, state, addresses and the latest events. */
export function describeSession(session: Session): string {
  const { metadata, spec, status } = session;
  const lines = [
    `session     ${metadata.id}`,
    `owner       ${metadata.owner}`,
    `template    ${spec.template}${Object.keys(spec.parameters).length > 0 ? ` (${Object.entries(spec.parameters).map(([name, value]) => `${name}=${value}`).join(', ')})` : ''}`,
    `created     ${metadata.createdAt}`,
    `phase       ${status.phase}${detail(session) ? ` (${detail(session)})` : ''}`,
  ];
  const endpoints = Object.entries(status.endpoints);
  if (endpoints.length > 0) {
    lines.push('addresses');
    for (const [name, endpoint] of endpoints) lines.push(`  ${name.padEnd(10)}${endpoint.url}`);
  }
  const recent = status.events.slice(-5);
  if (recent.length > 0) {
    lines.push('events');
    for (const event of recent) lines.push(`  ${event.time}  ${event.reason}: ${event.message}`);
  }
  return lines.join('\n') + '\n';
}

/** The `status` view: the leader, every replica and router, and the sessions by phase. */
export function clusterView(cluster: ClusterStatus): string {
  const { leader, sessions } = cluster;
  // Without a leader key (the embedded store's one process always leads) the heartbeat says who leads, as in the table below.
  const byHeartbeat = cluster.replicas.find((replica) => replica.live && replica.leading);
  const leading = leader ?? (byHeartbeat && { host: byHeartbeat.host, pid: byHeartbeat.pid, since: byHeartbeat.startedAt });
  const phases = Object.entries(sessions.byPhase)
    .filter(([, count]) => count > 0)
    .map(([phase, count]) => `${phase} ${count}`)
    .join(', ');
  const sections = [
    `leader     ${leading ? `${leading.host} (pid ${leading.pid}) since ${leading.since}` : 'none: no controller leads right now'}`,
    `routes     ${cluster.routes} session(s) routed`,
    `sessions   ${sessions.total}${phases ? ` (${phases})` : ''}${sessions.oldestWaitingSince ? `; oldest waiting since ${sessions.oldestWaitingSince}` : ''}`,
    '',
    cluster.replicas.length === 0
      ? 'no controller replicas\n'
      : table(
          ['REPLICA', 'PID', 'ROLE', 'HEARTBEAT', 'STARTED'],
          // The leader is who holds the key, when there is one (a killed leader's last heartbeat still says `leading`
          // until it goes stale); without a key (the embedded store's one process) it is what the heartbeat says.
          cluster.replicas.map((replica) => {
            const leads = leader ? replica.host === leader.host && replica.pid === leader.pid : replica.leading;
            return [replica.host, String(replica.pid), replica.live ? (leads ? 'leader' : 'standby') : 'stale', replica.heartbeatAt, replica.startedAt];
          }),
        ),
    cluster.routers.length === 0
      ? 'no routers\n'
      : table(
          ['ROUTER', 'STATE', 'APPLIED', 'BEHIND', 'HEARTBEAT'],
          cluster.routers.map((router) => [router.name, router.live ? 'live' : 'stale', String(router.appliedIndex), router.unappliedRoutes === 0 ? 'up to date' : `${router.unappliedRoutes} route(s)`, router.heartbeatAt]),
        ),
  ];
  return sections.join('\n');
}
