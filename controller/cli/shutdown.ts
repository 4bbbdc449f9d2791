import type { Logger } from '../util/log.js';

/**
 * Stops every part (each hands over or finishes its work: the leader releases its lock, streams are closed
 * with a reason, the router withdraws its heartbeat): 0 once done. If that takes longer than the grace
 * period, or a second signal comes, 1 at once, logged, so the process can exit rather than be killed
 * without a word.
 */
export async function stopWithin(stop: () => Promise<void>, graceMs: number, signal: NodeJS.Signals, log: Logger): Promise<number> {
  const startedAt = Date.now();
  log.info({ signal, graceMs }, 'shutting down');
  let timer: NodeJS.Timeout | undefined;
  let onSignal: ((again: NodeJS.Signals) => void) | undefined;
  const cut = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`not stopped within the grace period of ${graceMs} ms`), graceMs);
    onSignal = (again) => resolve(`${again} received while stopping`);
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });
  const outcome = await Promise.race([stop().then(() => undefined), cut]);
  clearTimeout(timer);
  process.off('SIGINT', onSignal!);
  process.off('SIGTERM', onSignal!);
  if (outcome !== undefined) {
    log.error({ elapsedMs: Date.now() - startedAt }, `shutdown cut short: ${outcome}`);
    return 1;
  }
  log.info({ elapsedMs: Date.now() - startedAt }, 'stopped');
  return 0;
}

