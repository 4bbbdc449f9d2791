import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

// Compiled to dist/test/unit/: the metrics module sits at dist/controller/metrics/.
const metricsModule = path.resolve(__dirname, '../../controller/metrics/metrics.js');

/**
 * Loads the metrics module in a fresh process (this one has loaded it already), with Node's event-loop delay
 * monitor wrapped to note how it was asked to sample, and answers that with the families the registry exports.
 */
async function loadedInFreshProcess(): Promise<{ resolutions: number[]; families: string[] }> {
  const script = `
    const perfHooks = require('node:perf_hooks');
    const resolutions = [];
    const monitor = perfHooks.monitorEventLoopDelay;
    perfHooks.monitorEventLoopDelay = (options) => {
      resolutions.push(options === undefined || options.resolution === undefined ? 10 : options.resolution);
      return monitor(options);
    };
    const { registry } = require(${JSON.stringify(metricsModule)});
    registry.metrics().then((text) => {
      const families = [...text.matchAll(/^# TYPE (\\S+) /gm)].map((match) => match[1]);
      process.stdout.write(JSON.stringify({ resolutions, families }));
      process.exit(0);
    });
  `;
  const { stdout } = await run(process.execPath, ['-e', script]);
  return JSON.parse(stdout) as { resolutions: number[]; families: string[] };
}

describe('process metrics', () => {
  it('sample the event loop at most ten times a second, so that an idle process is not woken a hundred times a second, and still export its delay', async () => {
    const { resolutions, families } = await loadedInFreshProcess();
    assert.equal(resolutions.length, 1, `event-loop delay monitors started: ${resolutions.length}`);
    assert.ok(resolutions[0]! >= 100, `the event loop is sampled every ${resolutions[0]} ms`);
    for (const family of ['manticore_nodejs_eventloop_lag_p99_seconds', 'manticore_nodejs_eventloop_lag_max_seconds']) {
      assert.ok(families.includes(family), `${family} is not exported (${families.filter((name) => name.includes('eventloop')).join(', ')})`);
    }
  });
});
