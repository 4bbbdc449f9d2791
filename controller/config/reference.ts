import { schemaOf } from '../api/schemas.js';
import { environmentOverrides } from './config.js';

/** The part of JSON Schema the configuration schema uses. */
interface SchemaNode {
  type?: string;
  enum?: unknown[];
  default?: unknown;
  description?: string;
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
  $ref?: string;
  minimum?: number;
  exclusiveMinimum?: number;
  maximum?: number;
  minLength?: number;
  minItems?: number;
  pattern?: string;
  required?: string[];
}

interface Row {
  path: string;
  node: SchemaNode;
}

/**
 * The configuration reference (docs/configuration.md), rendered from `crds/config.yaml` and the table of
 * environment overrides, so the document cannot drift from what the loader accepts: `make docs` writes
 * it and a test fails when the committed copy differs.
 */
export function renderConfigReference(): string {
  const schema = schemaOf('config') as SchemaNode & { $defs?: Record<string, SchemaNode> };
  const definitions = schema.$defs ?? {};
  const resolve = (node: SchemaNode): SchemaNode => {
    if (node.$ref === undefined) return node;
    const target = definitions[node.$ref.replace('#/$defs/', '')];
    if (!target) throw new Error(`config schema: unresolved ${node.$ref}`);
    // A description or default next to the $ref belongs to the field and wins.
    return { ...target, ...node, $ref: undefined };
  };
  const variables = new Map(environmentOverrides.map(({ variable, path }) => [path.join('.'), variable]));

  const rows: Row[] = [];
  const walk = (prefix: string, node: SchemaNode): void => {
    for (const [name, child] of Object.entries(node.properties ?? {})) {
      const field = resolve(child);
      const path = prefix === '' ? name : `${prefix}.${name}`;
      // A group's own row, when it has a description: what it says holds for all its fields (e.g. "embedded:").
      if (field.properties === undefined || field.description !== undefined) rows.push({ path, node: field });
      if (field.properties !== undefined) walk(path, field);
    }
  };

  const lines = [
    '# Configuration reference',
    '',
    '<!-- Generated from crds/config.yaml by `make docs` (controller/config/reference.ts); do not edit. -->',
    '',
    'Manticore reads one YAML file (`--config FILE`), then the environment variables listed below, then fills',
    'every field left out with its default. The defaults are the embedded default that `make run` starts.',
    'Unknown fields and values outside the ranges are refused at start-up with the field named, and the variable',
    'when one set it (`manticore check-config --config FILE` checks a file without starting anything). A certificate',
    'file turns `router.tls` on: `MANTICORE_HTTPS_PORT` or `MANTICORE_TLS_KEY_FILE` without one is refused, so named.',
    '',
  ];
  for (const [section, node] of Object.entries(schema.properties ?? {})) {
    rows.length = 0;
    const resolved = resolve(node);
    if (resolved.properties !== undefined) walk(section, resolved);
    else rows.push({ path: section, node: resolved });
    lines.push(`## \`${section}\``, '');
    if (resolved.description) lines.push(resolved.description, '');
    lines.push('| Field | Type | Default | Environment | Description |', '|---|---|---|---|---|');
    for (const { path, node: field } of rows) {
      const variable = variables.get(path);
      lines.push(`| \`${path}\` | ${cell(typeOf(field, resolve))} | ${cell(defaultOf(field))} | ${variable ? `\`${variable}\`` : ''} | ${cell(field.description ?? '')} |`);
    }
    lines.push('');
  }
  return lines.join('\n');
}

function typeOf(node: SchemaNode, resolve: (node: SchemaNode) => SchemaNode): string {
  if (node.enum !== undefined) return `one of ${node.enum.map((value) => `\`${String(value)}\``).join(', ')}`;
  const bounds: string[] = [];
  if (node.minimum !== undefined) bounds.push(`≥ ${node.minimum}`);
  if (node.exclusiveMinimum !== undefined) bounds.push(`> ${node.exclusiveMinimum}`);
  if (node.maximum !== undefined) bounds.push(`≤ ${node.maximum}`);
  if (node.minLength !== undefined) bounds.push(node.minLength === 1 ? 'non-empty' : `at least ${node.minLength} characters`);
  if (node.minItems !== undefined) bounds.push(`at least ${node.minItems}`);
  if (node.pattern !== undefined) bounds.push(`matching \`${node.pattern}\``);
  let type = node.type ?? 'any';
  if (type === 'array' && node.items !== undefined) {
    const items = resolve(node.items);
    type = items.properties !== undefined ? `list of {${Object.keys(items.properties).join(', ')}}` : `list of ${items.type ?? 'values'}`;
  } else if (type === 'object' && node.properties !== undefined) {
    type = `{${Object.keys(node.properties).join(', ')}}`;
  }
  return bounds.length > 0 ? `${type} (${bounds.join(', ')})` : type;
}

function defaultOf(node: SchemaNode): string {
  if (node.default === undefined) return '';
  return `\`${JSON.stringify(node.default)}\``;
}

/** Table cells: no line breaks, and pipes escaped. */
function cell(text: string): string {
  return text.replace(/\n/g, ' ').replace(/\|/g, '\\|');
}
