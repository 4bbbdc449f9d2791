import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { SessionRecord, SessionStatus } from '../../controller/api/types.js';
import type { Frontend } from '../../controller/frontend/server.js';
import { LogFiles } from '../../controller/scheduler/log-files.js';
import { LocalScheduler, allocationLogsDir } from '../../controller/scheduler/local-scheduler.js';
import { connectNomad } from '../../controller/scheduler/nomad-http.js';
import { NomadTaskLogs } from '../../controller/scheduler/nomad-logs.js';
import { NomadScheduler } from '../../controller/scheduler/nomad-scheduler.js';
import type { Scheduler } from '../../controller/scheduler/scheduler.js';
import type { TaskLogs } from '../../controller/scheduler/task-logs.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { silentLogger } from '../../controller/util/log.js';
import { WorkloadRecorder, contractRequest } from '../contract/scheduler-contract.js';
import { NomadDouble } from '../fakes/nomad.js';
import { frontendKeys as keys, testFrontend } from '../support/frontend.js';
import { LogClient } from '../support/log-client.js';
import { commandTemplate } from '../support/templates.js';
import { waitFor } from '../support/wait.js';

const FOLLOWERS = 200;
/** Each tick writes 10 lines of 100 bytes: about 50 kB/s, 10 MB/s to the followers together. */
const CHATTER = "const line = 'x'.repeat(99) + '\\n'; setInterval(() => { for (let i = 0; i < 10; i++) process.stdout.write(line); }, 20)";
/** Bytes each follower must receive between the two measurements (about 10 s of chatter). */
const STREAMED_PER_FOLLOWER = 512 * 1024;
const MB = 1024 * 1024;

/** The collector, on demand (mocha runs without --expose-gc). */
function collectGarbage(): void {
  v8.setFlagsFromString('--expose-gc');
  (vm.runInNewContext('gc') as () => void)();
}

function memory(): { heapMB: number; rssMB: number } {
  collectGarbage();
  collectGarbage();
  const usage = process.memoryUsage();
  return { heapMB: usage.heapUsed / MB, rssMB: usage.rss / MB };
}

/** A scheduler running the chatty task, and the task logs the front end reads, as a deployment wires them. */
interface Backend {
  readonly scheduler: Scheduler;
  readonly logs: TaskLogs;
  close(): Promise<void>;
}

async function embedded(stateDir: string): Promise<Backend> {
  const scheduler = new LocalScheduler({ stateDir, workDir: process.cwd(), log: silentLogger(), checkIntervalMs: 50, killTimeoutMs: 2_000 });
  await scheduler.start();
  return { scheduler, logs: new LogFiles({ dirOf: (allocId) => allocationLogsDir(stateDir, allocId), log: silentLogger() }), close: () => scheduler.close() };
}

async function nomad(): Promise<Backend> {
  const double = await NomadDouble.start({ port: 0, workDir: process.cwd(), log: silentLogger() });
  const scheduler = new NomadScheduler({
    address: double.address,
    job: { datacenters: ['dc1'], restart: { attempts: 3, intervalMs: 60_000, delayMs: 100 }, healthyDeadlineMs: 30_000, checkIntervalMs: 100, checkTimeoutMs: 1_000 },
    log: silentLogger(),
  });
  await scheduler.start();
  // The front end's own client of the agent, as createTaskLogs builds it.
  const abort = new AbortController();
  const { http: api, agent } = connectNomad({ address: double.address, requestTimeoutMs: 10_000, signal: abort.signal });
  return {
    scheduler,
    logs: new NomadTaskLogs({ http: api, log: silentLogger() }),
    close: async () => {
      abort.abort();
      agent.destroy();
      await scheduler.close();
      await double.stop();
    },
  };
}

/**
 * 200 users follow one chatty task's log through the front end at once, on each backend (the embedded
 * scheduler's files; Nomad's logs API, the double serving it in this same process): the front end
 * streams every byte to everyone while its memory stays flat. The heap is measured after full
 * collections, before and after each follower has received another 512 kB (some 100 MB in all); the
 * bound is generous, as the test shares two cores with others. Figures seen here (the whole test
 * process: front end, followers, scheduler, and on Nomad the double), 100 MB streamed on each: embedded
 * heap 24.8 → 24.6 MB, RSS 131–133 → 133–134 MB; Nomad heap 31.1 → 31.1 MB, RSS 168–183 → 167–168 MB.
 */
for (const [name, makeBackend] of [['the embedded default', embedded], ['Nomad (the double)', nomad]] as const) {
  describe(`200 followers of a chatty task on ${name}`, function () {
    this.timeout(180_000);
    let stateDir: string;
    let backend: Backend;
    let store: EmbeddedStore;
    let frontend: Frontend;
    let recorder: WorkloadRecorder | undefined;
    const clients: LogClient[] = [];
    const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

    before(async () => {
      stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-log-followers-'));
      backend = await makeBackend(stateDir);
      store = EmbeddedStore.open(':memory:');
      frontend = testFrontend(store, { backend: backend.scheduler.kind, sessionsPerUser: FOLLOWERS, logs: { source: backend.logs, streamsPerUser: 2 } });
    });

    after(async () => {
      for (const client of clients.splice(0)) client.close();
      recorder?.close();
      await frontend?.stop();
      await store?.close();
      await backend?.close();
      agent.destroy();
      fs.rmSync(stateDir, { recursive: true, force: true });
    });

    it('streams everything to everyone while the front end’s memory stays flat', async () => {
      recorder = new WorkloadRecorder(backend.scheduler);
      const job = backend.scheduler.render(contractRequest(commandTemplate([{ name: 'core', script: CHATTER }]), 'chattysession1'));
      await backend.scheduler.register(job);
      const running = await recorder.until(job.id, 'the chatty task running', (workload) => workload.allocation?.tasks.core?.state === 'running', 30_000);
      const base = await frontend.start('127.0.0.1', 0);
      // One session per follower (each user may hold only a couple of streams), all on the one workload.
      const now = new Date().toISOString();
      const ids: string[] = [];
      for (let n = 0; n < FOLLOWERS; n++) {
        const id = `chattysession${String(n).padStart(4, '0')}`;
        const record: SessionRecord = { metadata: { id, owner: `user-${n}`, createdAt: now, generation: 1 }, spec: { template: 'demo', parameters: { coreVersion: '8.2.0', hmiType: 'generic' } } };
        const status: SessionStatus = { phase: 'Ready', observedGeneration: 1, conditions: [], endpoints: {}, events: [], allocationId: running.allocation!.id };
        await store.transaction([
          { verb: 'put', key: keys.session(id), value: JSON.stringify(record) },
          { verb: 'put', key: keys.status(id), value: JSON.stringify(status) },
        ]);
        ids.push(id);
      }
      await waitFor('every session in the cache', () => ids.every((id) => frontend.sessions.statuses.cache.get(id)?.value?.allocationId !== undefined), 20_000);

      ids.forEach((id, n) => clients.push(new LogClient(`${base}/api/v1/sessions/${id}/logs?follow=true&tail=0`, { 'x-manticore-user': `user-${n}` }, { keepBody: false, agent })));
      await waitFor('every follower receiving', () => clients.every((client) => client.status === 200 && client.received > 10 * 1024), 60_000, 100);
      const before = memory();
      const receivedBefore = clients.map((client) => client.received);
      await waitFor('another 512 kB to every follower', () => clients.every((client, n) => client.received - receivedBefore[n]! >= STREAMED_PER_FOLLOWER), 150_000, 100);
      const after = memory();
      const streamedMB = clients.reduce((sum, client, n) => sum + client.received - receivedBefore[n]!, 0) / MB;
      const figures = `heap ${before.heapMB.toFixed(1)} → ${after.heapMB.toFixed(1)} MB, RSS ${before.rssMB.toFixed(0)} → ${after.rssMB.toFixed(0)} MB, ${streamedMB.toFixed(0)} MB streamed to ${FOLLOWERS} followers`;
      process.stdout.write(`      ${figures}\n`);
      assert.ok(clients.every((client) => !client.ended), 'every stream is still open');
      assert.ok(after.heapMB - before.heapMB < 16, `the heap grew: ${figures}`);
      assert.ok(streamedMB > 90, figures);
    });
  });
}
