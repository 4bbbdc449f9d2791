import { HaproxyProcessError, type HaproxyProcess } from '../../controller/router/haproxy-process.js';

/**
 * Starts the HAProxy that `create` builds, on ports it picks afresh each attempt: OS-chosen ports are only
 * free when picked, and another process may take one before HAProxy binds it.
 */
export async function startHaproxyOnFreePorts(create: () => Promise<HaproxyProcess>, attempts = 3): Promise<HaproxyProcess> {
  for (let attempt = 1; ; attempt++) {
    const proc = await create();
    try {
      await proc.start();
      return proc;
    } catch (error) {
      if (attempt >= attempts || !(error instanceof HaproxyProcessError) || !/Address already in use/.test(error.output)) throw error;
    }
  }
}
