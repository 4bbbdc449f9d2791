import assert from 'node:assert/strict';
import { formatTable, ResultBuilder } from '../../hack/bench/report.js';
import { sizesFor } from '../../hack/bench/routing.js';
import { percentile } from '../../hack/bench/stats.js';
import { combineRounds, type WrkResult } from '../../hack/bench/wrk.js';

describe('benchmark results', () => {
  it('judges targets both ways and keeps figures to three significant digits', () => {
    const result = new ResultBuilder('demo', 'Demo', { sessions: 10 })
      .figure('rate', 'requests per second', 12_345.678, '/s')
      .ratio('share', 'proxy / direct', 0.123456)
      .target('p99', 'p99 latency', 1_200, 'max', 1_000, 'ms')
      .target('ratio', 'proxy / CHP', 4.5, 'min', 4, '×')
      .target('nan', 'a figure that was never measured', Number.NaN, 'max', 1, 's')
      .build();
    assert.equal(result.figures[0]!.value, 12_346);
    assert.equal(result.ratios[0]!.value, 0.123);
    assert.deepEqual(result.targets.map((target) => [target.key, target.met]), [['p99', false], ['ratio', true], ['nan', false]]);
    assert.deepEqual(result.parameters, { sessions: 10 });
  });

  it('prints every figure, ratio and target with its verdict', () => {
    const table = formatTable([new ResultBuilder('demo', 'Demo', {}).figure('a', 'alpha', 1.5, 's').ratio('b', 'beta', 2).target('c', 'gamma', 3, 'max', 2, 'ms').build()]);
    const lines = table.split('\n');
    assert.equal(lines[0], 'demo: Demo');
    assert.match(lines[1]!, /^ {2}alpha\s+1\.5 s$/);
    assert.match(lines[2]!, /^ {2}beta\s+2×$/);
    assert.match(lines[3]!, /^ {2}target: gamma\s+3 ms\s+≤ 2 ms\s+MISSED$/);
  });

  it('takes nearest-rank percentiles', () => {
    const values = Array.from({ length: 100 }, (_, n) => 100 - n);
    assert.equal(percentile(values, 50), 50);
    assert.equal(percentile(values, 99), 99);
    assert.equal(percentile(values, 100), 100);
    assert.equal(percentile([7], 99), 7);
    assert.ok(Number.isNaN(percentile([], 50)));
  });

  it('takes rounds of a load as one run: requests, time and errors added up, latencies the median round', () => {
    const round = (requests: number, seconds: number, p99: number, status: number): WrkResult => ({
      requests,
      durationSeconds: seconds,
      requestsPerSecond: requests / seconds,
      latencyP50Ms: p99 / 10,
      latencyP99Ms: p99,
      errors: { connect: 0, read: 1, write: 0, timeout: 0, status },
    });
    const combined = combineRounds([round(2_000, 2, 30, 0), round(500, 2, 90, 5), round(2_500, 1, 10, 1)]);
    assert.equal(combined.requests, 5_000);
    assert.equal(combined.durationSeconds, 5);
    // A slow round weighs by its time, not as one of three rates (1,000, 250 and 2,500 average to 1,250).
    assert.equal(combined.requestsPerSecond, 1_000);
    assert.equal(combined.latencyP99Ms, 30);
    assert.equal(combined.latencyP50Ms, 3);
    assert.deepEqual(combined.errors, { connect: 0, read: 3, write: 0, timeout: 0, status: 6 });
    assert.throws(() => combineRounds([]), /no rounds/);
  });

  it('sizes the routing scenario from BENCH_ROUTING_ROUTES, half of them loaded during churn, and refuses a bad size', () => {
    assert.deepEqual([sizesFor(false, {}).routes, sizesFor(false, {}).stableRoutes], [1000, 500]);
    const large = sizesFor(false, { BENCH_ROUTING_ROUTES: '10000' });
    assert.deepEqual([large.routes, large.stableRoutes, large.churnRoutes], [10_000, 5_000, 1_000]);
    for (const bad of ['abc', '1', '2.5', '']) {
      assert.throws(() => sizesFor(false, { BENCH_ROUTING_ROUTES: bad }), /BENCH_ROUTING_ROUTES must be a whole number of routes, at least 2/);
    }
  });
});
