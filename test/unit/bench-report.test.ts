import assert from 'node:assert/strict';
import { formatTable, ResultBuilder } from '../../hack/bench/report.js';
import { percentile } from '../../hack/bench/stats.js';

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
});
