import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { schemaOf } from '../../controller/api/schemas.js';
import { environmentOverrides } from '../../controller/config/config.js';
import { renderConfigReference } from '../../controller/config/reference.js';

const committed = path.resolve(__dirname, '../../../docs/configuration.md');

describe('the configuration reference (docs/configuration.md)', () => {
  const rendered = renderConfigReference();

  it('is what the schema renders today (run `make docs` after changing crds/config.yaml)', () => {
    assert.equal(fs.readFileSync(committed, 'utf8'), rendered, 'docs/configuration.md is stale: run `make docs` and commit it');
  });

  it('names every field of the schema and every environment variable', () => {
    const leaves: string[] = [];
    const definitions = (schemaOf('config').$defs ?? {}) as Record<string, { properties?: object }>;
    const walk = (prefix: string, node: { properties?: Record<string, { properties?: object; $ref?: string }> }): void => {
      for (const [name, child] of Object.entries(node.properties ?? {})) {
        const resolved = child.$ref ? definitions[child.$ref.replace('#/$defs/', '')]! : child;
        if (resolved.properties) walk(`${prefix}${name}.`, resolved as typeof node);
        else leaves.push(`${prefix}${name}`);
      }
    };
    walk('', schemaOf('config') as Parameters<typeof walk>[1]);
    assert.ok(leaves.length > 50, `found ${leaves.length} fields`);
    for (const leaf of leaves) assert.ok(rendered.includes(`| \`${leaf}\` |`), `${leaf} is in the reference`);
    for (const { variable, path: field } of environmentOverrides) {
      assert.match(rendered, new RegExp(`\\| \`${field.join('\\.')}\` \\|[^\\n]*\\| \`${variable}\` \\|`), `${variable} is listed beside ${field.join('.')}`);
    }
  });
});
