import assert from 'node:assert/strict';
import { limitsView, table } from '../../controller/cli/client/format.js';

describe('manticore client tables', () => {
  const header = ['NAME', 'NOTE', 'DESCRIPTION'];
  const rows = [
    ['a-long-name', 'short', 'x'.repeat(60)],
    ['b', 'a note of some length', 'short one'],
  ];
  const line = (...cells: Array<[string, number]>): string => cells.map(([cell, width], at) => (at === cells.length - 1 ? cell : cell.padEnd(width))).join('  ');

  it('cuts the columns it may shrink, the longest first, to fit the width, and ends each cut cell with "…"', () => {
    const lines = table(header, rows, { width: 60, shrink: [1, 2] }).split('\n');
    assert.equal(lines[1], line(['a-long-name', 11], ['short', 21], [`${'x'.repeat(23)}…`, 24]));
    assert.equal(lines[2], line(['b', 11], ['a note of some length', 21], ['short one', 24]), 'a cell that fits is whole');
    const narrower = table(header, rows, { width: 40, shrink: [1, 2] }).split('\n');
    assert.equal(narrower[2], line(['b', 11], ['a note of s…', 12], ['short one', 12]), 'then the next longest too');
    for (const fitted of [lines, narrower]) assert.ok(fitted.every((text) => text.length <= (fitted === lines ? 60 : 40)), fitted.join('\n'));
  });

  it('leaves a table that fits as it is, and never cuts a column below its title or one it may not shrink', () => {
    assert.equal(table(header, rows, { width: 200, shrink: [1, 2] }), table(header, rows));
    const lines = table(header, rows, { width: 10, shrink: [2] }).split('\n');
    assert.equal(lines[1], line(['a-long-name', 11], ['short', 21], [`${'x'.repeat(10)}…`, 11]));
  });

  it('says what an operator who sets no limits allows: any idle timeout above the warning, never included; no idle end by default; a lifetime cap', () => {
    const view = limitsView({ sessionsPerUser: 3, idle: { defaultTimeoutSeconds: 0, maxTimeoutSeconds: 0, warningSeconds: 60 }, maxLifetimeSeconds: 7200 });
    assert.equal(
      view,
      [
        'sessions per user   3',
        'idle timeout        never, for a session that asks for none',
        'may ask for         more than 60 s, or 0 for never (sessions create --idle-timeout SECONDS)',
        'idle warning        60 s before the idle end',
        'maximum lifetime    7200 s (2 h) from first Ready, whatever the activity',
        '',
      ].join('\n'),
    );
  });

  it('gives a duration that is not whole minutes or hours exactly, and a whole one in its unit', () => {
    const view = limitsView({ sessionsPerUser: 1, idle: { defaultTimeoutSeconds: 150, maxTimeoutSeconds: 0, warningSeconds: 3600 }, maxLifetimeSeconds: 9030 });
    assert.match(view, /^idle timeout {8}150 s \(2 min 30 s\) for a session/m);
    assert.match(view, /^idle warning {8}3600 s \(60 min\) before/m);
    assert.match(view, /^maximum lifetime {4}9030 s \(2 h 30 min 30 s\) from first Ready/m);
  });
});
