/**
 * Exponential backoff with jitter: `baseMs` doubling with each failure up to `maxMs`, times a factor drawn
 * in [½, 1], so that clients that failed together (an agent or a front end restarting) come back spread out
 * rather than in the same instant. `failures` counts from 1.
 */
export function jitteredBackoffMs(failures: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const wait = Math.min(maxMs, baseMs * 2 ** Math.max(0, Math.min(failures - 1, 30)));
  return Math.round(wait / 2 + (random() * wait) / 2);
}
