import assert from 'node:assert/strict';
import type { RouterProgress } from '../../controller/metrics/metrics.js';
import { routerProbes } from '../../controller/router/status-server.js';

describe('router: status probes', () => {
  const progress: RouterProgress = { router: 'edge-1', appliedIndex: 7, lag: 0, routes: 2 };

  it('is ready only while its agent applies routes and its HAProxy runs: the load balancers\' health check asks /readyz', () => {
    const router = { serving: true, progress };
    const haproxy = { serving: true };
    const probes = routerProbes(router, haproxy);
    assert.equal(probes.ready(), true);
    haproxy.serving = false;
    assert.equal(probes.ready(), false, 'HAProxy died and is being restarted: its ports refuse connections');
    haproxy.serving = true;
    router.serving = false;
    assert.equal(probes.ready(), false, 'HAProxy refuses the routes');
    assert.deepEqual(probes.status(), progress);
  });
});
