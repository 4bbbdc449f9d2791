import { execFileSync } from 'node:child_process';
import os from 'node:os';

/** One measured figure (absolute: true for this machine only). */
export interface Figure {
  readonly key: string;
  readonly label: string;
  readonly value: number;
  readonly unit: string;
}

/** A figure compared with a bound the product promises. */
export interface Target {
  readonly key: string;
  readonly label: string;
  readonly value: number;
  readonly bound: number;
  /** `max`: the value must not exceed the bound; `min`: it must reach it. */
  readonly kind: 'max' | 'min';
  readonly unit: string;
  readonly met: boolean;
}

/** What one scenario measured: figures, ratios between things measured side by side, and its targets. */
export interface ScenarioResult {
  readonly scenario: string;
  readonly title: string;
  /** The load as run (counts, connections, durations), so a reader knows what the figures mean. */
  readonly parameters: Readonly<Record<string, number | string>>;
  readonly figures: readonly Figure[];
  readonly ratios: readonly Figure[];
  readonly targets: readonly Target[];
}

/** Collects a scenario's figures as it runs. */
export class ResultBuilder {
  private readonly figures: Figure[] = [];
  private readonly ratios: Figure[] = [];
  private readonly targets: Target[] = [];

  constructor(
    private readonly scenario: string,
    private readonly title: string,
    private readonly parameters: Record<string, number | string>,
  ) {}

  figure(key: string, label: string, value: number, unit: string): this {
    this.figures.push({ key, label, value: round(value), unit });
    return this;
  }

  ratio(key: string, label: string, value: number): this {
    this.ratios.push({ key, label, value: round(value), unit: '×' });
    return this;
  }

  /** A bound: `max` when the value must stay at or below it, `min` when it must reach it. */
  target(key: string, label: string, value: number, kind: 'max' | 'min', bound: number, unit: string): this {
    const met = Number.isFinite(value) && (kind === 'max' ? value <= bound : value >= bound);
    this.targets.push({ key, label, value: round(value), bound, kind, unit, met });
    return this;
  }

  build(): ScenarioResult {
    return {
      scenario: this.scenario,
      title: this.title,
      parameters: { ...this.parameters },
      figures: [...this.figures],
      ratios: [...this.ratios],
      targets: [...this.targets],
    };
  }
}

/** Three significant figures are all a noisy machine can claim. */
function round(value: number): number {
  if (!Number.isFinite(value) || value === 0) return value;
  const digits = Math.max(0, 2 - Math.floor(Math.log10(Math.abs(value))));
  return Number(value.toFixed(Math.min(digits, 6)));
}

/** The machine the figures came from, recorded beside them. */
export interface MachineInfo {
  readonly date: string;
  readonly cpus: number;
  readonly cpuModel: string;
  readonly memoryGiB: number;
  readonly node: string;
  readonly haproxy: string;
  readonly commit: string;
}

export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    date: new Date().toISOString(),
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryGiB: round(os.totalmem() / 2 ** 30),
    node: process.version,
    haproxy: firstLine(['haproxy', '-v']),
    commit: firstLine(['git', 'rev-parse', '--short', 'HEAD']),
  };
}

function firstLine(command: [string, ...string[]]): string {
  try {
    return execFileSync(command[0], command.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0]!.trim();
  } catch {
    return 'unknown';
  }
}

/** The readable table printed after a run: every figure, ratio and target of every scenario. */
export function formatTable(results: readonly ScenarioResult[]): string {
  const rows: Array<[string, string, string]> = [];
  for (const result of results) {
    rows.push([`${result.scenario}: ${result.title}`, '', '']);
    for (const figure of result.figures) rows.push([`  ${figure.label}`, formatValue(figure.value, figure.unit), '']);
    for (const ratio of result.ratios) rows.push([`  ${ratio.label}`, formatValue(ratio.value, ratio.unit), '']);
    for (const target of result.targets) {
      const bound = `${target.kind === 'max' ? '≤' : '≥'} ${formatValue(target.bound, target.unit)}`;
      rows.push([`  target: ${target.label}`, formatValue(target.value, target.unit), `${bound}  ${target.met ? 'met' : 'MISSED'}`]);
    }
  }
  const width = Math.max(...rows.map(([label]) => label.length));
  const valueWidth = Math.max(...rows.map(([, value]) => value.length));
  return rows.map(([label, value, verdict]) => `${label.padEnd(width)}  ${value.padStart(valueWidth)}  ${verdict}`.trimEnd()).join('\n');
}

function formatValue(value: number, unit: string): string {
  const text = Number.isFinite(value) ? value.toLocaleString('en-US', { maximumFractionDigits: 3 }) : String(value);
  if (unit === '×') return `${text}×`;
  if (unit === '%') return `${text}%`;
  return unit === '' ? text : `${text} ${unit}`;
}
