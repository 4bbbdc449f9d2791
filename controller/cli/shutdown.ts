import type { Logger } from '../util/log.js';

/**
 * The signals that stop the process: Ctrl-C, a service manager's stop, and the terminal closing (SIGHUP, whose
 * default would end the process at once and leave HAProxy and the sessions' processes running).
 */
const stopSignals: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

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
    for (const name of stopSignals) process.once(name, onSignal);
  });
  const outcome = await Promise.race([stop().then(() => undefined), cut]);
  clearTimeout(timer);
  for (const name of stopSignals) process.off(name, onSignal!);
  if (outcome !== undefined) {
    log.error({ elapsedMs: Date.now() - startedAt }, `shutdown cut short: ${outcome}`);
    return 1;
  }
  log.info({ elapsedMs: Date.now() - startedAt }, 'stopped');
  return 0;
}

/**
 * The child processes a stop cut short must not leave behind: HAProxy and the sessions' tasks each lead a
 * process group of their own (so Ctrl-C in the terminal reaches Manticore alone), and would outlive it
 * holding their ports until the next start.
 */
export class ProcessKiller {
  private readonly kills = new Map<string, () => void>();

  /** `kill` signals what `part` started, at once, and never throws. */
  add(part: string, kill: () => void): void {
    this.kills.set(part, kill);
  }

  killAll(log: Logger): void {
    if (this.kills.size === 0) return;
    log.warn({ parts: [...this.kills.keys()] }, 'killing the processes still running');
    for (const kill of this.kills.values()) kill();
  }
}

/** The first stop signal: `requested` aborts and `received` resolves with it (later ones are stopWithin's). */
export interface StopSignal {
  readonly requested: AbortSignal;
  readonly received: Promise<NodeJS.Signals>;
  /** Stops listening; a signal then has its default effect again. */
  dispose(): void;
}

/** Listens for the signal that stops the process, from before start-up on (see StopSignal). */
export function listenForStop(): StopSignal {
  const requested = new AbortController();
  let dispose!: () => void;
  const received = new Promise<NodeJS.Signals>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      dispose();
      requested.abort();
      resolve(signal);
    };
    dispose = () => {
      for (const name of stopSignals) process.off(name, onSignal);
    };
    for (const name of stopSignals) process.on(name, onSignal);
  });
  return { requested: requested.signal, received, dispose };
}
