import assert from 'node:assert/strict';
import { pacingDelayMs } from '../../controller/util/watch-pacing.js';

describe('watch pacing', () => {
  it('asks again at once after a cheap answer, and waits in proportion to a costly one', () => {
    assert.equal(pacingDelayMs(0), 0);
    assert.equal(pacingDelayMs(1), 0, 'a small list is never paced');
    assert.ok(pacingDelayMs(20) > 20, 'a costly answer is followed by a longer pause than it took');
    assert.equal(pacingDelayMs(40), 2 * pacingDelayMs(20));
  });
});
