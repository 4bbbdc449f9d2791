import assert from 'node:assert/strict';
import { listenForStop, stopWithin } from '../../controller/cli/shutdown.js';
import { capturingLogger } from '../support/controller-harness.js';

describe('stopping a process', () => {
  it('answers 0 once every part has stopped', async () => {
    const { log, lines } = capturingLogger();
    let stopped = false;
    const stop = async (): Promise<void> => {
      await new Promise((resolve) => setImmediate(resolve));
      stopped = true;
    };
    assert.equal(await stopWithin(stop, 60_000, 'SIGTERM', log), 0);
    assert.equal(stopped, true);
    assert.deepEqual(lines.map((line) => line.msg), ['shutting down', 'stopped']);
  });

  it('answers 1 with an error when the parts do not stop within the grace period', async () => {
    const { log, lines } = capturingLogger();
    assert.equal(await stopWithin(() => new Promise<void>(() => undefined), 20, 'SIGTERM', log), 1);
    assert.match(lines.at(-1)!.msg, /shutdown cut short: not stopped within the grace period of 20 ms/);
    assert.equal(lines.at(-1)!.level, 50);
  });

  it('answers 1 at once on a second signal', async () => {
    const { log, lines } = capturingLogger();
    const handlersBefore = process.listenerCount('SIGINT');
    const outcome = stopWithin(() => new Promise<void>(() => undefined), 60_000, 'SIGTERM', log);
    process.emit('SIGINT', 'SIGINT');
    assert.equal(await outcome, 1);
    assert.match(lines.at(-1)!.msg, /SIGINT received while stopping/);
    assert.equal(process.listenerCount('SIGINT'), handlersBefore, 'its signal handlers are gone again');
  });

  it('takes the first SIGTERM or SIGINT as the request to stop, from before start-up on', async () => {
    const handlers = (): Record<string, number> => ({ SIGINT: process.listenerCount('SIGINT'), SIGTERM: process.listenerCount('SIGTERM') });
    const handlersBefore = handlers();
    const stop = listenForStop();
    assert.equal(stop.requested.aborted, false);
    process.emit('SIGTERM', 'SIGTERM');
    assert.equal(stop.requested.aborted, true, 'start-up is told at once');
    assert.equal(await stop.received, 'SIGTERM');
    assert.deepEqual(handlers(), handlersBefore, 'a second signal is for stopWithin');
    // A start-up that failed stops listening: a signal then has its default effect.
    listenForStop().dispose();
    assert.deepEqual(handlers(), handlersBefore);
  });
});
