import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { validate, ValidationError } from './schemas.js';
import type { SessionTemplate } from './types.js';

/**
 * Loads every `*.yaml` template in a directory. A broken template stops start-up with a message naming
 * the file and field: an operator's typo must not surface later as a failed user session.
 */
export function loadTemplates(dir: string): Map<string, SessionTemplate> {
  let files: string[];
  try {
    files = fs.readdirSync(dir).filter((file) => file.endsWith('.yaml') || file.endsWith('.yml')).sort();
  } catch (error) {
    throw new ValidationError(`templates directory ${dir}`, [(error as Error).message]);
  }
  const templates = new Map<string, SessionTemplate>();
  for (const file of files) {
    const where = `template ${path.join(dir, file)}`;
    let raw: unknown;
    try {
      raw = YAML.parse(fs.readFileSync(path.join(dir, file), 'utf8'));
    } catch (error) {
      throw new ValidationError(where, [`not valid YAML: ${(error as Error).message}`]);
    }
    const template = validate<SessionTemplate>('session-template', raw, where);
    checkTemplate(template, where);
    if (templates.has(template.metadata.name)) {
      throw new ValidationError(where, [`/metadata/name: "${template.metadata.name}" is defined twice`]);
    }
    templates.set(template.metadata.name, template);
  }
  return templates;
}

/** The rules JSON Schema cannot express: unique names, defaults within enums, every service's port provided. */
function checkTemplate(template: SessionTemplate, where: string): void {
  const problems: string[] = [];
  const { parameters, services, backends } = template.spec;
  parameters.forEach((parameter, index) => {
    if (!parameter.enum.includes(parameter.default)) {
      problems.push(`/spec/parameters/${index}/default: "${parameter.default}" is not one of its enum values`);
    }
    if (parameters.findIndex((other) => other.name === parameter.name) !== index) {
      problems.push(`/spec/parameters/${index}/name: "${parameter.name}" is defined twice`);
    }
  });
  services.forEach((service, index) => {
    if (services.findIndex((other) => other.name === service.name) !== index) {
      problems.push(`/spec/services/${index}/name: "${service.name}" is defined twice`);
    }
  });
  const backendPorts: Array<[string, string[][]]> = [];
  if (backends.embedded) backendPorts.push(['embedded', backends.embedded.tasks.map((task) => task.ports)]);
  if (backends.nomad) backendPorts.push(['nomad', backends.nomad.tasks.map((task) => Object.keys(task.ports))]);
  for (const [backend, portsByTask] of backendPorts) {
    const all = portsByTask.flat();
    all.forEach((label, index) => {
      if (all.indexOf(label) !== index) problems.push(`/spec/backends/${backend}: port label "${label}" is used by two tasks`);
    });
    services.forEach((service, index) => {
      if (!all.includes(service.port)) {
        problems.push(`/spec/services/${index}/port: no ${backend} task provides port "${service.port}"`);
      }
    });
  }
  if (problems.length > 0) throw new ValidationError(where, problems);
}

/**
 * Completes a session's parameters from the template's defaults and checks every value against its enum.
 * Errors name the field as the API sees it (`/parameters/<name>`).
 */
export function resolveParameters(template: SessionTemplate, given: Readonly<Record<string, unknown>> = {}): Record<string, string> {
  const problems: string[] = [];
  const known = new Set(template.spec.parameters.map((parameter) => parameter.name));
  for (const name of Object.keys(given)) {
    if (!known.has(name)) problems.push(`/parameters/${name}: unknown parameter of template "${template.metadata.name}"`);
  }
  const resolved: Record<string, string> = {};
  for (const parameter of template.spec.parameters) {
    const value = given[parameter.name] ?? parameter.default;
    if (typeof value !== 'string' || !parameter.enum.includes(value)) {
      problems.push(`/parameters/${parameter.name}: ${JSON.stringify(value)} is not one of ${parameter.enum.join(', ')}`);
    } else {
      resolved[parameter.name] = value;
    }
  }
  if (problems.length > 0) throw new ValidationError('session parameters', problems);
  return resolved;
}
