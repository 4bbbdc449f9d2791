import { setMaxListeners } from 'node:events';
import { Subject, type Observable } from 'rxjs';
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import { OperationBackoff } from './backoff.js';
import { closableNow, compactRanges, desiredRules, diffListeners, diffRules, matches, type ListenerAction } from './diff.js';
import { classify, errorCode, type ListenerProtocol, type ListenerSpec, type LoadBalancerProvider, type LoadBalancerSnapshot } from './provider.js';
import { ruleKey, type SecurityGroupRules } from './security-groups.js';

/** Whether a claimed port's listener is seen, and if not, why (for the session's condition Exposed). */
export interface ListenerState {
  readonly exposed: boolean;
  readonly reason: string;
  readonly message: string;
}

export interface ListenerStates {
  listenerState(loadBalancer: string, port: number): ListenerState;
}

/** What the exposer needs from the port allocator: the claims, and a place to report what it sees. */
export interface ClaimBook {
  claimedPorts(loadBalancer: string): ReadonlySet<number>;
  allClaimedPorts(): number[];
  /** True when room may have appeared (its first sighting, a listener gone). */
  setListeners(loadBalancer: string, ports: ReadonlySet<number>): boolean;
  lowerQuota(loadBalancer: string, quota: number): void;
}

export type ExposureChange =
  | { readonly kind: 'listener'; readonly loadBalancer: string; readonly port: number }
  /** A load balancer's listeners changed: room for new ports may have appeared. */
  | { readonly kind: 'room' };

export interface PoolMember {
  readonly provider: LoadBalancerProvider;
  readonly listenerQuota: number;
  /** As configured; otherwise the described one. */
  readonly dnsName?: string;
  /**
   * Leaving the pool: it gets no port, so its claims move elsewhere and the listeners of ours on it are
   * removed like any that is no longer wanted. Dropping it from the configuration instead would leave them:
   * only configured load balancers are described.
   */
  readonly retired?: boolean;
}

export interface ExposerOptions {
  readonly pool: readonly PoolMember[];
  readonly securityGroups: readonly SecurityGroupRules[];
  /** Sources allowed in by our ingress rules. */
  readonly cidrs: readonly string[];
  /** At most this many port ranges per group and CIDR (runs of ports merged beyond it). */
  readonly maxRanges: number;
  /** The fixed listener toward HAProxy's HTTP port, on one load balancer of the pool. */
  readonly httpListener?: { readonly loadBalancer: string; readonly spec: ListenerSpec };
  /** Session ports terminate TLS at the load balancer with this certificate. */
  readonly tcpCertificateArn?: string;
  readonly clock: Clock;
  readonly log: Logger;
  /** Slow full describe of everything, the safety net for changes made by hand. */
  readonly resyncMs: number;
  /** After changes, describe again this soon to see them (and again while they do not show). */
  readonly confirmMs: number;
  /** Claim changes within this window are handled in one pass (one describe). */
  readonly batchMs: number;
  /** A change made but not yet seen in a describe is not made again for this long (eventual consistency). */
  readonly expectationTimeoutMs: number;
  readonly retryBaseMs: number;
  readonly retryMaxMs: number;
  /** Calls in flight per load balancer or security group. */
  readonly concurrency: number;
  readonly random?: () => number;
}

/** The backoff key of a unit's describe calls. */
const describeKey = 'describe';

/** One call to make, with the key its backoff and expectation go by. */
interface Operation {
  readonly key: string;
  readonly what: string;
  run(): Promise<void>;
  /** Called once AWS accepted it (or said it was already so): the change is expected to show. */
  expect(): void;
  /** AWS refused it for a quota. */
  onQuota?(): void;
}

/**
 * A load balancer or a security group: reconciled on its own, never two passes at once, so one that AWS
 * throttles slows only itself.
 */
abstract class Unit {
  private timer: unknown;
  private dueAt: number | undefined;
  /** The pass in progress, if any. */
  private running: Promise<void> | undefined;
  private again = false;
  readonly backoff: OperationBackoff;
  /** Changes made and not yet seen, by key, with when they were made. */
  protected readonly expected = new Map<string, number>();

  constructor(
    readonly name: string,
    protected readonly exposer: Exposer,
    protected readonly options: ExposerOptions,
  ) {
    this.backoff = new OperationBackoff(options.clock, options.retryBaseMs, options.retryMaxMs, options.random);
  }

  /** Reconcile no later than `delayMs` from now (an earlier request wins). */
  schedule(delayMs: number): void {
    const { clock } = this.options;
    const at = clock.now() + delayMs;
    if (this.dueAt !== undefined && this.dueAt <= at) return;
    clock.clearTimeout(this.timer);
    this.dueAt = at;
    this.timer = clock.setTimeout(() => {
      this.dueAt = undefined;
      this.pass();
    }, delayMs);
  }

  cancel(): void {
    this.options.clock.clearTimeout(this.timer);
    this.dueAt = undefined;
  }

  /**
   * A leadership term begins: the changes an earlier term made and never saw, and the calls it was waiting to
   * retry, are forgotten (another leader may have acted since); its first describe decides what to do.
   */
  beginTerm(): void {
    this.expected.clear();
    this.backoff.retain(new Set());
  }

  /** The pass in progress, if any. */
  get current(): Promise<void> | undefined {
    return this.running;
  }

  private pass(): void {
    if (!this.exposer.active) return;
    if (this.running !== undefined) {
      this.again = true;
      return;
    }
    // A pass belongs to the term it began in: once that ends, its calls are abandoned and none is sent.
    const term = this.exposer.term;
    this.running = this.reconcile(term)
      .catch((error: unknown) => {
        if (term.aborted) {
          this.abandoned(error, `reconcile ${this.name}`);
          return;
        }
        this.options.log.error({ err: error, unit: this.name }, 'AWS reconcile failed');
        this.schedule(this.options.retryMaxMs);
      })
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.schedule(0);
        }
      });
  }

  /** Observe (describe), diff, apply: every call within `term`. */
  protected abstract reconcile(term: AbortSignal): Promise<void>;

  /** Runs a describe under its own backoff; undefined when it failed, must wait, or the term ended. */
  protected async observe<T>(key: string, term: AbortSignal, describe: () => Promise<T>): Promise<T | undefined> {
    if (!this.backoff.ready(key)) {
      this.schedule(this.backoff.nextAt()! - this.options.clock.now());
      return undefined;
    }
    try {
      const observed = await describe();
      this.backoff.succeeded(key);
      return observed;
    } catch (error) {
      if (term.aborted) {
        this.abandoned(error, `describe ${this.name}`);
        return undefined;
      }
      const delay = this.backoff.failed(key);
      this.logFailure(error, `describe ${this.name}`, delay);
      this.schedule(delay);
      return undefined;
    }
  }

  /** Whether a change is still expected to show (made recently and not yet seen). */
  protected pending(key: string): boolean {
    const at = this.expected.get(key);
    if (at === undefined) return false;
    if (this.options.clock.now() - at < this.options.expectationTimeoutMs) return true;
    this.expected.delete(key);
    return false;
  }

  /**
   * Runs the operations that are not waiting out a backoff or an earlier change, a few at a time. A
   * failure is the operation's own: it backs off with jitter and the others go on. Once `term` ends none
   * is sent, and one on its way is abandoned, not retried.
   */
  protected async apply(operations: readonly Operation[], term: AbortSignal): Promise<void> {
    const { clock, concurrency } = this.options;
    this.backoff.retain(new Set([...operations.map((operation) => operation.key), describeKey]));
    const runnable = operations.filter((operation) => !this.pending(operation.key) && this.backoff.ready(operation.key));
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < runnable.length && !term.aborted) {
        const operation = runnable[next++]!;
        try {
          await operation.run();
          this.backoff.succeeded(operation.key);
          operation.expect();
          this.options.log.info({ unit: this.name, operation: operation.what }, 'AWS change made');
        } catch (error) {
          // Whatever the error (the SDK raises the failed attempt's own when the term ends between its retries).
          if (term.aborted) {
            this.abandoned(error, operation.what);
            return;
          }
          const kind = classify(error);
          if (kind === 'done') {
            this.backoff.succeeded(operation.key);
            operation.expect();
            continue;
          }
          if (kind === 'quota') operation.onQuota?.();
          const delay = this.backoff.failed(operation.key, kind === 'quota' || kind === 'error' ? 8 : 1);
          this.logFailure(error, operation.what, delay);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, runnable.length) }, worker));
    if (term.aborted) return;
    // Look again soon while changes are on their way; otherwise when the next backoff ends.
    const waits = [...(this.expected.size > 0 || runnable.length > 0 ? [clock.now() + this.options.confirmMs] : []), this.backoff.nextAt() ?? Infinity];
    const at = Math.min(...waits);
    if (at !== Infinity) this.schedule(Math.max(0, at - clock.now()));
  }

  /** A call the term's end cut short: routine at a leadership change, so said at debug level only. */
  private abandoned(error: unknown, what: string): void {
    this.options.log.debug({ err: error, unit: this.name, operation: what }, 'AWS call abandoned: the leadership term ended');
  }

  private logFailure(error: unknown, what: string, retryInMs: number): void {
    const kind = classify(error);
    const level = kind === 'throttled' || kind === 'transient' ? 'debug' : kind === 'quota' ? 'error' : 'warn';
    this.options.log[level]({ err: error, code: errorCode(error), kind, unit: this.name, operation: what, retryInMs }, 'AWS call failed; retrying');
  }
}

/** One load balancer of the pool: its listeners (and their target groups) and its health check. */
class LoadBalancerUnit extends Unit {
  dnsName: string | undefined;
  private states = new Map<number, ListenerState>();
  /** The next describe is the resync's (it also looks for helpers of ours that nothing uses). */
  private resyncDue = false;
  /** Retired, and said so once it held nothing of ours. */
  private retirementReported = false;

  constructor(
    readonly member: PoolMember,
    exposer: Exposer,
    options: ExposerOptions,
  ) {
    super(member.provider.name, exposer, options);
    this.dnsName = member.dnsName;
  }

  get provider(): LoadBalancerProvider {
    return this.member.provider;
  }

  listenerState(port: number): ListenerState {
    return this.states.get(port) ?? { exposed: false, reason: 'CreatingListener', message: 'not yet described' };
  }

  /** The slow resync (and a new leader's first pass): reconcile now, with the resync's describe. */
  resync(): void {
    this.resyncDue = true;
    this.schedule(0);
  }

  protected async reconcile(term: AbortSignal): Promise<void> {
    const resync = this.resyncDue;
    this.resyncDue = false;
    const snapshot = await this.observe(describeKey, term, () => this.provider.describe(resync, term));
    if (snapshot === undefined) {
      this.resyncDue ||= resync;
      return;
    }
    this.dnsName ??= snapshot.dnsName;
    const desired = this.exposer.desiredListeners(this.name);
    this.settle(snapshot);
    // Every listener it has (and the fixed one it will have) counts against its quota, and a port it
    // listens on is not free there; its first describe, or one that went away, may let a waiting session in.
    const listening = new Set([...snapshot.listeners.keys(), ...this.exposer.fixedPorts(this.name)]);
    if (this.exposer.claims.setListeners(this.name, listening)) this.exposer.announce({ kind: 'room' });
    const diff = diffListeners(desired, snapshot);
    for (const port of diff.conflicts) {
      this.options.log.warn({ loadBalancer: this.name, port }, 'a listener Manticore did not create holds a wanted port; it is left alone');
    }
    this.publish(desired, snapshot, new Set(diff.conflicts));
    if (this.member.retired === true) this.reportRetirement(snapshot);
    await this.apply(diff.actions.map((action) => this.operation(action, snapshot, term)), term);
  }

  /** Tells the operator when a retired load balancer holds nothing of ours any more: it may leave the configuration. */
  private reportRetirement(snapshot: LoadBalancerSnapshot): void {
    const left = [...snapshot.listeners.values()].filter((listener) => listener.owned).length + snapshot.helpers.size;
    if (left === 0 && !this.retirementReported) {
      this.options.log.info({ loadBalancer: this.name }, 'retired load balancer holds no listener or target group of Manticore\'s any more: remove it from aws.loadBalancers');
    }
    this.retirementReported = left === 0;
  }

  /** Forgets expected changes that a describe now shows. */
  private settle(snapshot: LoadBalancerSnapshot): void {
    for (const key of [...this.expected.keys()]) {
      const separator = key.indexOf(':');
      const kind = key.slice(0, separator);
      const subject = key.slice(separator + 1);
      const listener = snapshot.listeners.get(Number(subject));
      const shown =
        kind === 'create' ? listener !== undefined
        : kind === 'delete' ? listener === undefined || !listener.owned
        : kind === 'helper' ? !snapshot.helpers.has(Number(subject))
        : !snapshot.healthCheckDrift.includes(subject);
      if (shown) this.expected.delete(key);
    }
  }

  /** The call that carries out an action, made within `term`. */
  private operation(action: ListenerAction, snapshot: LoadBalancerSnapshot, term: AbortSignal): Operation {
    const { provider } = this;
    const expect = (key: string) => (): void => void this.expected.set(key, this.options.clock.now());
    switch (action.kind) {
      case 'create': {
        const key = `create:${action.spec.port}`;
        return {
          key,
          what: `create listener ${this.name}:${action.spec.port} (${action.spec.protocol} → ${action.spec.targetPort})`,
          run: () => provider.createListener(action.spec, term),
          expect: expect(key),
          onQuota: () => {
            // AWS holds fewer than the configured quota: no more ports go to this load balancer than it has now.
            const quota = snapshot.listeners.size;
            this.exposer.claims.lowerQuota(this.name, quota);
            this.options.log.error(
              { loadBalancer: this.name, listeners: quota, configuredQuota: this.member.listenerQuota },
              'AWS refused a listener below the configured listener quota; lowering it until restart (fix aws.loadBalancers[].listenerQuota)',
            );
          },
        };
      }
      case 'delete': {
        const key = `delete:${action.listener.port}`;
        return { key, what: `delete listener ${this.name}:${action.listener.port}`, run: () => provider.deleteListener(action.listener, term), expect: expect(key) };
      }
      case 'deleteHelper': {
        const key = `helper:${action.port}`;
        return { key, what: `delete target group ${action.id}`, run: () => provider.deleteHelper(action.id, term), expect: expect(key) };
      }
      case 'repairHealthCheck': {
        const key = `health:${action.id}`;
        return { key, what: `set the health check of ${action.id}`, run: () => provider.repairHealthCheck(action.id, term), expect: expect(key) };
      }
    }
  }

  /** Each claimed port's listener state; a port whose state changed is announced (its session is looked at again). */
  private publish(desired: ReadonlyMap<number, ListenerSpec>, snapshot: LoadBalancerSnapshot, conflicts: ReadonlySet<number>): void {
    const next = new Map<number, ListenerState>();
    for (const [port, spec] of desired) {
      const listener = snapshot.listeners.get(port);
      next.set(
        port,
        matches(spec, listener)
          ? { exposed: true, reason: 'ListenerReady', message: 'listening' }
          : conflicts.has(port)
            ? { exposed: false, reason: 'PortTaken', message: 'a listener Manticore did not create holds this port' }
            : this.backoff.ready(`create:${port}`)
              ? { exposed: false, reason: 'CreatingListener', message: 'being created' }
              : { exposed: false, reason: 'ListenerRetrying', message: 'AWS refused or throttled the creation; retrying with backoff' },
      );
    }
    const previous = this.states;
    this.states = next;
    for (const [port, state] of next) {
      const before = previous.get(port);
      if (before?.exposed !== state.exposed || before?.reason !== state.reason) this.exposer.announce({ kind: 'listener', loadBalancer: this.name, port });
    }
  }
}

/** One security group: Manticore's ingress rules for the ports in use, compacted into ranges. */
class SecurityGroupUnit extends Unit {
  /** The last authorization hit the group's rule quota. */
  private atQuota = false;

  constructor(
    private readonly group: SecurityGroupRules,
    exposer: Exposer,
    options: ExposerOptions,
  ) {
    super(`security group ${group.groupId}`, exposer, options);
  }

  protected async reconcile(term: AbortSignal): Promise<void> {
    const observed = await this.observe(describeKey, term, () => this.group.describe(term));
    if (observed === undefined) return;
    const { cidrs, maxRanges } = this.options;
    const openPorts = this.exposer.openPorts();
    const desired = desiredRules(compactRanges(openPorts, maxRanges), cidrs);
    const diff = diffRules(desired, observed.owned, observed.others);
    const wanted = new Set(diff.authorize.map((rule) => `authorize:${ruleKey(rule)}`));
    const revoking = new Set(diff.revoke.map((rule) => `revoke:${rule.id}`));
    for (const key of [...this.expected.keys()]) if (!wanted.has(key) && !revoking.has(key)) this.expected.delete(key);
    const expect = (key: string) => (): void => void this.expected.set(key, this.options.clock.now());
    // New ranges open before the ones they replace close, so a port in use is never shut, even for a moment;
    // only a group at its rule quota closes first, to make room.
    const revokeNow = this.atQuota ? diff.revoke : closableNow(diff.revoke, observed.owned, observed.others, openPorts);
    this.atQuota = false;
    await this.apply(
      [
        ...revokeNow.map((rule) => ({ key: `revoke:${rule.id}`, what: `revoke ${ruleKey(rule)} in ${this.group.groupId}`, run: () => this.group.revoke(rule, term), expect: expect(`revoke:${rule.id}`) })),
        ...diff.authorize.map((rule) => ({
          key: `authorize:${ruleKey(rule)}`,
          what: `authorize ${ruleKey(rule)} in ${this.group.groupId}`,
          run: () => this.group.authorize(rule, term),
          expect: expect(`authorize:${ruleKey(rule)}`),
          onQuota: () => void (this.atQuota = true),
        })),
      ],
      term,
    );
  }
}

/**
 * Keeps the AWS side equal to the claims: on each load balancer of the pool a listener for every port
 * claimed on it (plus the fixed HTTP listener), and in each security group Manticore's ingress rules for
 * those ports; everything of ours beyond that is removed, and nothing without our marker is touched.
 * AWS has no watch: each pass describes, diffs and applies, on claim changes (batched), after its own
 * changes until they show, and on a slow resync. Only the leader runs passes (`resume`/`pause`), and each
 * pass's calls belong to the leadership term it began in.
 */
export class Exposer implements ListenerStates {
  private readonly loadBalancers = new Map<string, LoadBalancerUnit>();
  private readonly groups: SecurityGroupUnit[];
  private readonly subject = new Subject<ExposureChange>();
  readonly changes: Observable<ExposureChange> = this.subject.asObservable();
  private book: ClaimBook | undefined;
  private resyncTimer: unknown;
  /** Aborted when the leadership term ends (and while none has begun): the term's AWS calls are abandoned. */
  private termEnd = new AbortController();

  constructor(private readonly options: ExposerOptions) {
    this.termEnd.abort();
    for (const member of options.pool) this.loadBalancers.set(member.provider.name, new LoadBalancerUnit(member, this, options));
    this.groups = options.securityGroups.map((group) => new SecurityGroupUnit(group, this, options));
  }

  /** Whether this process leads: passes run and AWS calls are made. */
  get active(): boolean {
    return !this.term.aborted;
  }

  /** The current leadership term's signal: aborted once it ends. */
  get term(): AbortSignal {
    return this.termEnd.signal;
  }

  /** The pool, for the port allocator: the load balancers that take ports (not the retired ones). */
  get pool(): ReadonlyArray<{ name: string; listenerQuota: number }> {
    return this.options.pool.filter((member) => member.retired !== true).map((member) => ({ name: member.provider.name, listenerQuota: member.listenerQuota }));
  }

  get claims(): ClaimBook {
    if (this.book === undefined) throw new Error('the exposer has no claims to work from: bind() it to the port allocator first');
    return this.book;
  }

  bind(book: ClaimBook): void {
    this.book = book;
  }

  /**
   * Learns the DNS name of every load balancer not configured with one, before any session gets an
   * address; a load balancer that does not exist stops start-up. One read each: every replica does this,
   * while the full describe (listeners, target groups, tags) is the leader's first pass.
   */
  async start(attempts = 5): Promise<void> {
    const { clock, retryBaseMs, retryMaxMs, random } = this.options;
    // Replicas restarted together (a rollout) are throttled together: a wait drawn whole keeps them from retrying in step.
    const backoff = new OperationBackoff(clock, retryBaseMs, retryMaxMs, random, 'full');
    for (const unit of this.loadBalancers.values()) {
      for (let attempt = 1; unit.dnsName === undefined; attempt++) {
        try {
          unit.dnsName = await unit.provider.dnsName();
        } catch (error) {
          const kind = classify(error);
          if (attempt >= attempts || (kind !== 'throttled' && kind !== 'transient')) {
            throw new Error(`describing load balancer ${unit.name} (${unit.provider.type}): ${(error as Error).message}`, { cause: error });
          }
          const delay = backoff.failed(unit.name);
          this.options.log.debug({ err: error, code: errorCode(error), kind, unit: unit.name, attempt, retryInMs: delay }, 'describing a load balancer at start-up failed; retrying');
          await new Promise<void>((resolve) => clock.setTimeout(resolve, delay));
        }
      }
    }
  }

  /** The host users reach a load balancer by. */
  dnsName(loadBalancer: string): string | undefined {
    return this.loadBalancers.get(loadBalancer)?.dnsName;
  }

  listenerState(loadBalancer: string, port: number): ListenerState {
    const unit = this.loadBalancers.get(loadBalancer);
    if (unit === undefined) return { exposed: false, reason: 'UnknownLoadBalancer', message: `${loadBalancer} is not in the pool` };
    return unit.listenerState(port);
  }

  /** This process leads: reconcile everything now and on every resync. */
  resume(): void {
    if (this.active) return;
    this.termEnd = new AbortController();
    // Every call on its way listens for the term's end: up to `concurrency` per unit, past Node's warning at 10.
    setMaxListeners(0, this.termEnd.signal);
    for (const unit of this.units()) unit.beginTerm();
    this.options.log.info({ loadBalancers: this.loadBalancers.size, securityGroups: this.groups.length }, 'reconciling AWS load balancers');
    this.resync();
  }

  /** This process no longer leads: no AWS call is sent any more, and those on their way are abandoned. */
  pause(): void {
    this.termEnd.abort();
    this.options.clock.clearTimeout(this.resyncTimer);
    for (const unit of this.units()) unit.cancel();
  }

  /** Resolves once no pass is running (those already due on the clock are not waited for). */
  async whenIdle(): Promise<void> {
    for (let passes = this.passesRunning(); passes.length > 0; passes = this.passesRunning()) await Promise.all(passes);
  }

  private passesRunning(): Array<Promise<void>> {
    return this.units().flatMap((unit) => unit.current ?? []);
  }

  /** The claims on a load balancer changed: its listeners and the security groups follow, batched. */
  claimsChanged(loadBalancer: string): void {
    if (!this.active) return;
    this.loadBalancers.get(loadBalancer)?.schedule(this.options.batchMs);
    for (const group of this.groups) group.schedule(this.options.batchMs);
  }

  /** What should listen on a load balancer: every port claimed on it, and the fixed HTTP listener if it carries it. */
  desiredListeners(loadBalancer: string): Map<number, ListenerSpec> {
    const protocol: ListenerProtocol = this.options.tcpCertificateArn === undefined ? 'TCP' : 'TLS';
    const certificate = this.options.tcpCertificateArn === undefined ? {} : { certificateArn: this.options.tcpCertificateArn };
    const desired = new Map<number, ListenerSpec>();
    for (const port of this.claims.claimedPorts(loadBalancer)) desired.set(port, { port, protocol, targetPort: port, ...certificate });
    const http = this.options.httpListener;
    if (http?.loadBalancer === loadBalancer) desired.set(http.spec.port, http.spec);
    return desired;
  }

  /** The fixed listener ports a load balancer carries. */
  fixedPorts(loadBalancer: string): number[] {
    const http = this.options.httpListener;
    return http?.loadBalancer === loadBalancer ? [http.spec.port] : [];
  }

  /** Every port our security-group rules open: the claimed ones and the fixed listener's (and its target's). */
  openPorts(): number[] {
    const http = this.options.httpListener?.spec;
    return [...this.claims.allClaimedPorts(), ...(http ? [http.port, http.targetPort] : [])];
  }

  announce(change: ExposureChange): void {
    this.subject.next(change);
  }

  private resync(): void {
    if (!this.active) return;
    for (const unit of this.loadBalancers.values()) unit.resync();
    for (const group of this.groups) group.schedule(0);
    this.resyncTimer = this.options.clock.setTimeout(() => this.resync(), this.options.resyncMs);
  }

  private units(): Unit[] {
    return [...this.loadBalancers.values(), ...this.groups];
  }
}
