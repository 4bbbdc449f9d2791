import { resolveParameters } from '../api/templates.js';
import type { SessionTemplate } from '../api/types.js';
import type { ManticoreConfig } from '../config/config.js';
import { newSessionId } from '../controller/claims.js';
import { newClaim, publicEndpoints } from '../controller/endpoints.js';
import { renderNomadJob } from '../scheduler/nomad-job.js';
import { jobIdFor, RenderError } from '../scheduler/scheduler.js';
import { nomadJobOptions } from './backends.js';

/** A command-line mistake: printed as is, exit code 2. */
export class UsageError extends Error {}

/** Parses `name=value` pairs given with --param. */
export function parseParams(pairs: readonly string[]): Record<string, string> {
  const parameters: Record<string, string> = {};
  for (const pair of pairs) {
    const equals = pair.indexOf('=');
    if (equals <= 0) throw new UsageError(`--param takes name=value, got "${pair}"`);
    parameters[pair.slice(0, equals)] = pair.slice(equals + 1);
  }
  return parameters;
}

/**
 * The body of a Nomad job register request for a new session of `template` with `parameters`: what
 * `nomad job plan` would be given. The session id, secret hostnames and TCP port are made up the way
 * admission makes them (the port is the first of the range), so the job is exactly what a session gets.
 */
export function renderJobFor(config: ManticoreConfig, template: SessionTemplate, given: Record<string, string>): unknown {
  if (template.spec.backends.nomad === undefined) {
    throw new UsageError(`template "${template.metadata.name}" has no nomad backend`);
  }
  const parameters = resolveParameters(template, given);
  const sessionId = newSessionId();
  const claim = newClaim(sessionId, template, () => ({ port: config.router.tcp.portRangeStart }))!;
  const endpoints = publicEndpoints(template, claim, config.public);
  try {
    return renderNomadJob({ jobId: jobIdFor(sessionId), sessionId, template, parameters, endpoints }, nomadJobOptions(config));
  } catch (error) {
    if (error instanceof RenderError) throw new UsageError(error.message);
    throw error;
  }
}
