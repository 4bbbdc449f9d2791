import assert from 'node:assert/strict';
import { BehaviorSubject } from 'rxjs';
import type { RouteRecord, SessionRecord, SessionStatus } from '../../controller/api/types.js';
import { ControllerMetrics } from '../../controller/controller/controller-metrics.js';
import { Cache, type CachedRecord } from '../../controller/controller/informer.js';
import { Keys } from '../../controller/controller/keys.js';
import { registry } from '../../controller/metrics/metrics.js';

describe('controller metrics', () => {
  let sessions: Cache<CachedRecord<SessionRecord>>;
  let statuses: Cache<CachedRecord<SessionStatus>>;
  let metrics: ControllerMetrics;
  let leading: BehaviorSubject<boolean>;
  let index = 0;

  const record = <T>(id: string, value: T): CachedRecord<T> => ({ id, entry: { key: id, createIndex: 1, modifyIndex: ++index }, value });
  const session = (id: string): CachedRecord<SessionRecord> =>
    record(id, { metadata: { id, owner: `user-${id}`, createdAt: new Date(0).toISOString(), generation: 1 }, spec: { template: 'sdl', parameters: {} } });
  const status = (id: string, phase: SessionStatus['phase']): CachedRecord<SessionStatus> => record(id, { phase, observedGeneration: 1, conditions: [], endpoints: {}, events: [] });
  const byPhase = async (): Promise<Record<string, number>> => {
    const metric = await registry.getSingleMetric('manticore_sessions')!.get();
    return Object.fromEntries(metric.values.map((sample) => [String(sample.labels.phase), sample.value]));
  };

  beforeEach(() => {
    sessions = new Cache();
    statuses = new Cache();
    leading = new BehaviorSubject(true);
    // Known before the metrics start (a controller's caches are synced first).
    sessions.upsert('a', session('a'));
    statuses.upsert('a', status('a', 'Ready'));
    metrics = new ControllerMetrics({
      keys: new Keys('manticore/'),
      sessions,
      statuses,
      routes: new Cache<CachedRecord<RouteRecord>>(),
      leading$: leading,
      leading: () => leading.value,
      waitingIds: () => [],
      queueDepth: () => 0,
      now: () => 0,
    });
    metrics.start();
  });
  afterEach(() => metrics.stop());

  it('counts sessions by phase as their records and statuses change, and only while leading', async () => {
    assert.deepEqual(await byPhase(), { Ready: 1 });
    sessions.upsert('b', session('b'));
    assert.deepEqual(await byPhase(), { Ready: 1, Pending: 1 });
    statuses.upsert('b', status('b', 'Starting'));
    statuses.upsert('b', status('b', 'Ready'));
    assert.deepEqual(await byPhase(), { Ready: 2 });
    // A status without its session (a teardown half done) is not a session.
    statuses.upsert('c', status('c', 'Failed'));
    assert.deepEqual(await byPhase(), { Ready: 2 });
    sessions.remove('a');
    assert.deepEqual(await byPhase(), { Ready: 1 });
    statuses.remove('b');
    assert.deepEqual(await byPhase(), { Pending: 1 });
    leading.next(false);
    assert.deepEqual(await byPhase(), {});
  });
});
