import type { Logger } from '../../controller/util/log.js';
import type { ScenarioResult } from './report.js';

/** How a scenario is run: full size for `make bench`, or a quick pass at a small size (the harness's own test). */
export interface BenchContext {
  readonly quick: boolean;
  readonly log: Logger;
  /** A scratch directory of this run, removed afterwards. */
  readonly workDir: string;
}

export interface Scenario {
  /** Short name used on the command line and in results.json. */
  readonly name: string;
  run(context: BenchContext): Promise<ScenarioResult>;
}
