import assert from 'node:assert/strict';
import { BehaviorSubject } from 'rxjs';
import type { RouteRecord, SessionRecord, SessionStatus } from '../../controller/api/types.js';
import { ControllerMetrics } from '../../controller/controller/controller-metrics.js';
import { Cache, RecordCache, type CachedRecord } from '../../controller/controller/informer.js';
import { Keys } from '../../controller/controller/keys.js';
import { registry } from '../../controller/metrics/metrics.js';

describe('controller metrics', () => {
  let sessions: Cache<CachedRecord<SessionRecord>>;
  let statuses: RecordCache<SessionStatus>;
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
    statuses = new RecordCache();
    leading = new BehaviorSubject(true);
    // Known before the metrics start (a controller's caches are synced first).
    sessions.upsert('a', session('a'));
    statuses.upsert('a', status('a', 'Ready'));
    metrics = new ControllerMetrics({
      keys: new Keys('manticore/'),
      sessions,
      statuses,
      routes: new RecordCache<RouteRecord>(),
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

  it("times the watch lag of the controller's own write when the watch brings it back, not when the cache shows it ahead of the watch", async () => {
    const lagCount = async (): Promise<number> => {
      const metric = await registry.getSingleMetric('manticore_watch_lag_seconds')!.get();
      return metric.values.find((sample) => (sample as { metricName?: string }).metricName === 'manticore_watch_lag_seconds_count' && sample.labels.resource === 'status')?.value ?? 0;
    };
    const before = await lagCount();
    const written = status('a', 'Starting');
    metrics.written(['manticore/status/a'], performance.now());
    statuses.committed('a', written.entry, JSON.stringify(written.value), written.value!);
    assert.equal(statuses.get('a')?.value?.phase, 'Starting');
    assert.equal(await lagCount(), before);
    // As the informer does when the watch reaches the write and brings it back as it was.
    statuses.settledUpTo(written.entry.modifyIndex);
    statuses.announceBroughtBack('a');
    assert.equal(await lagCount(), before + 1);
    // A write the watch brings with no cache ahead of it is timed as it arrives.
    metrics.written(['manticore/status/a'], performance.now());
    statuses.upsert('a', status('a', 'Ready'), true);
    assert.equal(await lagCount(), before + 2);
  });
});
