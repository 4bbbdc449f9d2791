/**
 * Time as the controller sees it: the lifecycle deadlines (idle expiry, start timeout, retention) are
 * computed from `now()` and woken by `setTimeout`, so tests can drive them with a fake clock while the
 * backends' own I/O runs on real time.
 */
export interface Clock {
  now(): number;
  setTimeout(callback: () => void, delayMs: number): unknown;
  clearTimeout(timer: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, delayMs) => {
    const timer = setTimeout(callback, delayMs);
    // A pending deadline never keeps the process alive on its own.
    timer.unref();
    return timer;
  },
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout),
};
