import assert from 'node:assert/strict';
import { maxEvents, nextStatus, sameStatus, type StatusInput } from '../../controller/controller/status.js';

const base: StatusInput = {
  phase: 'Starting',
  observedGeneration: 1,
  conditions: [
    { type: 'Admitted', status: 'True', reason: 'Claimed', message: 'ok' },
    { type: 'Ready', status: 'False', reason: 'Starting', message: 'starting' },
  ],
  endpoints: {},
};

describe('status', () => {
  it('is unchanged (and equal) when nothing changed, keeping transition times', () => {
    const first = nextStatus(undefined, base, '2026-01-01T00:00:00.000Z');
    const again = nextStatus(first, base, '2026-01-01T00:05:00.000Z');
    assert.ok(sameStatus(first, again));
  });

  it('stamps a transition time and an event when a condition changes status', () => {
    const first = nextStatus(undefined, base, '2026-01-01T00:00:00.000Z');
    const ready = nextStatus(
      first,
      { ...base, phase: 'Ready', conditions: [base.conditions[0]!, { type: 'Ready', status: 'True', reason: 'Ready', message: 'up' }] },
      '2026-01-01T00:01:00.000Z',
    );
    assert.equal(ready.conditions[0]!.lastTransitionTime, '2026-01-01T00:00:00.000Z');
    assert.equal(ready.conditions[1]!.lastTransitionTime, '2026-01-01T00:01:00.000Z');
    assert.deepEqual(
      ready.events.slice(-2).map((event) => event.reason),
      ['Ready', 'PhaseReady'],
    );
  });

  it('records new conditions only when they start out True', () => {
    const first = nextStatus(undefined, base, '2026-01-01T00:00:00.000Z');
    assert.deepEqual(
      first.events.map((event) => event.reason),
      ['Claimed', 'PhaseStarting'],
    );
  });

  it('keeps a bounded history', () => {
    let status = nextStatus(undefined, base, '2026-01-01T00:00:00.000Z');
    for (let i = 0; i < 50; i++) {
      const phase = i % 2 === 0 ? 'Ready' : 'Starting';
      status = nextStatus(status, { ...base, phase }, new Date(Date.UTC(2026, 0, 1, 1, i)).toISOString());
    }
    assert.equal(status.events.length, maxEvents);
    assert.equal(status.events.at(-1)!.reason, 'PhaseStarting');
  });
});

describe('status messages', () => {
  it('are clipped to what the schema allows', () => {
    const long = 'x'.repeat(5000);
    const status = nextStatus(
      undefined,
      { ...base, conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: long }] },
      '2026-01-01T00:00:00.000Z',
    );
    assert.equal(status.conditions[0]!.message.length, 2048);
    assert.ok(status.events.every((event) => event.message.length <= 2048));
  });
});
