import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { environmentOverrides } from '../../controller/config/config.js';
import { renderConfigReference } from '../../controller/config/reference.js';
import { configSchemaNodes } from '../support/config-schema.js';

const committed = path.resolve(__dirname, '../../../docs/configuration.md');

describe('the configuration reference (docs/configuration.md)', () => {
  const rendered = renderConfigReference();
  /** The table row of a field or group. */
  const row = (path: string): string => rendered.split('\n').find((line) => line.startsWith(`| \`${path}\` |`)) ?? `no row for ${path}`;

  it('is what the schema renders today (run `make docs` after changing crds/config.yaml)', () => {
    assert.equal(fs.readFileSync(committed, 'utf8'), rendered, 'docs/configuration.md is stale: run `make docs` and commit it');
  });

  it('names every field of the schema and every environment variable', () => {
    const leaves = configSchemaNodes().filter(({ node }) => node.properties === undefined);
    assert.ok(leaves.length > 50, `found ${leaves.length} fields`);
    for (const { path: leaf } of leaves) assert.ok(rendered.includes(`| \`${leaf}\` |`), `${leaf} is in the reference`);
    for (const { variable, path: field } of environmentOverrides) {
      assert.match(rendered, new RegExp(`\\| \`${field.join('\\.')}\` \\|[^\\n]*\\| \`${variable}\` \\|`), `${variable} is listed beside ${field.join('.')}`);
    }
  });

  it('keeps every description of the schema, a group\'s (what holds for all its fields) included', () => {
    const described = configSchemaNodes().filter(({ node }) => node.description !== undefined);
    for (const { path: field, node } of described) assert.ok(rendered.includes(node.description!.replace(/\|/g, '\\|')), `the description of ${field} is in the reference`);
    assert.match(row('scheduler.logs'), /\| embedded: how much of each task's stdout and stderr is kept.* Nomad jobs keep 3 files of 10 MB per stream/);
  });

  it('states the bounds the loader enforces (the same schema): a length beyond non-empty, a minimum the value must exceed', () => {
    assert.match(row('auth.adminToken'), /\| string \(at least 32 characters\) \|/);
    assert.match(row('auth.jwt.secret'), /\| string \(at least 32 characters\) \|/);
    assert.match(row('store.path'), /\| string \(non-empty\) \|/);
    assert.match(row('frontend.rateLimit.requestsPerSecond'), /\| number \(> 0\) \|/);
    assert.match(row('controller.rateLimitPerSecond'), /\| number \(> 0\) \|/);
  });
});
