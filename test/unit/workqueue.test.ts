import assert from 'node:assert/strict';
import sinon from 'sinon';
import { WorkQueue } from '../../controller/controller/workqueue.js';

describe('WorkQueue', () => {
  let clock: sinon.SinonFakeTimers;
  let queue: WorkQueue<string>;
  beforeEach(() => {
    clock = sinon.useFakeTimers();
    queue = new WorkQueue<string>({ retryBaseMs: 5, retryMaxMs: 1000, ratePerSecond: 10, burst: 100 });
  });
  afterEach(() => {
    queue.shutDown();
    clock.restore();
  });

  it('holds a key once however often it is added', async () => {
    queue.add('a');
    queue.add('b');
    queue.add('a');
    assert.equal(queue.length, 2);
    assert.equal(await queue.get(), 'a');
    assert.equal(await queue.get(), 'b');
  });

  it('never hands a key to two workers; a re-add during processing queues it once more after done()', async () => {
    queue.add('a');
    const key = await queue.get();
    queue.add('a');
    queue.add('a');
    assert.equal(queue.length, 0, 'not queued while in progress');
    queue.done(key!);
    assert.equal(queue.length, 1);
    assert.equal(await queue.get(), 'a');
  });

  it('wakes a waiting worker when a key arrives', async () => {
    const next = queue.get();
    queue.add('x');
    assert.equal(await next, 'x');
  });

  it('backs off per key from the base, doubling to the cap, and forgets on success', async () => {
    for (const expected of [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]) {
      queue.addRateLimited('k');
      await clock.tickAsync(expected - 1);
      assert.equal(queue.length, 0, `not before ${expected} ms`);
      await clock.tickAsync(1);
      assert.equal(queue.length, 1, `available at ${expected} ms`);
      assert.equal(await queue.get(), 'k');
      queue.done('k');
    }
    assert.equal(queue.retries('k'), 10);
    queue.forget('k');
    assert.equal(queue.retries('k'), 0);
    queue.addRateLimited('k');
    await clock.tickAsync(5);
    assert.equal(queue.length, 1, 'back to the base after forget');
  });

  it('limits the overall retry rate with a token bucket', async () => {
    const small = new WorkQueue<string>({ retryBaseMs: 1, retryMaxMs: 1, ratePerSecond: 10, burst: 2 });
    for (const key of ['a', 'b', 'c', 'd']) small.addRateLimited(key);
    await clock.tickAsync(1);
    assert.equal(small.length, 2, 'the burst passes at once');
    await clock.tickAsync(99);
    assert.equal(small.length, 3, 'then one per 100 ms');
    await clock.tickAsync(100);
    assert.equal(small.length, 4);
    small.shutDown();
  });

  it('schedules requeue-after, keeping the earliest schedule for a key', async () => {
    queue.addAfter('t', 1000);
    queue.addAfter('t', 300);
    queue.addAfter('t', 5000);
    await clock.tickAsync(299);
    assert.equal(queue.length, 0);
    await clock.tickAsync(1);
    assert.equal(queue.length, 1);
    await clock.tickAsync(10_000);
    assert.equal(queue.length, 1, 'the later schedules were dropped');
  });

  it('releases waiting workers with undefined on shutdown', async () => {
    const next = queue.get();
    queue.shutDown();
    assert.equal(await next, undefined);
    queue.add('late');
    assert.equal(queue.length, 0);
  });
});
