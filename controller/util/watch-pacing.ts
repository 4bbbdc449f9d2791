/**
 * Paces a watch that re-reads a whole list on every change (a Consul prefix listing: Consul has no change
 * feed). After an answer that carried changes, the next query waits `COST_FACTOR` times what reading that
 * answer cost here (parsing it and telling what changed): a small list is asked for again at once, while
 * 10,000 objects that keep changing are re-read a few times a second rather than back to back. Back to
 * back, the two sides would spend all their time serializing and parsing the same list and starve the
 * writes the changes come from; the server's share of the cost is about ours (it serializes what we parse).
 * What the consumer does with the changes is not counted: that work is in proportion to the changes, not
 * to the list, and pausing for it would only hold the next changes back. The pause is counted from when the
 * answer was taken in, so that work fills it instead of coming before it.
 */
const COST_FACTOR = 8;
/** Pauses shorter than this are not worth a timer: small lists are never paced. */
const MIN_PAUSE_MS = 10;

/** How long to wait before asking again, after an answer with changes that cost `costMs` to take in. */
export function pacingDelayMs(costMs: number): number {
  const pause = costMs * COST_FACTOR;
  return pause >= MIN_PAUSE_MS ? pause : 0;
}
