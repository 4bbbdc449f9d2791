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
 * waitFor's pauses would never end. Real I/O still completes between turns.
 */
export async function turnsUntil(probe: () => boolean): Promise<void> {
  while (!probe()) await new Promise<void>((resolve) => setImmediate(resolve));
}
