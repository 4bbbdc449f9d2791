import fs from 'node:fs';
import path from 'node:path';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import addFormats from 'ajv-formats';
import YAML from 'yaml';

/** Where the YAML JSON Schemas live, relative to this module both in the source tree and in dist/. */
const crdsDir: string = findUp(__dirname, 'crds');

function findUp(from: string, name: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, name);
    if (fs.existsSync(path.join(candidate, 'session.yaml'))) return candidate;
    if (path.dirname(dir) === dir) throw new Error(`cannot find the ${name}/ directory above ${from}`);
  }
}

const schemaNames = ['session', 'session-status', 'session-template', 'route', 'router-heartbeat', 'controller-heartbeat', 'activity', 'config'] as const;
export type SchemaName = (typeof schemaNames)[number];

/** A record that failed validation; `problems` name each offending field as a JSON pointer. */
export class ValidationError extends Error {
  constructor(
    readonly what: string,
    readonly problems: string[],
  ) {
    super(`invalid ${what}: ${problems.join('; ')}`);
    this.name = 'ValidationError';
  }
}

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: true, strictTypes: false });
/** ajv-formats' RFC 3339 check ("full": the fields' ranges are checked too); a format definition, as its source shows. */
const rfc3339 = addFormats.default.get('date-time') as { readonly validate: (value: string) => boolean };
// RFC 3339 also admits times Date.parse cannot read (a leap second "23:59:60", an offset of hours only "+01"),
// and every deadline is computed with Date.parse: such a time would make them NaN. A record holding one is
// invalid, and reported like any malformed record.
ajv.addFormat('date-time', { type: 'string', validate: (value: string) => rfc3339.validate(value) && Number.isFinite(Date.parse(value)) });

const validators = new Map<SchemaName, ValidateFunction>();

function validatorFor(name: SchemaName): ValidateFunction {
  let validate = validators.get(name);
  if (!validate) {
    const schema = YAML.parse(fs.readFileSync(path.join(crdsDir, `${name}.yaml`), 'utf8')) as object;
    validate = ajv.compile(schema);
    validators.set(name, validate);
  }
  return validate;
}

/**
 * Compiles every schema now. A long-running process calls it as it starts, so that the first records a
 * burst of requests or a watch brings are not held up by compiling (about 200 ms of CPU here).
 */
export function compileValidators(): void {
  for (const name of schemaNames) validatorFor(name);
}

/** The raw JSON Schema of a resource (for the OpenAPI document and the front end's route schemas). */
export function schemaOf(name: SchemaName): Record<string, unknown> {
  return YAML.parse(fs.readFileSync(path.join(crdsDir, `${name}.yaml`), 'utf8')) as Record<string, unknown>;
}

export function describeErrors(errors: readonly ErrorObject[] | null | undefined): string[] {
  return (errors ?? []).map((error) => {
    const where = error.instancePath === '' ? '(root)' : error.instancePath;
    if (error.keyword === 'additionalProperties') {
      return `${where}: unknown field "${String((error.params as { additionalProperty: string }).additionalProperty)}"`;
    }
    if (error.keyword === 'enum') {
      return `${where}: ${error.message} (${(error.params as { allowedValues: unknown[] }).allowedValues.join(', ')})`;
    }
    return `${where}: ${error.message ?? error.keyword}`;
  });
}

/**
 * Validates `value` in place (schema defaults are filled in) and returns it typed, or throws a
 * ValidationError naming every offending field.
 */
export function validate<T>(name: SchemaName, value: unknown, what: string = name): T {
  const check = validatorFor(name);
  if (!check(value)) throw new ValidationError(what, describeErrors(check.errors));
  return value as T;
}

/** Parses a JSON store value and validates it; parse failures become ValidationErrors too. */
export function parseRecord<T>(name: SchemaName, json: string, what: string = name): T {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (error) {
    throw new ValidationError(what, [`not valid JSON: ${(error as Error).message}`]);
  }
  return validate<T>(name, value, what);
}

/** Validates a record before it is written and serializes it: nothing invalid reaches the store. */
export function encodeRecord(name: SchemaName, value: unknown, what: string = name): string {
  validate(name, value, what);
  return JSON.stringify(value);
}
