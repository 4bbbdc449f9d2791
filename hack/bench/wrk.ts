import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { percentile } from './stats.js';

/**
 * Load from wrk (Debian's package), a separate C process: on a two-core machine a load generator in the
 * measured process, or a hungry one beside it, would distort every ratio.
 */
export interface WrkOptions {
  readonly url: string;
  readonly connections: number;
  readonly durationSeconds: number;
  /** wrk threads (default 1: the server under test gets the other core). */
  readonly threads?: number;
  /**
   * Lua for wrk's `init`/`request`/`response` hooks (wrk's scripting API). It must not define `done`:
   * the summary is printed by the one appended here.
   */
  readonly script?: string;
  /** Arguments handed to the script's `init(args)`. */
  readonly scriptArgs?: readonly string[];
  readonly timeoutSeconds?: number;
  /**
   * Runs wrk at this lower CPU priority (a `nice` increment, default 0): when a latency of the system under
   * test is measured, the load generator, which stands for clients on other machines, then takes only the
   * CPU that system leaves idle.
   */
  readonly niceness?: number;
}

export interface WrkResult {
  readonly requests: number;
  readonly durationSeconds: number;
  readonly requestsPerSecond: number;
  /** Latency percentiles in milliseconds. */
  readonly latencyP50Ms: number;
  readonly latencyP99Ms: number;
  /** Socket errors plus answers that were not 2xx or 3xx. */
  readonly errors: { readonly connect: number; readonly read: number; readonly write: number; readonly timeout: number; readonly status: number };
}

const SUMMARY_MARKER = 'WRK-SUMMARY ';

const SUMMARY_SCRIPT = `
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('${SUMMARY_MARKER}{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.connect, e.read, e.write, e.timeout, e.status))
end
`;

export async function runWrk(options: WrkOptions): Promise<WrkResult> {
  if (options.script !== undefined && /(^|\n)\s*done\s*=|function\s+done\s*\(/.test(options.script)) {
    throw new Error('runWrk: the script must not define done(); the summary is printed by runWrk');
  }
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'manticore-wrk-'));
  try {
    const scriptFile = path.join(dir, 'script.lua');
    await fs.writeFile(scriptFile, `${options.script ?? ''}\n${SUMMARY_SCRIPT}`);
    const args = [
      `-t${options.threads ?? 1}`,
      `-c${options.connections}`,
      `-d${options.durationSeconds}s`,
      `--timeout`,
      `${options.timeoutSeconds ?? 5}s`,
      '-s',
      scriptFile,
      options.url,
      ...(options.scriptArgs ?? []),
    ];
    const stdout = await new Promise<string>((resolve, reject) => {
      const niced = options.niceness ? ['nice', '-n', String(options.niceness)] : [];
      const [command, ...commandArgs] = [...niced, 'wrk', ...args] as [string, ...string[]];
      execFile(command, commandArgs, { maxBuffer: 16 * 1024 * 1024 }, (error, out, err) => {
        if (error) reject(new Error(`wrk ${args.join(' ')} failed: ${error.message}\n${err}`));
        else resolve(out);
      });
    });
    return parseSummary(stdout);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

function parseSummary(stdout: string): WrkResult {
  const line = stdout.split('\n').find((l) => l.startsWith(SUMMARY_MARKER));
  if (!line) throw new Error(`wrk printed no summary:\n${stdout}`);
  const raw = JSON.parse(line.slice(SUMMARY_MARKER.length)) as Record<string, number>;
  const durationSeconds = raw.duration_us! / 1e6;
  return {
    requests: raw.requests!,
    durationSeconds,
    requestsPerSecond: raw.requests! / durationSeconds,
    latencyP50Ms: raw.p50_us! / 1000,
    latencyP99Ms: raw.p99_us! / 1000,
    errors: { connect: raw.connect!, read: raw.read!, write: raw.write!, timeout: raw.timeout!, status: raw.status! },
  };
}

/**
 * Rounds of one load taken as one run: requests, time and errors added up; the latency percentiles are the
 * medians of the rounds' (wrk reports percentiles per run, which cannot be merged).
 */
export function combineRounds(rounds: readonly WrkResult[]): WrkResult {
  if (rounds.length === 0) throw new Error('combineRounds: no rounds');
  const sum = (value: (round: WrkResult) => number): number => rounds.reduce((total, round) => total + value(round), 0);
  const median = (value: (round: WrkResult) => number): number => percentile(rounds.map(value), 50);
  const requests = sum((round) => round.requests);
  const durationSeconds = sum((round) => round.durationSeconds);
  return {
    requests,
    durationSeconds,
    requestsPerSecond: requests / durationSeconds,
    latencyP50Ms: median((round) => round.latencyP50Ms),
    latencyP99Ms: median((round) => round.latencyP99Ms),
    errors: {
      connect: sum((round) => round.errors.connect),
      read: sum((round) => round.errors.read),
      write: sum((round) => round.errors.write),
      timeout: sum((round) => round.errors.timeout),
      status: sum((round) => round.errors.status),
    },
  };
}

export function failedRequests(result: WrkResult): number {
  const e = result.errors;
  return e.connect + e.read + e.write + e.timeout + e.status;
}
