import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ScenarioResult } from '../../hack/bench/report.js';
import { scenarios } from '../../hack/bench/scenarios.js';

const repoRoot = path.resolve(__dirname, '../../..');

/**
 * `make bench` at small sizes: every scenario runs its whole course (the real processes, HAProxy, wrk)
 * and reports every figure it names. The sizes are too small for the targets to mean anything, so only
 * the shape of the results is checked here; the figures themselves come from a full run.
 */
describe('benchmarks (quick pass)', function () {
  this.timeout(300_000);
  let dir: string;

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-bench-test-'));
  });

  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('runs every scenario and writes its figures, ratios and targets', async () => {
    const out = path.join(dir, 'results.json');
    const stdout = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['dist/hack/bench/main.js', '--quick', '--out', out], { cwd: repoRoot, env: { ...process.env, MANTICORE_LOG_LEVEL: 'warn' }, maxBuffer: 16 * 1024 * 1024 }, (error, text, errors) => {
        if (error) reject(new Error(`bench failed: ${error.message}\n${errors}`));
        else resolve(text);
      });
    });
    const written = JSON.parse(fs.readFileSync(out, 'utf8')) as { quick: boolean; machine: { cpus: number }; results: ScenarioResult[] };
    assert.equal(written.quick, true);
    assert.ok(written.machine.cpus >= 1);
    assert.deepEqual(written.results.map((result) => result.scenario), scenarios.map((scenario) => scenario.name));
    for (const result of written.results) {
      assert.ok(result.figures.length > 0 && result.targets.length > 0, `${result.scenario}: figures and targets`);
      for (const figure of [...result.figures, ...result.ratios, ...result.targets]) {
        assert.ok(Number.isFinite(figure.value), `${result.scenario}: ${figure.label} is a number (${figure.value})`);
      }
      assert.match(stdout, new RegExp(`^${result.scenario}: `, 'm'), 'the table names each scenario');
    }
  });
});
