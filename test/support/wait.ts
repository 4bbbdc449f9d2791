/**
 * Waits until `probe` returns a value other than undefined/false, checking again after each short pause.
 * Used for real processes (HAProxy, children) whose progress no fake clock controls; the deadline only
 * bounds a failure, it never decides success.
 */
export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 10_000,
  intervalMs = 20,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`, { cause: lastError });
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/**
 * Waits, one turn of the event loop at a time, until `probe` holds: for tests whose setTimeout is fake, where
 * waitFor's pauses would never end. Real I/O still completes between turns. The deadline is kept on the
 * process's monotonic clock, which the fake timers leave alone, because mocha's own timeout cannot fire
 * while setTimeout is fake: it only bounds a failure, which would otherwise hang the run.
 */
export async function turnsUntil(probe: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = process.hrtime.bigint() + BigInt(timeoutMs) * 1_000_000n;
  while (!probe()) {
    if (process.hrtime.bigint() > deadline) throw new Error(`the condition did not hold within ${timeoutMs} ms: ${probe.toString()}`);
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}
