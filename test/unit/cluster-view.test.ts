import assert from 'node:assert/strict';
import { clusterView } from '../../controller/cli/client/format.js';
import type { ClusterStatus } from '../../controller/frontend/cluster.js';

describe('manticore status: the cluster view', () => {
  it('names as leader only the replica that holds the leader key, not a killed one whose last heartbeat still says so; without a key, the one that says so', () => {
    const now = Date.parse('2026-01-01T00:00:30Z');
    const at = (agoMs: number): string => new Date(now - agoMs).toISOString();
    const cluster: ClusterStatus = {
      leader: { host: 'ctl-b', pid: 2, since: at(1_000) },
      replicas: [
        // Killed 12 s ago while leading: its heartbeat counts as live for three intervals (30 s).
        { host: 'ctl-a', pid: 1, startedAt: at(600_000), heartbeatAt: at(12_000), leading: true, live: true },
        { host: 'ctl-b', pid: 2, startedAt: at(600_000), heartbeatAt: at(1_000), leading: true, live: true },
        { host: 'ctl-c', pid: 3, startedAt: at(600_000), heartbeatAt: at(40_000), leading: false, live: false },
      ],
      routers: [],
      routes: 0,
      sessions: { total: 0, byPhase: { Pending: 0, Waiting: 0, Starting: 0, Ready: 0, Terminating: 0, Failed: 0 }, oldestWaitingSince: null },
      unreadable: [],
    };
    const roles = (view: ClusterStatus): string[] =>
      clusterView(view)
        .split('\n')
        .filter((line) => line.startsWith('ctl-'))
        .map((line) => line.split(/\s+/).slice(0, 3).join(' '));
    assert.deepEqual(roles(cluster), ['ctl-a 1 standby', 'ctl-b 2 leader', 'ctl-c 3 stale']);
    // No leader key (the embedded store, one process): the replica's own word.
    assert.deepEqual(roles({ ...cluster, leader: null, replicas: cluster.replicas.slice(1) }), ['ctl-b 2 leader', 'ctl-c 3 stale']);
  });

  it('names the heartbeats it could not read, with the problem', () => {
    const cluster: ClusterStatus = {
      leader: null,
      replicas: [],
      routers: [],
      routes: 0,
      sessions: { total: 0, byPhase: { Pending: 0, Waiting: 0, Starting: 0, Ready: 0, Terminating: 0, Failed: 0 }, oldestWaitingSince: null },
      unreadable: [{ key: 'manticore/routers/edge-2', problem: 'invalid router-heartbeat: not valid JSON: Unexpected token' }],
    };
    assert.match(clusterView(cluster), /\nunreadable manticore\/routers\/edge-2: invalid router-heartbeat: not valid JSON: Unexpected token\n/);
  });
});
