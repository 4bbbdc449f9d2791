import assert from 'node:assert/strict';
import path from 'node:path';
import { loadTemplates } from '../../controller/api/templates.js';
import type { SessionTemplate } from '../../controller/api/types.js';
import { specHashOf } from '../../controller/scheduler/local-scheduler.js';
import {
  EPHEMERAL_DISK_MB,
  LOG_CONFIG,
  SPEC_HASH_META_KEY,
  nomadJobOptionsProblems,
  renderNomadJob,
  type NomadJob,
  type NomadJobOptions,
} from '../../controller/scheduler/nomad-job.js';
import { BACKOFF_MAX_MS, backoffDelay, parseEventLine } from '../../controller/scheduler/nomad-events.js';
import {
  NomadScheduler,
  allocationOf,
  capacityGains,
  currentAllocation,
  describeAllocMetric,
  placementFailureOf,
  workloadOf,
  type NomadAllocStub,
  type NomadEvalStub,
  type NomadJobStub,
  type NomadNodeStub,
} from '../../controller/scheduler/nomad-scheduler.js';
import { RenderError, SESSION_META_KEY, jobIdFor, type WorkloadRequest } from '../../controller/scheduler/scheduler.js';
import { silentLogger } from '../../controller/util/log.js';

const templates = loadTemplates(path.resolve(__dirname, '../../../manifests/templates'));
const sdl = templates.get('sdl') as SessionTemplate;
const demo = templates.get('demo') as SessionTemplate;

const options: NomadJobOptions = {
  datacenters: ['dc1'],
  restart: { attempts: 2, intervalMs: 300_000, delayMs: 5_000 },
  healthyDeadlineMs: 600_000,
  checkIntervalMs: 5_000,
  checkTimeoutMs: 2_000,
};

const SECOND = 1_000_000_000;

/** A request the way admission builds it: secret hostnames for http/ws, a public port for tcp. */
function requestFor(template: SessionTemplate, sessionId = 'abcdefghijklmnop', parameters: Record<string, string> = {}): WorkloadRequest {
  const endpoints: Record<string, { url: string; host: string; port: number }> = {};
  for (const service of template.spec.services) {
    if (service.expose === 'tcp') {
      endpoints[service.name] = { url: 'tcp://tcp.example.test:20001', host: 'tcp.example.test', port: 20001 };
    } else {
      const scheme = service.expose === 'ws' ? 'wss' : 'https';
      endpoints[service.name] = { url: `${scheme}://${service.name}-token.example.test/`, host: `${service.name}-token.example.test`, port: 443 };
    }
  }
  const resolved: Record<string, string> = {};
  for (const parameter of template.spec.parameters) resolved[parameter.name] = parameters[parameter.name] ?? parameter.default;
  return { jobId: jobIdFor(sessionId), sessionId, template, parameters: resolved, endpoints };
}

function withEnv(template: SessionTemplate, env: Record<string, string>): SessionTemplate {
  const copy = structuredClone(template);
  const task = copy.spec.backends.nomad?.tasks[0];
  assert.ok(task);
  task.env = { ...task.env, ...env };
  return copy;
}

/**
 * What the Generic HMI image's start script (smartdevicelink/manticore-images, hmis/generic/setup.sh) makes
 * of its environment: BROKER_ADDR split with `cut` (protocol before the first ":", then host and port of the
 * third "/"-separated field, the whole field when it has no ":"), and PYTHON_ADDRESS put in place of
 * ws://127.0.0.1:8081 by `perl -pi -e "s/…/${PYTHON_ADDRESS}/g"`, which fails, leaving that default, when
 * the address holds an unescaped "/".
 */
function hmiStartScript(env: Record<string, string>): { coreProtocol: string; coreHost: string; corePort: string; pythonUrl: string } {
  const broker = env.BROKER_ADDR ?? '';
  const hostPort = broker.split('/')[2] ?? '';
  const python = env.PYTHON_ADDRESS ?? '';
  return {
    coreProtocol: broker.split(':')[0] ?? '',
    coreHost: hostPort.split(':')[0] ?? '',
    corePort: hostPort.includes(':') ? (hostPort.split(':')[1] ?? '') : hostPort,
    pythonUrl: /(^|[^\\])\//.test(python) ? 'ws://127.0.0.1:8081' : python.replace(/\\\//g, '/'),
  };
}

/** Nomad's JSON job fields (api-docs/json-jobs): any other key in the rendered job is a bug. */
const KNOWN_FIELDS: Record<string, string[]> = {
  job: ['ID', 'Name', 'Type', 'Namespace', 'Region', 'Datacenters', 'NodePool', 'Priority', 'Meta', 'Constraints', 'Update', 'TaskGroups'],
  group: ['Name', 'Count', 'Networks', 'Services', 'RestartPolicy', 'ReschedulePolicy', 'Migrate', 'EphemeralDisk', 'Tasks'],
  network: ['Mode', 'DynamicPorts'],
  port: ['Label', 'To'],
  service: ['Name', 'PortLabel', 'Provider', 'Checks'],
  check: ['Name', 'Type', 'Path', 'Interval', 'Timeout'],
  task: ['Name', 'Driver', 'Config', 'Env', 'Meta', 'Resources', 'LogConfig'],
  update: ['HealthCheck', 'MinHealthyTime', 'HealthyDeadline', 'ProgressDeadline', 'AutoRevert', 'MaxParallel'],
  restart: ['Attempts', 'Interval', 'Delay', 'Mode'],
  reschedule: ['Attempts', 'Unlimited'],
  migrate: ['MaxParallel', 'HealthCheck', 'MinHealthyTime', 'HealthyDeadline'],
  resources: ['CPU', 'MemoryMB'],
  constraint: ['LTarget', 'RTarget', 'Operand'],
};

function assertKnownFields(job: NomadJob): void {
  const check = (kind: string, value: object): void => {
    for (const key of Object.keys(value)) assert.ok(KNOWN_FIELDS[kind]?.includes(key), `${kind} has an unknown field ${key}`);
  };
  check('job', job);
  check('update', job.Update);
  for (const constraint of job.Constraints ?? []) check('constraint', constraint);
  for (const group of job.TaskGroups) {
    check('group', group);
    check('restart', group.RestartPolicy);
    check('reschedule', group.ReschedulePolicy);
    check('migrate', group.Migrate);
    for (const network of group.Networks) {
      check('network', network);
      for (const port of network.DynamicPorts) check('port', port);
    }
    for (const service of group.Services) {
      check('service', service);
      for (const serviceCheck of service.Checks ?? []) check('check', serviceCheck);
    }
    for (const task of group.Tasks) {
      check('task', task);
      check('resources', task.Resources);
    }
  }
}

describe('Nomad job rendering', () => {
  describe('the sdl template (docker, bridge network)', () => {
    const request = requestFor(sdl);
    const { Job: job } = renderNomadJob(request, options);
    const group = job.TaskGroups[0]!;
    const task = (name: string) => group.Tasks.find((candidate) => candidate.Name === name)!;

    it('is one service job with one task group, marked with the session and its spec hash', () => {
      assert.equal(job.ID, 'manticore-abcdefghijklmnop');
      assert.equal(job.Name, job.ID);
      assert.equal(job.Type, 'service');
      assert.deepEqual(job.Datacenters, ['dc1']);
      assert.equal(job.Priority, 50);
      assert.deepEqual(Object.keys(job.Meta).sort(), [SESSION_META_KEY, SPEC_HASH_META_KEY]);
      assert.equal(job.Meta[SESSION_META_KEY], 'abcdefghijklmnop');
      assert.match(job.Meta[SPEC_HASH_META_KEY] ?? '', /^[0-9a-f]{64}$/);
      assert.equal(job.TaskGroups.length, 1);
      assert.equal(group.Name, 'session');
      assert.equal(group.Count, 1);
      assert.deepEqual(group.Tasks.map((t) => t.Name), ['core', 'hmi']);
      // The tasks shadow the spec hash, so its change alone does not reach them (Nomad would replace the allocation).
      for (const t of group.Tasks) assert.deepEqual(t.Meta, { [SPEC_HASH_META_KEY]: '' });
      assertKnownFields(job);
      for (const absent of ['Namespace', 'Region', 'NodePool', 'Constraints'] as const) assert.equal(job[absent], undefined, `${absent} is left to Nomad`);
    });

    it('maps every SDL port and the HMI port To the container port in a bridge network', () => {
      assert.deepEqual(group.Networks, [
        {
          Mode: 'bridge',
          DynamicPorts: [
            { Label: 'broker', To: 9000 },
            { Label: 'tcp', To: 12345 },
            { Label: 'file', To: 3001 },
            { Label: 'log', To: 8888 },
            { Label: 'policy', To: 9898 },
            { Label: 'wsServer', To: 2020 },
            { Label: 'store', To: 3000 },
            { Label: 'python', To: 8081 },
            { Label: 'hmi', To: 8080 },
          ],
        },
      ]);
      assert.deepEqual(task('core').Config.ports, ['broker', 'tcp', 'file', 'log', 'policy', 'wsServer', 'store', 'python']);
      assert.deepEqual(task('hmi').Config.ports, ['hmi']);
    });

    it('runs the images the parameters name, with the template resources and log limits', () => {
      assert.equal(task('core').Driver, 'docker');
      assert.equal(task('core').Config.image, 'smartdevicelink/manticore-sdl-core:default-8.2.0-ubuntu-update');
      assert.equal(task('hmi').Config.image, 'smartdevicelink/manticore-hmi-generic:minimal-0.13.0');
      assert.deepEqual(task('core').Resources, { CPU: 120, MemoryMB: 250 });
      assert.deepEqual(task('hmi').Resources, { CPU: 40, MemoryMB: 75 });
      for (const each of group.Tasks) assert.deepEqual(each.LogConfig, LOG_CONFIG);
      const perTaskLogMB = LOG_CONFIG.MaxFiles * LOG_CONFIG.MaxFileSizeMB;
      assert.ok(EPHEMERAL_DISK_MB > perTaskLogMB, 'Nomad requires the log storage of a task to fit in the ephemeral disk');
      assert.deepEqual(group.EphemeralDisk, { SizeMB: EPHEMERAL_DISK_MB });
      assert.equal(task('core').Env, undefined, 'no Env when the template sets none');
    });

    it("gives the HMI Core's public addresses as its image's start script reads them, also on the scheme's default port", () => {
      // The public port here is 443, which the URLs leave out.
      assert.equal(request.endpoints.broker?.url, 'wss://broker-token.example.test/');
      const env = task('hmi').Env ?? {};
      assert.equal(env.CORE_FILE_ADDR, '127.0.0.1:3001');
      assert.deepEqual(hmiStartScript(env), { coreProtocol: 'wss', coreHost: 'broker-token.example.test', corePort: '443', pythonUrl: 'wss://python-token.example.test:443' });
    });

    it('registers a Nomad service per template service, with its check', () => {
      assert.deepEqual(
        group.Services.map((service) => [service.Name, service.PortLabel, service.Provider]),
        [
          ['manticore-abcdefghijklmnop-broker', 'broker', 'nomad'],
          ['manticore-abcdefghijklmnop-tcp', 'tcp', 'nomad'],
          ['manticore-abcdefghijklmnop-file', 'file', 'nomad'],
          ['manticore-abcdefghijklmnop-log', 'log', 'nomad'],
          ['manticore-abcdefghijklmnop-policy', 'policy', 'nomad'],
          ['manticore-abcdefghijklmnop-ws-server', 'wsServer', 'nomad'],
          ['manticore-abcdefghijklmnop-store', 'store', 'nomad'],
          ['manticore-abcdefghijklmnop-python', 'python', 'nomad'],
          ['manticore-abcdefghijklmnop-hmi', 'hmi', 'nomad'],
        ],
      );
      const byLabel = new Map(group.Services.map((service) => [service.PortLabel, service]));
      assert.deepEqual(byLabel.get('broker')?.Checks, [{ Name: 'broker tcp', Type: 'tcp', Interval: 5 * SECOND, Timeout: 2 * SECOND }]);
      assert.deepEqual(byLabel.get('policy')?.Checks, [{ Name: 'policy http', Type: 'http', Path: '/', Interval: 5 * SECOND, Timeout: 2 * SECOND }]);
      assert.equal(byLabel.get('tcp')?.Checks, undefined, 'no check where the template has none');
      assert.equal(byLabel.get('file')?.Checks, undefined);
    });

    it('asks Nomad for health by checks, restarts in place, and never reschedules', () => {
      assert.deepEqual(job.Update, {
        HealthCheck: 'checks',
        MinHealthyTime: 0,
        HealthyDeadline: 600 * SECOND,
        ProgressDeadline: 0,
        AutoRevert: false,
        MaxParallel: 1,
      });
      assert.deepEqual(group.RestartPolicy, { Attempts: 2, Interval: 300 * SECOND, Delay: 5 * SECOND, Mode: 'fail' });
      assert.deepEqual(group.ReschedulePolicy, { Attempts: 0, Unlimited: false });
      // An allocation placed outside a deployment (a lost one's replacement) is judged the same way.
      assert.deepEqual(group.Migrate, { MaxParallel: 1, HealthCheck: 'checks', MinHealthyTime: 0, HealthyDeadline: 600 * SECOND });
    });

    it('carries region, namespace, node pool, constraints and priority when configured', () => {
      const { Job: placed } = renderNomadJob(request, {
        ...options,
        region: 'eu',
        namespace: 'sessions',
        nodePool: 'sdl',
        priority: 70,
        datacenters: ['dc1', 'dc2'],
        constraints: [{ LTarget: '${meta.sdl}', RTarget: 'true', Operand: '=' }],
      });
      assert.equal(placed.Region, 'eu');
      assert.equal(placed.Namespace, 'sessions');
      assert.equal(placed.NodePool, 'sdl');
      assert.equal(placed.Priority, 70);
      assert.deepEqual(placed.Datacenters, ['dc1', 'dc2']);
      assert.deepEqual(placed.Constraints, [{ LTarget: '${meta.sdl}', RTarget: 'true', Operand: '=' }]);
      assertKnownFields(placed);
      assert.notEqual(placed.Meta[SPEC_HASH_META_KEY], job.Meta[SPEC_HASH_META_KEY]);
    });
  });

  describe('the demo template (raw_exec, host network)', () => {
    const request = requestFor(demo);
    const { Job: job } = renderNomadJob(request, options);
    const group = job.TaskGroups[0]!;

    it('uses dynamic host ports without a mapping, and runs the demo commands', () => {
      assert.deepEqual(group.Networks, [{ Mode: 'host', DynamicPorts: [{ Label: 'broker' }, { Label: 'tcp' }, { Label: 'http' }] }]);
      assert.deepEqual(group.Tasks.map((task) => [task.Name, task.Driver, task.Config]), [
        ['core', 'raw_exec', { command: 'node', args: ['hack/demo/core.js'] }],
        ['hmi', 'raw_exec', { command: 'node', args: ['hack/demo/hmi.js'] }],
      ]);
      assert.deepEqual(group.Tasks[0]?.Env, { CORE_VERSION: '8.2.0' });
      assert.deepEqual(group.Tasks[1]?.Env, {
        HMI_TYPE: 'generic',
        BROKER_URL: request.endpoints.broker?.url,
        CORE_TCP_HOST: 'tcp.example.test',
        CORE_TCP_PORT: '20001',
      });
      assert.deepEqual(group.Tasks[0]?.Resources, { CPU: 100, MemoryMB: 64 });
      assert.equal(job.Update.HealthCheck, 'checks');
      assertKnownFields(job);
    });

    it('falls back to task states for health when no service has a check', () => {
      const unchecked = structuredClone(demo);
      for (const service of unchecked.spec.services) delete service.check;
      const rendered = renderNomadJob(requestFor(unchecked), options).Job;
      assert.equal(rendered.Update.HealthCheck, 'task_states');
      assert.equal(rendered.TaskGroups[0]?.Migrate.HealthCheck, 'task_states');
      assert.ok(rendered.TaskGroups[0]?.Services.every((service) => service.Checks === undefined));
    });

    it('refuses a fixed port in host mode', () => {
      const fixed = structuredClone(demo);
      const core = fixed.spec.backends.nomad?.tasks[0];
      assert.ok(core);
      core.ports.tcp = 12345;
      assert.throws(() => renderNomadJob(requestFor(fixed), options), (error: unknown) =>
        error instanceof RenderError && /port tcp must be 0 in host network mode/.test(error.message));
    });
  });

  describe('determinism and the spec hash', () => {
    it('renders the same JSON and hash whatever the key order of parameters and endpoints', () => {
      const request = requestFor(sdl);
      const reordered: WorkloadRequest = {
        ...request,
        parameters: Object.fromEntries(Object.entries(request.parameters).reverse()),
        endpoints: Object.fromEntries(Object.entries(request.endpoints).reverse()),
      };
      const first = renderNomadJob(request, options);
      const second = renderNomadJob(reordered, options);
      assert.equal(JSON.stringify(second), JSON.stringify(first));
    });

    it('hashes the canonical job without the hash itself', () => {
      const { Job: job } = renderNomadJob(requestFor(demo), options);
      const withoutHash = structuredClone(job);
      delete withoutHash.Meta[SPEC_HASH_META_KEY];
      assert.equal(job.Meta[SPEC_HASH_META_KEY], specHashOf(withoutHash));
    });

    it('changes the hash when a parameter, an endpoint or an option changes', () => {
      const request = requestFor(demo);
      const hash = (req: WorkloadRequest, opts: NomadJobOptions = options): string | undefined => renderNomadJob(req, opts).Job.Meta[SPEC_HASH_META_KEY];
      const base = hash(request);
      assert.notEqual(hash(requestFor(demo, 'abcdefghijklmnop', { coreVersion: '8.1.0' })), base);
      const broker = request.endpoints.broker!;
      assert.notEqual(hash({ ...request, endpoints: { ...request.endpoints, broker: { ...broker, url: `${broker.url}x` } } }), base);
      assert.notEqual(hash(request, { ...options, healthyDeadlineMs: 60_000 }), base);
      assert.equal(hash(request), base);
    });
  });

  describe('references', () => {
    it('refuses unknown parameters and endpoints with a RenderError naming them', () => {
      for (const reference of ['${params.noSuch}', '${endpoints.noSuch.url}', '${endpoints.broker.nope}', '${param.coreVersion}']) {
        assert.throws(
          () => renderNomadJob(requestFor(withEnv(demo, { BROKEN: reference })), options),
          (error: unknown) => error instanceof RenderError && error.message.includes(reference) && error.message.includes('task core env BROKEN'),
          reference,
        );
      }
    });

    it('refuses references in the driver config too, naming where', () => {
      const broken = structuredClone(sdl);
      const core = broken.spec.backends.nomad?.tasks[0];
      assert.ok(core);
      core.config = { ...core.config, args: ['--version', '${params.nope}'] };
      assert.throws(() => renderNomadJob(requestFor(broken), options), /task core config\.args\[1\]: unknown reference \$\{params\.nope\}/);
    });

    it('leaves Nomad runtime interpolation for Nomad to resolve', () => {
      const runtime = {
        PORT: '${NOMAD_PORT_http}',
        ADDR: 'ws://${NOMAD_ADDR_broker}/x',
        DC: '${node.datacenter}',
        KERNEL: '${attr.kernel.name}',
        RACK: '${meta.rack}',
        HOME_DIR: '${env "HOME"}',
        MIXED: '${params.coreVersion}@${NOMAD_ALLOC_ID}',
      };
      const { Job: job } = renderNomadJob(requestFor(withEnv(demo, runtime)), options);
      assert.deepEqual(job.TaskGroups[0]?.Tasks[0]?.Env, { CORE_VERSION: '8.2.0', ...runtime, MIXED: '8.2.0@${NOMAD_ALLOC_ID}' });
    });

    it('refuses a template without a nomad backend', () => {
      const embeddedOnly = structuredClone(demo);
      delete embeddedOnly.spec.backends.nomad;
      assert.throws(() => renderNomadJob(requestFor(embeddedOnly), options), (error: unknown) =>
        error instanceof RenderError && error.message === 'template demo has no nomad backend; it runs only on the embedded backend');
    });

    it('refuses a service whose port no task provides, and a port label used twice', () => {
      const orphan = structuredClone(demo);
      orphan.spec.services[0]!.port = 'nowhere';
      assert.throws(() => renderNomadJob(requestFor(orphan), options), /service hmi uses port "nowhere", which no nomad task provides/);
      const twice = structuredClone(demo);
      twice.spec.backends.nomad!.tasks[1]!.ports = { tcp: 0 };
      assert.throws(() => renderNomadJob(requestFor(twice), options), /port label "tcp" is used by two tasks/);
    });
  });
});

// ---- mapping Nomad's allocations and evaluations to workloads -----------------------------------------

const JOB_ID = 'manticore-s1';

function jobStub(overrides: Partial<NomadJobStub> = {}): NomadJobStub {
  return {
    ID: JOB_ID,
    JobModifyIndex: 100,
    ModifyIndex: 100,
    Status: 'running',
    Meta: { [SESSION_META_KEY]: 's1', [SPEC_HASH_META_KEY]: 'hash-1' },
    ...overrides,
  };
}

function allocStub(overrides: Partial<NomadAllocStub> = {}): NomadAllocStub {
  return {
    ID: 'alloc-1',
    JobID: JOB_ID,
    DesiredStatus: 'run',
    ClientStatus: 'running',
    TaskStates: {
      core: { State: 'running', Failed: false, Restarts: 0, Events: [{ Type: 'Started', Time: 2, DisplayMessage: 'Task started by client' }] },
      hmi: { State: 'running', Failed: false, Restarts: 0, Events: [{ Type: 'Received', Time: 1, DisplayMessage: 'Task received by client' }, { Type: 'Started', Time: 3, DisplayMessage: 'Task started by client' }] },
    },
    DeploymentStatus: { Healthy: true },
    AllocatedResources: {
      Shared: {
        Ports: [
          { Label: 'broker', Value: 23001, To: 9000, HostIP: '10.0.0.5' },
          { Label: 'tcp', Value: 23002, To: 12345, HostIP: '10.0.0.5' },
        ],
      },
    },
    CreateIndex: 110,
    ModifyIndex: 120,
    ...overrides,
  };
}

function evalStub(overrides: Partial<NomadEvalStub> = {}): NomadEvalStub {
  return { ID: 'eval-1', JobID: JOB_ID, Status: 'complete', FailedTGAllocs: null, CreateIndex: 100, ModifyIndex: 105, ...overrides };
}

const memoryExhausted = { session: { NodesEvaluated: 1, NodesExhausted: 1, DimensionExhausted: { memory: 1 } } };

describe('Nomad job options', () => {
  it('are checked against what Nomad refuses at registration', () => {
    assert.deepEqual(nomadJobOptionsProblems(options), []);
    assert.deepEqual(nomadJobOptionsProblems({ ...options, restart: { attempts: 2, intervalMs: 1_000, delayMs: 100 } }), [
      'restart interval must be at least 5 s, got 1000 ms',
    ]);
    assert.deepEqual(nomadJobOptionsProblems({ ...options, restart: { attempts: 3, intervalMs: 10_000, delayMs: 5_000 } }), [
      '3 restarts 5000 ms apart do not fit in a restart interval of 10000 ms',
    ]);
    assert.deepEqual(nomadJobOptionsProblems({ ...options, datacenters: [], priority: 101 }), ['datacenters is empty', 'priority must be 1–100, got 101']);
  });

  it('are refused by the scheduler before it talks to Nomad, as is an address that is no http(s) URL', () => {
    const log = silentLogger();
    const bad = { ...options, restart: { attempts: 2, intervalMs: 1_000, delayMs: 100 } };
    assert.throws(() => new NomadScheduler({ address: 'http://127.0.0.1:4646', job: bad, log }), /Nomad job options that Nomad would refuse: restart interval must be at least 5 s/);
    assert.throws(() => new NomadScheduler({ address: '127.0.0.1:4646', job: options, log }), /Nomad address "127.0.0.1:4646"/);
    assert.throws(() => new NomadScheduler({ address: 'ftp://nomad', job: options, log }), /must start with http:\/\/ or https:\/\//);
  });
});

describe('Nomad allocations and evaluations as workloads', () => {
  it('reports only jobs carrying the marker, with the spec hash from Meta', () => {
    assert.equal(workloadOf(jobStub({ Meta: { other: 'x' } }), [allocStub()], []), undefined);
    assert.equal(workloadOf(jobStub({ Meta: null }), [], []), undefined);
    assert.equal(workloadOf(jobStub({ Stop: true }), [allocStub()], []), undefined, 'a stopped job runs nothing and waits for nothing');
    const workload = workloadOf(jobStub(), [allocStub()], [evalStub()]);
    assert.equal(workload?.jobId, JOB_ID);
    assert.equal(workload?.sessionId, 's1');
    assert.equal(workload?.specHash, 'hash-1');
    assert.equal(workload?.placementFailure, undefined);
    assert.deepEqual(workload?.allocation, {
      id: 'alloc-1',
      clientStatus: 'running',
      healthy: true,
      ports: { broker: '10.0.0.5:23001', tcp: '10.0.0.5:23002' },
      tasks: {
        core: { state: 'running', failed: false, restarts: 0, lastEvent: 'Task started by client' },
        hmi: { state: 'running', failed: false, restarts: 0, lastEvent: 'Task started by client' },
      },
    });
  });

  it("picks the allocation of the job's current content: newest wanted running, else newest", () => {
    const job = jobStub();
    const old = allocStub({ ID: 'old', CreateIndex: 50 });
    assert.equal(currentAllocation(job, [old], []), undefined, 'an allocation from before the current registration runs older content');
    const stopped = allocStub({ ID: 'stopped', DesiredStatus: 'stop', ClientStatus: 'complete', CreateIndex: 130 });
    const running = allocStub({ ID: 'running', CreateIndex: 110 });
    assert.equal(currentAllocation(job, [old, running, stopped], [])?.ID, 'running');
    const failed = allocStub({ ID: 'failed', ClientStatus: 'failed', DesiredStatus: 'stop', CreateIndex: 115 });
    assert.equal(currentAllocation(job, [old, stopped, failed], [])?.ID, 'stopped', 'the newest when none is wanted running');
    assert.equal(workloadOf(job, [old], [])?.allocation, undefined);
  });

  it('counts an allocation updated in place for the current version: it names that version\'s evaluation', () => {
    const job = jobStub();
    const registration = evalStub({ ID: 'eval-current', CreateIndex: 100 });
    const earlier = evalStub({ ID: 'eval-old', CreateIndex: 40 });
    const updated = allocStub({ ID: 'updated', CreateIndex: 50, EvalID: 'eval-current' });
    assert.equal(currentAllocation(job, [updated], [registration, earlier])?.ID, 'updated');
    assert.equal(workloadOf(job, [updated], [registration])?.allocation?.id, 'updated');
    const left = allocStub({ ID: 'left', CreateIndex: 50, EvalID: 'eval-old' });
    assert.equal(currentAllocation(job, [left], [registration, earlier]), undefined, 'stopped or not yet updated: its own evaluation is older');
    const failed = allocStub({ ID: 'failed', ClientStatus: 'failed', CreateIndex: 50, EvalID: 'eval-old' });
    assert.equal(currentAllocation(job, [failed], [evalStub({ ID: 'eval-current', Status: 'pending' })]), undefined, 'not evaluated yet');
    assert.equal(currentAllocation(job, [failed], [registration])?.ID, 'failed', 'a terminal allocation the evaluation left as it is');
  });

  it("tells a late placement of an older evaluation from the current version's as events show them: without JobVersion", () => {
    const job = jobStub();
    const evals = [evalStub({ ID: 'eval-current', CreateIndex: 100 }), evalStub({ ID: 'eval-old', CreateIndex: 40 })];
    const current = allocStub({ ID: 'current', CreateIndex: 110, EvalID: 'eval-current' });
    const late = allocStub({ ID: 'late', CreateIndex: 140, EvalID: 'eval-old' });
    assert.equal(currentAllocation(job, [current, late], evals)?.ID, 'current');
  });

  it('maps health: null is unknown, a failed task or a task down after the deployment is unhealthy', () => {
    assert.equal(allocationOf(allocStub({ DeploymentStatus: null })).healthy, undefined);
    assert.equal(allocationOf(allocStub({ DeploymentStatus: { Healthy: null } })).healthy, undefined);
    assert.equal(allocationOf(allocStub({ DeploymentStatus: { Healthy: false } })).healthy, false);
    const killed = allocStub({
      TaskStates: {
        core: { State: 'pending', Failed: false, Restarts: 1, Events: [{ Type: 'Restarting', Time: 9, DisplayMessage: 'Task restarting in 5.1s' }] },
        hmi: { State: 'running', Failed: false, Restarts: 0, Events: [] },
      },
    });
    const down = allocationOf(killed);
    assert.equal(down.healthy, false, 'Nomad keeps Healthy true after a restart; the task state says otherwise');
    assert.deepEqual(down.tasks.core, { state: 'pending', failed: false, restarts: 1, lastEvent: 'Task restarting in 5.1s' });
    assert.deepEqual(down.tasks.hmi, { state: 'running', failed: false, restarts: 0 });
    const failed = allocationOf(allocStub({
      ClientStatus: 'failed',
      DeploymentStatus: { Healthy: null },
      TaskStates: { core: { State: 'dead', Failed: true, Restarts: 2, Events: [{ Type: 'Terminated', Time: 5, ExitCode: 3 }] } },
    }));
    assert.equal(failed.healthy, false);
    assert.equal(failed.clientStatus, 'failed');
    assert.equal(failed.tasks.core?.lastEvent, 'Terminated (exit code 3)', 'type and exit code when Nomad gave no message');
  });

  it('maps ports to host:port, IPv6 in brackets, and the pre-1.0 network form', () => {
    const v6 = allocationOf(allocStub({ AllocatedResources: { Shared: { Ports: [{ Label: 'http', Value: 25000, HostIP: 'fd00::5' }] } } }));
    assert.deepEqual(v6.ports, { http: '[fd00::5]:25000' });
    const legacy = allocationOf(allocStub({
      AllocatedResources: { Shared: { Ports: [], Networks: [{ IP: '127.0.0.1', DynamicPorts: [{ Label: 'http', Value: 21000 }], ReservedPorts: null }] } },
    }));
    assert.deepEqual(legacy.ports, { http: '127.0.0.1:21000' });
    assert.deepEqual(allocationOf(allocStub({ AllocatedResources: null })).ports, {});
    assert.equal(allocationOf(allocStub({ ClientStatus: 'unknown' })).clientStatus, 'pending', 'a disconnected client is no verdict');
  });

  it('reports a placement failure while a blocked evaluation waits, and clears it once placed', () => {
    const job = jobStub();
    const failedEval = evalStub({ ID: 'e1', FailedTGAllocs: memoryExhausted, CreateIndex: 100, ModifyIndex: 102 });
    const blocked = evalStub({ ID: 'e2', Status: 'blocked', CreateIndex: 101, ModifyIndex: 101 });
    assert.equal(placementFailureOf(job, [], [failedEval, blocked]), 'no node has enough memory (1 of 1 exhausted)');
    assert.equal(workloadOf(job, [], [failedEval, blocked])?.placementFailure, 'no node has enough memory (1 of 1 exhausted)');
    // A node joined: the blocked evaluation ran again and placed the allocation.
    const unblocked = { ...blocked, Status: 'complete', ModifyIndex: 130 };
    const placed = allocStub({ ID: 'a', ClientStatus: 'pending', DeploymentStatus: null, CreateIndex: 129 });
    assert.equal(placementFailureOf(job, [placed], [failedEval, unblocked]), undefined);
    assert.equal(placementFailureOf(job, [], [failedEval, unblocked]), undefined, 'the latest evaluation placed it');
    // Failures of an older version of the job do not count.
    assert.equal(placementFailureOf(jobStub({ JobModifyIndex: 200 }), [], [failedEval, blocked]), undefined);
  });

  it('reports the latest evaluation failing to place even without a blocked one, and failed evaluations', () => {
    const job = jobStub();
    assert.equal(placementFailureOf(job, [], [evalStub({ FailedTGAllocs: memoryExhausted })]), 'no node has enough memory (1 of 1 exhausted)');
    assert.equal(placementFailureOf(job, [], [evalStub({ Status: 'blocked' })]), 'waiting for capacity (a blocked evaluation is outstanding)');
    assert.equal(placementFailureOf(job, [], [evalStub({ Status: 'failed', StatusDescription: 'maximum attempts reached (5)' })]),
      'Nomad could not evaluate the job: maximum attempts reached (5)');
    assert.equal(placementFailureOf(job, [], [evalStub({ Status: 'pending' })]), undefined);
  });

  it('describes why no node fits', () => {
    assert.equal(describeAllocMetric({ NodesEvaluated: 3, NodesExhausted: 3, DimensionExhausted: { cpu: 1, memory: 2 } }),
      'no node has enough cpu (1 of 3 exhausted); no node has enough memory (2 of 3 exhausted)');
    assert.equal(describeAllocMetric({ NodesEvaluated: 2, NodesFiltered: 2, ConstraintFiltered: { '${attr.kernel.name} = windows': 2 } }),
      'constraint ${attr.kernel.name} = windows filtered 2 nodes');
    assert.equal(describeAllocMetric({ NodesEvaluated: 0, NodesAvailable: { dc1: 0 } }), 'no node is available in datacenter dc1');
    assert.equal(describeAllocMetric({ NodesEvaluated: 0 }), 'no node is eligible');
    assert.equal(describeAllocMetric({ NodesEvaluated: 1, NodesExhausted: 1, DimensionExhausted: { 'network: port collision': 1 } }),
      'network: port collision (1 of 1 nodes)');
    assert.equal(describeAllocMetric({ NodesEvaluated: 4, NodesExhausted: 4 }), 'resources exhausted on 4 of 4 nodes');
  });
});

describe('Nomad watch timing', () => {
  it('backs off from 100 ms doubling to 10 s, jittered within [½, 1] of the step', () => {
    const low = [1, 2, 3, 4, 5, 6, 7, 8, 9, 40].map((failures) => backoffDelay(failures, () => 0));
    const high = [1, 2, 3, 4, 5, 6, 7, 8, 9, 40].map((failures) => backoffDelay(failures, () => 1));
    assert.deepEqual(high, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
    assert.deepEqual(low, high.map((delay) => delay / 2));
    assert.equal(backoffDelay(1_000, () => 1), BACKOFF_MAX_MS);
  });

  it("reads the event stream's lines: heartbeats, frames, and nothing else", () => {
    assert.equal(parseEventLine('{}'), undefined, 'a heartbeat');
    const payload = { Job: { ID: 'manticore-a' } };
    assert.deepEqual(parseEventLine(JSON.stringify({ Index: 7, Events: [{ Topic: 'Job', Type: 'JobRegistered', Key: 'manticore-a', Namespace: 'default', FilterKeys: null, Index: 7, Payload: payload }] })), {
      index: 7,
      events: [{ topic: 'Job', type: 'JobRegistered', key: 'manticore-a', payload }],
    });
    assert.throws(() => parseEventLine('Permission denied'), /not JSON: Permission denied/);
    assert.throws(() => parseEventLine('[]'), /not an object/);
    assert.throws(() => parseEventLine('{"Events":[]}'), /without an Index/);
    assert.throws(() => parseEventLine('{"Index":3,"Events":[{"Topic":"Job"}]}'), /malformed event at index 3/);
  });
});

describe('Nomad capacity changes', () => {
  const node = (id: string, change: Partial<NomadNodeStub> = {}): NomadNodeStub =>
    ({ ID: id, Name: `name-${id}`, Status: 'ready', SchedulingEligibility: 'eligible', ModifyIndex: 10, ...change });
  const list = (...nodes: NomadNodeStub[]): Map<string, NomadNodeStub> => new Map(nodes.map((item) => [item.ID, item]));

  it('sees room in a node that joins, becomes ready or eligible, or is modified while ready and eligible', () => {
    const before = list(node('a'), node('b', { Status: 'down' }), node('c', { SchedulingEligibility: 'ineligible' }), node('d'));
    const after = list(node('a'), node('b', { ModifyIndex: 11 }), node('c', { ModifyIndex: 12 }), node('d', { ModifyIndex: 13 }), node('e', { Status: 'initializing' }));
    assert.deepEqual(capacityGains(before, after), [
      'node name-b (b) became ready',
      'node name-c (c) became eligible',
      'node name-d (d) was updated',
      'node name-e (e) joined',
    ]);
  });

  it('sees none in an unchanged list, a node leaving, going down or ineligible, or an unusable node changing', () => {
    const before = list(node('a'), node('b'), node('c'), node('d', { Status: 'down' }), node('e', { SchedulingEligibility: 'ineligible' }));
    assert.deepEqual(capacityGains(before, before), []);
    const after = list(
      node('b', { Status: 'down', ModifyIndex: 11 }),
      node('c', { SchedulingEligibility: 'ineligible', ModifyIndex: 12 }),
      node('d', { Status: 'down', ModifyIndex: 13 }),
      node('e', { SchedulingEligibility: 'ineligible', ModifyIndex: 14 }),
    );
    assert.deepEqual(capacityGains(before, after), []);
  });
});
