import assert from 'node:assert/strict';
import { newSessionId } from '../../controller/controller/claims.js';

describe('session ids', () => {
  it('are 16 lower-case base32 characters, different each time even within one millisecond', () => {
    const now = Date.parse('2026-03-01T12:00:00.000Z');
    const ids = Array.from({ length: 1000 }, () => newSessionId(now));
    for (const id of ids) assert.match(id, /^[a-z2-7]{16}$/);
    assert.equal(new Set(ids).size, ids.length);
  });

  it('sort in the order they were made, within the clock’s period of 2^20 ms', () => {
    const period = 2 ** 20;
    const start = period * Math.floor(Date.now() / period);
    const ids = [0, 1, 31, 32, 33, 1023, 1024, 60_000, period - 1].map((offset) => newSessionId(start + offset));
    assert.deepEqual([...ids].sort(), ids);
  });
});
