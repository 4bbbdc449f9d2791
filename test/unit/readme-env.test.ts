import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { environmentOverrides } from '../../controller/config/config.js';

// Compiled to dist/test/unit/: three levels up is the repository root.
const readme = fs.readFileSync(path.resolve(__dirname, '../../../README.md'), 'utf8');

/** The variables the README's table of environment overrides (under ## Configuration) lists. */
function documentedVariables(): Set<string> {
  const start = readme.indexOf('## Configuration');
  const section = readme.slice(start, readme.indexOf('\n## ', start + 1));
  const table = section.split('\n').filter((line) => line.startsWith('| `'));
  return new Set(table.flatMap((row) => [...row.split('|')[1]!.matchAll(/`([A-Z_]+)`/g)].map((match) => match[1]!)));
}

describe('README: environment overrides', () => {
  it('lists every variable the configuration loader reads, and no other', () => {
    const documented = documentedVariables();
    const read = new Set(environmentOverrides.map(({ variable }) => variable));
    assert.deepEqual([...read].filter((variable) => !documented.has(variable)), [], 'read by the loader but missing from the README');
    assert.deepEqual([...documented].filter((variable) => !read.has(variable)), [], 'in the README but not read by the loader');
  });
});
