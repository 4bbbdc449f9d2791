import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { validate, ValidationSeverity } from 'dockerfile-utils';

const root = path.resolve(__dirname, '../../..');
const text = fs.readFileSync(path.join(root, 'Dockerfile'), 'utf8');

interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

/** The Dockerfile's instructions, continuation lines joined, comments left out. */
function instructions(): Instruction[] {
  const result: Instruction[] = [];
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    let line = lines[n]!;
    const start = n + 1;
    if (line.trim() === '' || line.trimStart().startsWith('#')) continue;
    while (line.endsWith('\\') && n + 1 < lines.length) line = `${line.slice(0, -1)} ${lines[++n]!.trim()}`;
    const [keyword, ...rest] = line.trim().split(/\s+/);
    result.push({ keyword: keyword!.toUpperCase(), args: rest.join(' '), line: start });
  }
  return result;
}

/** Instructions by build stage (`FROM … AS name`). */
function stages(): Map<string, Instruction[]> {
  const byStage = new Map<string, Instruction[]>();
  let current: Instruction[] = [];
  for (const instruction of instructions()) {
    if (instruction.keyword === 'FROM') {
      current = [];
      byStage.set(/\bAS\s+(\S+)$/i.exec(instruction.args)?.[1] ?? `stage-${byStage.size}`, current);
    }
    current.push(instruction);
  }
  return byStage;
}

/** No Docker engine runs here, so the image is checked by lint and by the rules it must keep. */
describe('the Dockerfile', () => {
  it('lints clean (dockerfile-utils, every rule an error)', () => {
    const strict = {
      deprecatedMaintainer: ValidationSeverity.ERROR,
      directiveCasing: ValidationSeverity.ERROR,
      emptyContinuationLine: ValidationSeverity.ERROR,
      instructionCasing: ValidationSeverity.ERROR,
      instructionCmdMultiple: ValidationSeverity.ERROR,
      instructionEntrypointMultiple: ValidationSeverity.ERROR,
      instructionHealthcheckMultiple: ValidationSeverity.ERROR,
      instructionJSONInSingleQuotes: ValidationSeverity.ERROR,
      instructionWorkdirRelative: ValidationSeverity.ERROR,
    };
    assert.deepEqual(
      validate(text, strict).map((problem) => `line ${problem.range.start.line + 1}: ${problem.message}`),
      [],
    );
  });

  it('builds in a separate stage, and runs the final images as a user other than root, with a health check', () => {
    const all = stages();
    assert.deepEqual([...all.keys()], ['build', 'runtime', 'router']);
    for (const name of ['runtime', 'router']) {
      const users = all.get(name)!.filter((instruction) => instruction.keyword === 'USER');
      assert.ok(users.length > 0 && !/^(root|0)(:|$)/.test(users.at(-1)!.args), `${name} ends as a non-root user`);
    }
    assert.equal(instructions().filter((instruction) => instruction.keyword === 'HEALTHCHECK').length, 1);
    assert.ok(!all.get('runtime')!.some((instruction) => instruction.keyword === 'RUN' && /\b(g\+\+|make|python3)\b/.test(instruction.args)), 'no toolchain in the runtime image');
  });

  it('pins its base image, keeps apt lean, and copies only files that exist', () => {
    const args = new Map(instructions().filter((i) => i.keyword === 'ARG').map((i) => i.args.split('=') as [string, string]));
    for (const from of instructions().filter((instruction) => instruction.keyword === 'FROM')) {
      const image = from.args.split(/\s+/)[0]!.replace(/^\$\{(\w+)\}$/, (_whole, name: string) => args.get(name) ?? '');
      if (['build', 'runtime'].includes(image)) continue;
      assert.match(image, /^[\w./-]+:[\w.-]+$/, `line ${from.line}: an image with a tag`);
      assert.doesNotMatch(image, /:latest$/, `line ${from.line}: not :latest`);
    }
    for (const run of instructions().filter((instruction) => instruction.keyword === 'RUN' && instruction.args.includes('apt-get install'))) {
      assert.match(run.args, /--no-install-recommends/, `line ${run.line}`);
      assert.match(run.args, /rm -rf \/var\/lib\/apt\/lists/, `line ${run.line}`);
    }
    assert.ok(!instructions().some((instruction) => instruction.keyword === 'ADD'), 'COPY, not ADD');
    for (const copy of instructions().filter((instruction) => instruction.keyword === 'COPY' && !instruction.args.startsWith('--from'))) {
      for (const source of copy.args.split(/\s+/).slice(0, -1)) assert.ok(fs.existsSync(path.join(root, source)), `line ${copy.line}: ${source} exists`);
    }
  });

  it("lets the router image's HAProxy, run as its non-root user, bind the ports below 1024 that TLS at the edge uses", () => {
    // The operator's guide serves TLS at the edge on 443 and redirects from 80, and the router job runs on the host
    // network, whose unprivileged ports start at 1024: without the capability HAProxy cannot bind them.
    const guide = fs.readFileSync(path.join(root, 'docs/operations.md'), 'utf8');
    assert.match(guide, /http: \{ host: 0\.0\.0\.0, port: 80 \}/);
    const router = stages().get('router')!;
    const lastUser = router.filter((instruction) => instruction.keyword === 'USER').at(-1)!;
    assert.notEqual(lastUser.args, 'root');
    const setcap = router.find((instruction) => instruction.keyword === 'RUN' && /\bsetcap\b/.test(instruction.args));
    assert.ok(setcap, 'the router stage gives HAProxy no file capability');
    assert.match(setcap.args, /setcap\s+'?cap_net_bind_service[=+]+ep'?\s+\/usr\/sbin\/haproxy\b/);
    assert.ok(setcap.line < lastUser.line, 'setcap runs as root, before the image switches to its user');
  });
});
