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
  const claim: RouteRecord = { sessionId, hosts: [], ports: [] };
  for (const service of template.spec.services) {
    if (service.expose === 'tcp') {
      const assignment = reservePort();
      if (assignment === undefined) return undefined;
      claim.ports.push({ service: service.name, ...assignment });
    } else {
      claim.hosts.push({ service: service.name, token: newToken() });
    }
  }
  return claim;
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
