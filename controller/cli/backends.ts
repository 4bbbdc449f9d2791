import fs from 'node:fs';
import path from 'node:path';
import type { ManticoreConfig } from '../config/config.js';
import type { Logger } from '../util/log.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import { LogFiles } from '../scheduler/log-files.js';
import { LocalScheduler, allocationLogsDir } from '../scheduler/local-scheduler.js';
import { connectNomad } from '../scheduler/nomad-http.js';
import { NomadTaskLogs } from '../scheduler/nomad-logs.js';
import { NomadScheduler } from '../scheduler/nomad-scheduler.js';
import type { TaskLogs } from '../scheduler/task-logs.js';
import type { NomadJobOptions } from '../scheduler/nomad-job.js';
import { ConsulStore } from '../store/consul-store.js';
import { EmbeddedStore } from '../store/embedded-store.js';
import type { LockService } from '../store/lock.js';
import type { Store } from '../store/store.js';

export interface StoreBackend {
  readonly store: Store;
  /** Leases for leader election; only Consul has them (the embedded store's process always leads). */
  readonly locks: LockService | undefined;
}

/** The store the configuration names: a local SQLite file, or Consul KV. */
export function createStore(config: ManticoreConfig, log: Logger): StoreBackend {
  // Each store names its own component (consul-store, embedded-store).
  if (config.store.backend === 'consul') {
    const { address, token, datacenter, namespace, tls } = config.store.consul;
    const store = new ConsulStore({ address, token, datacenter, namespace, tls, log });
    return { store, locks: store };
  }
  fs.mkdirSync(path.dirname(path.resolve(config.store.path)), { recursive: true });
  return { store: EmbeddedStore.open(config.store.path, { log }), locks: undefined };
}

/** The scheduler the configuration names: local processes, or Nomad. Not started yet. */
export function createScheduler(config: ManticoreConfig, log: Logger): Scheduler {
  const schedulerLog = log.child({ component: 'scheduler' });
  const { restart } = config.scheduler;
  if (config.scheduler.backend === 'nomad') {
    const { address, token, region, namespace, tls, requestTimeoutSeconds } = config.scheduler.nomad;
    return new NomadScheduler({ address, token, region, namespace, tls, job: nomadJobOptions(config), log: schedulerLog, requestTimeoutMs: requestTimeoutSeconds * 1000 });
  }
  return new LocalScheduler({
    stateDir: config.scheduler.stateDir,
    workDir: path.resolve(config.scheduler.workDir),
    log: schedulerLog,
    restart: { attempts: restart.attempts, intervalMs: restart.intervalSeconds * 1000, delayMs: restart.delaySeconds * 1000 },
    logs: { maxFiles: config.scheduler.logs.maxFiles, maxFileBytes: config.scheduler.logs.maxFileSizeMB * 1024 * 1024 },
  });
}

/**
 * Where the front end reads task logs: the embedded scheduler's files (on this machine, as the front end
 * runs beside it), or Nomad's client fs logs API over the configured agent, token and TLS (a front end
 * running alone needs no scheduler for it). `close` ends every read in flight.
 */
export function createTaskLogs(config: ManticoreConfig, log: Logger): { logs: TaskLogs; close(): void } {
  const logsLog = log.child({ component: 'task-logs' });
  if (config.scheduler.backend === 'nomad') {
    const { address, token, region, namespace, tls, requestTimeoutSeconds } = config.scheduler.nomad;
    const abort = new AbortController();
    const { http, agent } = connectNomad({ address, token, region, namespace, tls, requestTimeoutMs: requestTimeoutSeconds * 1000, signal: abort.signal });
    return {
      logs: new NomadTaskLogs({ http, log: logsLog }),
      close: () => {
        abort.abort();
        agent.destroy();
      },
    };
  }
  const stateDir = config.scheduler.stateDir;
  return { logs: new LogFiles({ dirOf: (allocId) => allocationLogsDir(stateDir, allocId), log: logsLog }), close: () => undefined };
}

/** How sessions' Nomad jobs are shaped, from the configuration (also used by `manticore render-job`). */
export function nomadJobOptions(config: ManticoreConfig): NomadJobOptions {
  const { nomad, restart } = config.scheduler;
  return {
    region: nomad.region,
    namespace: nomad.namespace,
    datacenters: nomad.datacenters,
    nodePool: nomad.nodePool,
    constraints: nomad.constraints.map(({ attribute, operator, value }) => ({ LTarget: attribute, Operand: operator, RTarget: value })),
    priority: nomad.priority,
    restart: { attempts: restart.attempts, intervalMs: restart.intervalSeconds * 1000, delayMs: restart.delaySeconds * 1000 },
    healthyDeadlineMs: nomad.healthyDeadlineSeconds * 1000,
    checkIntervalMs: nomad.checkIntervalSeconds * 1000,
    checkTimeoutMs: nomad.checkTimeoutSeconds * 1000,
  };
}
