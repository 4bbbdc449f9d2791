import { RenderError, type WorkloadRequest } from './scheduler.js';

/** How {@link interpolate} treats references that are not Manticore's own. */
export interface InterpolationOptions {
  /**
   * References (the text between `${` and `}`, trimmed) left as they are for the backend to resolve at run
   * time, e.g. Nomad's `${NOMAD_PORT_http}`. Without it every reference must be Manticore's own.
   */
  readonly passThrough?: (reference: string) => boolean;
}

/**
 * Replaces `${params.<name>}` and `${endpoints.<service>.url|scheme|host|port}`; `$${` stands for a literal `${`
 * (as in Nomad job files). Any other reference is a template error, reported with where it was found,
 * unless `options.passThrough` accepts it.
 */
export function interpolate(text: string, request: WorkloadRequest, where: string, options: InterpolationOptions = {}): string {
  return text.replace(/\$(\$)?\{([^}]*)\}/g, (match: string, escaped: string | undefined, reference: string) => {
    if (escaped) return match.slice(1);
    const trimmed = reference.trim();
    const value = resolveReference(trimmed, request);
    if (value !== undefined) return value;
    // Manticore's own namespaces never pass through: a typo there must fail at render, not at run time.
    if (!isOwnReference(trimmed) && options.passThrough?.(trimmed)) return match;
    throw new RenderError(`${where}: unknown reference \${${reference}}`);
  });
}

function isOwnReference(reference: string): boolean {
  return reference.startsWith('params.') || reference.startsWith('endpoints.');
}

function resolveReference(reference: string, request: WorkloadRequest): string | undefined {
  const parts = reference.split('.');
  if (parts.length === 2 && parts[0] === 'params') {
    const name = parts[1] ?? '';
    if (Object.hasOwn(request.parameters, name)) return request.parameters[name];
    return request.template.spec.parameters.find((parameter) => parameter.name === name)?.default;
  }
  if (parts.length === 3 && parts[0] === 'endpoints') {
    const [, service = '', field] = parts;
    if (!Object.hasOwn(request.endpoints, service)) return undefined;
    const endpoint = request.endpoints[service];
    if (!endpoint) return undefined;
    if (field === 'url') return endpoint.url;
    // The URL's scheme (http, https, ws, wss, tcp, tls): programs that want the port spelt out even where the
    // URL leaves out the scheme's default build their address from scheme, host and port.
    if (field === 'scheme') return endpoint.url.slice(0, endpoint.url.indexOf(':'));
    if (field === 'host') return endpoint.host;
    if (field === 'port') return String(endpoint.port);
  }
  return undefined;
}
