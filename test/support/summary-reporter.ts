import Mocha from 'mocha';

/**
 * Mocha's spec reporter plus one plain closing line, `tests: N passed, N failed, N skipped`, which any
 * tool reading the run can find without knowing mocha's own summary format.
 */
class SummaryReporter extends Mocha.reporters.Spec {
  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options);
    runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => {
      const { passes, failures, pending } = this.stats;
      process.stdout.write(`\ntests: ${passes} passed, ${failures} failed, ${pending} skipped\n`);
    });
  }
}

export = SummaryReporter;
