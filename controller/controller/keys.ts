/** The store layout (ARCHITECTURE §4): one key per object, one writer per key. */
export class Keys {
  constructor(readonly prefix: string) {}

  get sessions(): string {
    return `${this.prefix}sessions/`;
  }
  get statuses(): string {
    return `${this.prefix}status/`;
  }
  get routes(): string {
    return `${this.prefix}routes/`;
  }
  get routers(): string {
    return `${this.prefix}routers/`;
  }
  get controllers(): string {
    return `${this.prefix}controllers/`;
  }
  /** Locked by the leading controller's session (ARCHITECTURE §8). */
  get leader(): string {
    return `${this.prefix}leader`;
  }
  get activities(): string {
    return `${this.prefix}activity/`;
  }

  session(id: string): string {
    return this.sessions + id;
  }
  status(id: string): string {
    return this.statuses + id;
  }
  route(id: string): string {
    return this.routes + id;
  }
  router(name: string): string {
    return this.routers + name;
  }
  /** A controller replica's heartbeat; host names may hold dots, which keys allow. */
  controller(host: string, pid: number): string {
    return `${this.controllers}${host.replace(/[^A-Za-z0-9._-]/g, '_')}-${pid}`;
  }
  activity(id: string): string {
    return this.activities + id;
  }
}
