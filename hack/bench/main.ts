import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createLogger } from '../../controller/util/log.js';
import { formatTable, machineInfo, type ScenarioResult } from './report.js';
import type { Scenario } from './scenario.js';
import { scenarios } from './scenarios.js';

const USAGE = `usage: bench [--quick] [--out FILE] [SCENARIO...]
  SCENARIO  one of: ${scenarios.map((s) => s.name).join(', ')} (default: all)
  --quick   a short pass at small sizes (checks the harness; the targets are not judged)
  --out     where the results go (default bench/results.json)`;

interface Arguments {
  readonly quick: boolean;
  readonly out: string;
  readonly selected: readonly Scenario[];
}

function parseArguments(argv: readonly string[]): Arguments {
  let quick = process.env.BENCH_QUICK === '1';
  let out = 'bench/results.json';
  const names: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--quick') quick = true;
    else if (arg === '--out' && argv[i + 1] !== undefined) out = argv[++i]!;
    else if (arg === '--help' || arg === '-h') throw new UsageError('');
    else if (arg.startsWith('-')) throw new UsageError(`unknown option ${arg}`);
    else names.push(arg);
  }
  const selected = names.length === 0 ? scenarios : names.map((name) => {
    const scenario = scenarios.find((s) => s.name === name);
    if (!scenario) throw new UsageError(`unknown scenario "${name}"`);
    return scenario;
  });
  return { quick, out, selected };
}

class UsageError extends Error {}

async function main(): Promise<number> {
  let args: Arguments;
  try {
    args = parseArguments(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`${error.message ? `bench: ${error.message}\n` : ''}${USAGE}\n`);
    return error.message ? 2 : 0;
  }
  const log = createLogger((process.env.MANTICORE_LOG_LEVEL as 'info' | undefined) ?? 'info', 'auto', process.stderr);
  const machine = machineInfo();
  const results: ScenarioResult[] = [];
  for (const scenario of args.selected) {
    const workDir = await fs.mkdtemp(path.join(os.tmpdir(), `manticore-bench-${scenario.name}-`));
    process.stderr.write(`bench: ${scenario.name}${args.quick ? ' (quick)' : ''}…\n`);
    try {
      results.push(await scenario.run({ quick: args.quick, log: log.child({ scenario: scenario.name }), workDir }));
    } catch (error) {
      // The processes' own logs (controller.log, …) say why; they are kept for reading.
      process.stderr.write(`bench: ${scenario.name} failed; its work directory, with each process's log, is kept: ${workDir}\n`);
      throw error;
    }
    await fs.rm(workDir, { recursive: true, force: true });
  }
  await fs.mkdir(path.dirname(path.resolve(args.out)), { recursive: true });
  await fs.writeFile(args.out, `${JSON.stringify({ machine, quick: args.quick, results }, null, 2)}\n`);
  const targets = results.flatMap((r) => r.targets);
  const missed = targets.filter((t) => !t.met);
  process.stdout.write(
    `${formatTable(results)}\n\n${machine.cpus} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, Node ${machine.node}, ${machine.haproxy}\n` +
      `${targets.length - missed.length} of ${targets.length} targets met${args.quick ? ' (quick pass: sizes too small to judge)' : ''}; results in ${args.out}\n`,
  );
  return missed.length > 0 && !args.quick ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`bench: ${(error as Error).stack ?? String(error)}\n`);
    process.exitCode = 1;
  },
);
