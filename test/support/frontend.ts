import path from 'node:path';
import { loadTemplates } from '../../controller/api/templates.js';
import { Keys } from '../../controller/controller/keys.js';
import { Frontend, type FrontendOptions } from '../../controller/frontend/server.js';
import type { Store } from '../../controller/store/store.js';
import { silentLogger } from '../../controller/util/log.js';

export const frontendTemplates = loadTemplates(path.resolve(__dirname, '../../../manifests/templates'));
export const frontendKeys = new Keys('manticore/');

/** The embedded default's idle limits: 30 min idle (sessions may ask for less), warned 5 min ahead, no lifetime cap. */
export const testExpiry = { idleTimeoutMs: 1_800_000, idleMaxTimeoutMs: 1_800_000, idleWarningMs: 300_000, maxLifetimeMs: 0 } as const;

/** A front end over `store` with the shipped templates and small limits; tests override what they exercise. */
export function testFrontend(store: Store, overrides: Partial<FrontendOptions> = {}): Frontend {
  return new Frontend({
    store,
    keys: frontendKeys,
    templates: frontendTemplates,
    backend: 'embedded',
    bodyLimitBytes: 4096,
    sessionsPerUser: 5,
    activityWriteIntervalMs: 30_000,
    expiry: testExpiry,
    log: silentLogger(),
    ...overrides,
  });
}

/** Removes a session's record and status at once, as the controller does when it is gone. */
export async function removeSession(store: Store, id: string): Promise<void> {
  await store.transaction([
    { verb: 'delete', key: frontendKeys.status(id) },
    { verb: 'delete', key: frontendKeys.session(id) },
  ]);
}
