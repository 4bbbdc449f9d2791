/**
 * The methods each registered path answers, so that a request for a known path with a method it does not
 * take is told so (405 with Allow, RFC 9110 §15.5.6) rather than that the path does not exist.
 */
export class RouteMethods {
  private readonly routes: Array<{ readonly pattern: RegExp; readonly wildcard: boolean; readonly methods: Set<string> }> = [];

  /** Records a route as Fastify's onRoute hook gives it: its URL pattern (`:param`, `*`) and method(s). */
  add(url: string, method: string | readonly string[]): void {
    const pattern = patternOf(url);
    const route = this.routes.find((known) => known.pattern.source === pattern.source);
    const methods = route?.methods ?? new Set<string>();
    for (const each of typeof method === 'string' ? [method] : method) methods.add(each);
    if (route === undefined) this.routes.push({ pattern, wildcard: url.includes('*'), methods });
  }

  /**
   * The methods `path` (without its query) takes, sorted; none when no route but a catch-all (`/api/v2/*`,
   * which answers CORS preflights anywhere below it) matches it, as such a path is unknown.
   */
  allowed(path: string): string[] {
    const matching = this.routes.filter((route) => route.pattern.test(path));
    if (!matching.some((route) => !route.wildcard)) return [];
    return [...new Set(matching.flatMap((route) => [...route.methods]))].sort();
  }
}

function patternOf(url: string): RegExp {
  const source = url
    .split(/(:[A-Za-z0-9_]+|\*)/)
    .map((part) => (part === '*' ? '.*' : part.startsWith(':') ? '[^/]+' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    .join('');
  return new RegExp(`^${source}$`);
}
