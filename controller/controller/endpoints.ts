import type { Endpoint, RouteRecord, SessionTemplate } from '../api/types.js';
import { newToken, type PortAssignment } from './claims.js';

/** How users reach sessions: the parts of the public URLs that are not secret. */
export interface PublicAddressing {
  readonly domain: string;
  readonly httpScheme: 'http' | 'https';
  readonly httpPort: number;
  readonly tcpHost: string;
  /** The public TCP ports speak TLS (terminated by HAProxy or a load balancer). */
  readonly tcpTls?: boolean;
  /** With AWS load balancers: the DNS name users reach a load balancer of the pool by (its ports' host). */
  readonly loadBalancerHost?: (name: string) => string | undefined;
}

export type PublicEndpoint = Endpoint & { readonly host: string; readonly port: number };

/**
 * A session's claim: a fresh secret hostname for each http/ws service and a public port for each tcp
 * service, from `reservePort` (undefined when none is free: then no claim is made).
 */
export function newClaim(sessionId: string, template: SessionTemplate, reservePort: () => PortAssignment | undefined): RouteRecord | undefined {
  const claim = claimForTemplate({ sessionId, hosts: [], ports: [] }, template, reservePort, () => true);
  const tcpServices = template.spec.services.filter((service) => service.expose === 'tcp').length;
  return claim.ports.length === tcpServices ? claim : undefined;
}

/**
 * The claim with a route for each of the template's services and no other: each service keeps its hostname,
 * and its port while `keepPort` accepts it; a service new to the template (or a port refused) gets one from
 * `reservePort`; a service gone from the template gives its up. Without a free port, a refused port is kept
 * and a new tcp service has none (yet). Returns `claim` itself when nothing changed.
 */
export function claimForTemplate(
  claim: RouteRecord,
  template: SessionTemplate,
  reservePort: () => PortAssignment | undefined,
  keepPort: (port: number) => boolean,
): RouteRecord {
  let changed = false;
  const hosts: RouteRecord['hosts'] = [];
  const ports: RouteRecord['ports'] = [];
  for (const service of template.spec.services) {
    if (service.expose === 'tcp') {
      const current = claim.ports.find((route) => route.service === service.name);
      if (current !== undefined && keepPort(current.port)) {
        ports.push(current);
        continue;
      }
      const assignment = reservePort();
      if (assignment !== undefined) {
        ports.push({ service: service.name, ...assignment });
        changed = true;
      } else if (current !== undefined) {
        ports.push(current);
      }
    } else {
      const current = claim.hosts.find((route) => route.service === service.name);
      if (current === undefined) changed = true;
      hosts.push(current ?? { service: service.name, token: newToken() });
    }
  }
  // Every route kept belongs to a distinct service of the template: fewer routes means some were dropped.
  changed ||= hosts.length !== claim.hosts.length || ports.length !== claim.ports.length;
  return changed ? { ...claim, hosts, ports } : claim;
}

/** The public address of each service, known from the claim before anything runs. */
export function publicEndpoints(template: SessionTemplate, claim: RouteRecord, addressing: PublicAddressing): Record<string, PublicEndpoint> {
  const { domain, httpScheme, httpPort, tcpHost, tcpTls, loadBalancerHost } = addressing;
  const portSuffix = httpPort === (httpScheme === 'https' ? 443 : 80) ? '' : `:${httpPort}`;
  const httpTls = httpScheme === 'https' ? ({ tls: true } as const) : {};
  const endpoints: Record<string, PublicEndpoint> = {};
  for (const service of template.spec.services) {
    if (service.expose === 'tcp') {
      const route = claim.ports.find((candidate) => candidate.service === service.name);
      if (route === undefined) continue;
      const host = (route.loadBalancer === undefined ? undefined : loadBalancerHost?.(route.loadBalancer)) ?? tcpHost;
      endpoints[service.name] = tcpTls
        ? { protocol: 'tcp', url: `tls://${host}:${route.port}`, tls: true, host, port: route.port }
        : { protocol: 'tcp', url: `tcp://${host}:${route.port}`, host, port: route.port };
    } else {
      const token = claim.hosts.find((route) => route.service === service.name)?.token;
      if (token === undefined) continue;
      const host = `${token}.${domain}`;
      const scheme = service.expose === 'ws' ? (httpScheme === 'https' ? 'wss' : 'ws') : httpScheme;
      endpoints[service.name] = { protocol: service.expose, url: `${scheme}://${host}${portSuffix}/`, ...httpTls, host, port: httpPort };
    }
  }
  return endpoints;
}
