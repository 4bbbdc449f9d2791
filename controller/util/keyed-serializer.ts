/**
 * Runs operations for the same key one after another (in call order), and operations for different keys
 * concurrently: a job's register and deregister must not interleave, while different jobs proceed.
 */
export class KeyedSerializer {
  private readonly tails = new Map<string, Promise<void>>();

  run<T>(key: string, operation: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const result = previous.then(operation);
    const tail = result.then(() => undefined, () => undefined);
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }

  /** Resolves once every operation started so far has finished (successfully or not). */
  async drain(): Promise<void> {
    await Promise.all([...this.tails.values()]);
  }
}
