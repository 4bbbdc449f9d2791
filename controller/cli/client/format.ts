import type { Session } from '../../api/types.js';
import type { Limits } from '../../frontend/api-v1.js';
import type { ClusterStatus } from '../../frontend/cluster.js';
import { formatSeconds } from '../../controller/lifecycle.js';
import type { TemplateSummary } from './frontend-client.js';

/** How a table fits a width: the columns (by index) that may be cut to fit. */
export interface TableFit {
  readonly width: number;
  readonly shrink: readonly number[];
}

/**
 * Left-aligned columns, two spaces apart, with a header row. With `fit`, lines too long for its width cut
 * the columns it names, the longest first (to a common width, never below the column's title), each cut cell
 * ending with "…"; the others (names, ids) are never cut, so a line may still be longer.
 */
export function table(header: string[], rows: string[][], fit?: TableFit): string {
  const natural = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] ?? '').length)));
  const widths = fit === undefined ? natural : fitted(header, natural, fit);
  return (
    [header, ...rows]
      .map((row) => row.map((cell, column) => (column === row.length - 1 ? ellipsize(cell, widths[column]!) : ellipsize(cell, widths[column]!).padEnd(widths[column]!))).join('  '))
      .join('\n') + '\n'
  );
}

/** The column widths within `fit`: the shrinkable columns capped at the widest common width that fits. */
function fitted(header: string[], natural: number[], fit: TableFit): number[] {
  const capped = (cap: number): number[] => natural.map((width, column) => (fit.shrink.includes(column) ? Math.min(width, Math.max(cap, header[column]!.length)) : width));
  const length = (widths: number[]): number => widths.reduce((sum, width) => sum + width, 0) + 2 * (widths.length - 1);
  let cap = Math.max(...natural);
  while (cap > 0 && length(capped(cap)) > fit.width) cap--;
  return capped(cap);
}

/** `text` cut to `width` characters, its last one "…" when cut. */
function ellipsize(text: string, width: number): string {
  return text.length <= width ? text : `${text.slice(0, Math.max(0, width - 1))}…`;
}

export function sessionTable(sessions: Session[]): string {
  if (sessions.length === 0) return 'no sessions\n';
  return table(
    // The owner too: an operator's list holds everyone's.
    ['ID', 'OWNER', 'TEMPLATE', 'PHASE', 'DETAIL', 'CREATED'],
    sessions.map((session) => [session.metadata.id, session.metadata.owner, session.spec.template, session.status.phase, detail(session), session.metadata.createdAt]),
  );
}

/**
 * The templates, in lines of at most `width` characters (but for long names and values): descriptions, reasons
 * and the list's parameters are cut to fit. One template (`withDetails`) says whether it is available and why
 * not, and its description, whole (wrapped), then lists its parameters, their values whole, and its services
 * in tables of their own.
 */
export function templateTable(templates: TemplateSummary[], withDetails: boolean, width: number): string {
  if (templates.length === 0) return 'no templates\n';
  const available = (template: TemplateSummary): string => (template.available ? 'yes' : `no: ${template.unavailableReason ?? 'unavailable'}`);
  if (!withDetails) {
    const rows = templates.map((template) => [
      template.name,
      available(template),
      template.parameters.map((parameter) => `${parameter.name}=${parameter.enum.join('|')} (default ${parameter.default})`).join('; ') || '-',
      template.description,
    ]);
    return table(['NAME', 'AVAILABLE', 'PARAMETERS', 'DESCRIPTION'], rows, { width, shrink: [1, 2, 3] });
  }
  return templates
    .flatMap((template) => [
      [
        ['template', template.name],
        ['available', available(template)],
        ['description', template.description],
      ]
        .map(([name, value]) => `${name!.padEnd(DETAIL_LABEL_WIDTH)}${wrap(value!, width - DETAIL_LABEL_WIDTH).join(`\n${' '.repeat(DETAIL_LABEL_WIDTH)}`)}`)
        .join('\n') + '\n',
      template.parameters.length === 0
        ? 'no parameters\n'
        : table(
            ['PARAMETER', 'VALUES', 'DEFAULT', 'DESCRIPTION'],
            template.parameters.map((parameter) => [parameter.name, parameter.enum.join('|'), parameter.default, parameter.description]),
            // The values are what a --param may say: never cut.
            { width, shrink: [3] },
          ),
      template.services.length === 0
        ? 'no services\n'
        : table(['SERVICE', 'PROTOCOL', 'DESCRIPTION'], template.services.map((service) => [service.name, service.protocol, service.description]), { width, shrink: [2] }),
    ])
    .join('\n');
}

/** The width of the labels of one template's details (the longest, and two spaces), laid out as `sessions get`'s. */
const DETAIL_LABEL_WIDTH = 13;

/** `text` in lines of at most `width` characters, broken between words (a longer word stands alone). */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line !== '' && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line === '' ? word : `${line} ${word}`;
  }
  return [...lines, line];
}

/** What a session is waiting for or doing, in a few words. */
export function detail(session: Session): string {
  const { status } = session;
  if (session.metadata.deletionRequestedAt !== undefined && status.phase !== 'Terminating') return 'deletion requested';
  if (status.phase === 'Ready') return status.expiresAt ? `expires ${status.expiresAt}` : 'serving';
  // A record the controller could not read has no Ready condition, only Valid=False (InvalidRecord).
  const ready = status.conditions.find((condition) => condition.type === 'Ready') ?? status.conditions.find((condition) => condition.status === 'False');
  const reason = ready ? `${ready.reason}: ${ready.message}` : '';
  if (status.phase === 'Waiting' && status.queuePosition !== undefined) {
    // The reason first: ClusterFull, StartLimit, NoFreePort… tell an operator what to change, the place only when.
    const place = `queue position ${status.queuePosition}${status.estimatedStartAt ? `, estimated start ${status.estimatedStartAt}` : ''}`;
    return reason ? `${reason}; ${place}` : place;
  }
  return reason;
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
  // A front end of the release before sends none.
  const unreadable = (cluster.unreadable ?? []).map((record) => `unreadable ${record.key}: ${record.problem}\n`);
  if (unreadable.length > 0) sections.push(unreadable.join(''));
  return sections.join('\n');
}

/** The `limits` view: what the user's creates are held to, in the seconds `--idle-timeout` takes. */
export function limitsView(limits: Limits): string {
  const { idle } = limits;
  const mayAsk = idle.maxTimeoutSeconds === 0 ? `more than ${idle.warningSeconds} s, or 0 for never` : `more than ${idle.warningSeconds} s and at most ${idle.maxTimeoutSeconds} s`;
  const rows = [
    ['sessions per user', String(limits.sessionsPerUser)],
    ['idle timeout', idle.defaultTimeoutSeconds === 0 ? 'never, for a session that asks for none' : `${seconds(idle.defaultTimeoutSeconds)} for a session that asks for none`],
    ['may ask for', `${mayAsk} (sessions create --idle-timeout SECONDS)`],
    ['idle warning', `${seconds(idle.warningSeconds)} before the idle end`],
    ['maximum lifetime', limits.maxLifetimeSeconds === 0 ? 'none' : `${seconds(limits.maxLifetimeSeconds)} from first Ready, whatever the activity`],
  ];
  return rows.map(([name, value]) => `${name!.padEnd(20)}${value}`).join('\n') + '\n';
}

/** Seconds as `--idle-timeout` takes them, with the duration in words when that reads more easily. */
function seconds(value: number): string {
  return value < 120 ? `${value} s` : `${value} s (${formatSeconds(value * 1000)})`;
}
