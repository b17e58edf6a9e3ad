import { Counter, Histogram, Registry } from 'prom-client';
import { failedJobOutcome } from '../../../orchestrator/metrics/metrics';
import {
  metricsKey,
  parsePublished,
  startMetricsPublisher,
} from '../../../orchestrator/metrics/metrics-publisher';
import { makeMetricsScrape } from '../../../orchestrator/metrics/metrics-scrape';
import type { Rpc } from '../../../orchestrator/db/rpc';
import type { Queues } from '../../../orchestrator/queues/queues';

/** A Redis that does what the publisher and the scrape use: SET with EX, SCAN MATCH, MGET. */
const fakeRedis = () => {
  const kv = new Map<string, string>();
  const glob = (pattern: string) =>
    new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
  return {
    kv,
    set: async (k: string, v: string) => {
      kv.set(k, v);
      return 'OK' as const;
    },
    scan: async (_cursor: string, _m: 'MATCH', pattern: string) =>
      ['0', [...kv.keys()].filter((k) => glob(pattern).test(k))] as [string, string[]],
    mget: async (...keys: string[]) => keys.map((k) => kv.get(k) ?? null),
  };
};

/** A worker's registry of its own: same metric names as orchestrator/metrics/metrics.ts. */
const workerRegistry = () => {
  const registry = new Registry();
  const jobs = new Counter({
    name: 'cortex_jobs_total',
    help: 'jobs',
    labelNames: ['queue', 'outcome'],
    registers: [registry],
  });
  const steps = new Histogram({
    name: 'cortex_step_duration_seconds',
    help: 'steps',
    labelNames: ['operation', 'step', 'outcome'],
    buckets: [1, 10],
    registers: [registry],
  });
  return { registry, jobs, steps };
};

const queuesWith = (counts: Record<string, Record<string, number>>): Pick<Queues, 'queues'> =>
  ({
    queues: Object.fromEntries(
      Object.entries(counts).map(([name, c]) => [name, { getJobCounts: async () => c }]),
    ),
  }) as unknown as Pick<Queues, 'queues'>;

describe('metrics', () => {
  it('a failed attempt is "retried" while attempts remain, "failed" on the last or when unrecoverable', () => {
    expect(failedJobOutcome({ attemptsMade: 1, opts: { attempts: 5 } }, new Error('x'))).toBe('retried');
    expect(failedJobOutcome({ attemptsMade: 5, opts: { attempts: 5 } }, new Error('x'))).toBe('failed');
    expect(failedJobOutcome({ attemptsMade: 1, opts: { attempts: 5 } }, { name: 'UnrecoverableError' })).toBe(
      'failed',
    );
    expect(failedJobOutcome(undefined, undefined)).toBe('failed');
  });

  it('one scrape holds Postgres and BullMQ figures, its own series and every live worker’s, each labelled by process', async () => {
    const redis = fakeRedis();
    const w1 = workerRegistry();
    const w2 = workerRegistry();
    w1.jobs.inc({ queue: 'provision', outcome: 'completed' }, 3);
    w1.steps.observe({ operation: 'provision', step: 'host', outcome: 'succeeded' }, 4);
    w2.jobs.inc({ queue: 'provision', outcome: 'failed' });
    const p1 = startMetricsPublisher({
      redis: redis as never,
      registry: w1.registry,
      prefix: 'tst',
      holder: 'hostA-1',
      everyMs: 60_000,
    });
    const p2 = startMetricsPublisher({
      redis: redis as never,
      registry: w2.registry,
      prefix: 'tst',
      holder: 'hostB-2',
      everyMs: 60_000,
    });
    await p1.publish();
    await p2.stop();
    await p1.stop();
    // another deployment of the orchestrator on the same Redis: never read
    await redis.set(metricsKey('other', 'hostC-3'), JSON.stringify(await w1.registry.getMetricsAsJSON()));

    const own = workerRegistry();
    own.jobs.inc({ queue: 'maintenance', outcome: 'completed' });
    const rpc = (async (fn: string) => {
      expect(fn).toBe('metrics__deployments_by_status');
      return { ready: 2, requested: 1 };
    }) as Rpc;
    const scrape = makeMetricsScrape({
      rpc,
      queues: queuesWith({ provision: { waiting: 4, active: 1 }, deprovision: {} }),
      redis: redis as never,
      prefix: 'tst',
      own: { registry: own.registry, process: 'api-1' },
    });
    const { body, contentType } = await scrape.scrape();
    expect(contentType).toMatch(/^text\/plain/);
    expect(body).toContain('cortex_deployments{status="ready"} 2');
    expect(body).toContain('cortex_deployments{status="failed"} 0');
    expect(body).toContain('cortex_queue_jobs{queue="provision",state="waiting"} 4');
    expect(body).toContain('cortex_jobs_total{queue="provision",outcome="completed",process="hostA-1"} 3');
    expect(body).toContain('cortex_jobs_total{queue="provision",outcome="failed",process="hostB-2"} 1');
    expect(body).toContain('cortex_jobs_total{queue="maintenance",outcome="completed",process="api-1"} 1');
    expect(body).toContain(
      'cortex_step_duration_seconds_bucket{le="10",operation="provision",step="host",outcome="succeeded",process="hostA-1"} 1',
    );
    expect(body).not.toContain('hostC-3');
    expect(body.match(/^# TYPE cortex_jobs_total counter$/gm)).toHaveLength(1);

    // a worker whose key expired takes its series with it
    redis.kv.delete(metricsKey('tst', 'hostB-2'));
    expect((await scrape.scrape()).body).not.toContain('hostB-2');
  });

  it('a malformed or foreign snapshot in Redis is dropped, not served', () => {
    expect(parsePublished('not json', 'p')).toBeUndefined();
    expect(parsePublished('{"a":1}', 'p')).toBeUndefined();
    const foreign = JSON.stringify([
      { name: 'evil_metric', help: 'h', type: 'counter', values: [{ value: 1, labels: {} }] },
      { name: 'cortex_x', help: 'h', type: 'counter', values: [{ value: 'NaN?', labels: {} }] },
    ]);
    const parsed = parsePublished(foreign, 'p');
    expect(parsed?.map((m) => m.name)).toEqual(['cortex_x']);
    expect(parsed?.[0]?.values).toEqual([]);
  });
});

describe('instrumentation where the events happen', () => {
  const value = async (
    m: {
      get(): Promise<{ values: { value: number; labels: Record<string, unknown>; metricName?: string }[] }>;
    },
    labels: Record<string, string>,
    metricName?: string,
  ): Promise<number> =>
    (await m.get()).values
      .filter((v) => (metricName ? v.metricName === metricName : true))
      .filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))
      .reduce((a, v) => a + v.value, 0);

  it('the step runner observes each step’s duration by operation, step and outcome', async () => {
    const { metrics } = await import('../../../orchestrator/metrics/metrics');
    const { makeStepRunner } = await import('../../../orchestrator/steps/step-runner');
    const { makeLogger } = await import('../../../orchestrator/log');
    const { OrchestratorError } = await import('../../../orchestrator/errors');
    const dep = { id: 'd1', status: 'provisioning', currentRun: 1, steps: [] as unknown[] };
    const store = {
      begin: async () => ({ action: 'run', run: 1, deployment: dep }),
      get: async () => dep,
      stepStarted: async () => undefined,
      stepFinished: async () => dep,
    } as never;
    const count = (step: string, outcome: string) =>
      value(
        metrics.stepDuration,
        { operation: 'provision', step, outcome },
        'cortex_step_duration_seconds_count',
      );
    const before = [await count('m-ok', 'succeeded'), await count('m-bad', 'failed')];
    const runner = makeStepRunner({ store, log: makeLogger({ level: 'silent' }) });
    await expect(
      runner.run({
        operation: 'provision',
        deploymentId: 'd1',
        jobId: 'j',
        finalAttempt: true,
        steps: [
          { name: 'm-ok', deadlineMs: 1_000, apply: async () => undefined },
          {
            name: 'm-bad',
            deadlineMs: 1_000,
            apply: async () => {
              throw new OrchestratorError('invalid_input', 'no');
            },
          },
        ],
      }),
    ).rejects.toThrow('no');
    expect([await count('m-ok', 'succeeded'), await count('m-bad', 'failed')]).toEqual([
      (before[0] ?? 0) + 1,
      (before[1] ?? 0) + 1,
    ]);
  });

  it('the secrets service counts each value read, and a denial once', async () => {
    const { metrics } = await import('../../../orchestrator/metrics/metrics');
    const { makeSecretsService } = await import('../../../orchestrator/secrets/secrets-service');
    let answer: unknown = {
      status: 'ok',
      secrets: [
        { env_var: 'A', secret_id: 's1', version: 1, value: 'x' },
        { env_var: 'B', secret_id: 's2', version: 1, value: 'y' },
      ],
    };
    const rpc = (async (fn: string) => (fn.endsWith('intend_read') ? { intent_id: 'i' } : answer)) as Rpc;
    const svc = makeSecretsService({ rpc, fingerprintKey: {} } as never);
    const ok0 = await value(metrics.secretAccess, { operation: 'read', outcome: 'success' });
    const denied0 = await value(metrics.secretAccess, { operation: 'read', outcome: 'denied' });
    await svc.readForDeployment('00000000-0000-4000-8000-000000000001');
    answer = { status: 'denied', reason: 'not bound' };
    await svc.readForDeployment('00000000-0000-4000-8000-000000000001');
    expect(await value(metrics.secretAccess, { operation: 'read', outcome: 'success' })).toBe(ok0 + 2);
    expect(await value(metrics.secretAccess, { operation: 'read', outcome: 'denied' })).toBe(denied0 + 1);
  });

  it('the hcloud API client counts its requests by method and status', async () => {
    const { metrics } = await import('../../../orchestrator/metrics/metrics');
    const { makeHcloudApi } = await import('../../../orchestrator/infra/hcloud');
    const api = makeHcloudApi({
      token: 't',
      fetch: async () => ({
        status: 200,
        json: async () => ({ zones: [], meta: { pagination: { next_page: null } } }),
      }),
    });
    const n0 = await value(metrics.providerCalls, { provider: 'hcloud', method: 'GET', status: '200' });
    await api.zone('example.com');
    expect(await value(metrics.providerCalls, { provider: 'hcloud', method: 'GET', status: '200' })).toBe(
      n0 + 1,
    );
  });
});
