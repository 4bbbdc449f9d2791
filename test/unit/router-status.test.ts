import assert from 'node:assert/strict';
import { registry, type RouterProgress } from '../../controller/metrics/metrics.js';
import { exportRouterReadiness, routerProbes } from '../../controller/router/status-server.js';

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

  it('exports its readiness as manticore_router_ready, read at each scrape', async () => {
    const router = { serving: true, progress };
    const haproxy = { serving: false };
    const unexport = exportRouterReadiness('edge-1', routerProbes(router, haproxy));
    try {
      assert.match(await registry.metrics(), /^manticore_router_ready\{router="edge-1"\} 0$/m, 'HAProxy still starting');
      haproxy.serving = true;
      assert.match(await registry.metrics(), /^manticore_router_ready\{router="edge-1"\} 1$/m);
    } finally {
      unexport();
    }
    assert.doesNotMatch(await registry.metrics(), /^manticore_router_ready\{/m, 'gone with the router');
  });
});
