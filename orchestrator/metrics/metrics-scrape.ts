import type { Redis } from 'ioredis';
import { AggregatorRegistry, Gauge, Registry } from 'prom-client';
import type { Rpc } from '../db/rpc';
import type { QueueName } from '../queues/job-payloads';
import type { Queues } from '../queues/queues';
import { METRICS_KEY_PART, parsePublished, type PublishedMetrics } from './metrics-publisher';

/**
 * One scrape for the whole orchestrator (served by the API at `GET /metrics`, admin token):
 *  - read at scrape time from the sources of truth, so nothing depends on which process saw what:
 *    deployments by status (Postgres, `metrics__deployments_by_status`) and jobs by queue and state
 *    (BullMQ's counts in Redis);
 *  - this process's own registry and every live worker's published one, each series labelled
 *    `process` (see metrics-publisher.ts).
 */
export const DEPLOYMENT_STATUSES = [
  'requested',
  'provisioning',
  'ready',
  'failed',
  'rotating',
  'deprovisioning',
  'deleted',
] as const;
const JOB_STATES = ['waiting', 'active', 'delayed', 'prioritized', 'waiting-children', 'failed'] as const;
/** At most this many workers' snapshots per scrape (a bound on what a shared Redis can make us parse). */
const MAX_PROCESSES = 500;

export const makeMetricsScrape = (deps: {
  rpc: Rpc;
  queues: Pick<Queues, 'queues'>;
  redis: Pick<Redis, 'scan' | 'mget'>;
  prefix: string;
  /** This process's registry and the label its series get. */
  own: { registry: Registry; process: string };
}) => {
  const scrapeRegistry = new Registry();
  const deployments = new Gauge({
    name: 'cortex_deployments',
    help: 'Deployments by status (Postgres, read at scrape time)',
    labelNames: ['status'] as const,
    registers: [scrapeRegistry],
  });
  const queueJobs = new Gauge({
    name: 'cortex_queue_jobs',
    help: 'BullMQ jobs by queue and state (Redis, read at scrape time)',
    labelNames: ['queue', 'state'] as const,
    registers: [scrapeRegistry],
  });

  const readSources = async (): Promise<void> => {
    const counts = await deps.rpc<Record<string, number>>('metrics__deployments_by_status', {});
    for (const s of DEPLOYMENT_STATUSES) deployments.set({ status: s }, Number(counts[s] ?? 0));
    for (const [name, q] of Object.entries(deps.queues.queues) as [
      QueueName,
      { getJobCounts: (...s: string[]) => Promise<Record<string, number>> },
    ][]) {
      const c = await q.getJobCounts(...JOB_STATES);
      for (const st of JOB_STATES) queueJobs.set({ queue: name, state: st }, Number(c[st] ?? 0));
    }
  };

  const readPublished = async (): Promise<PublishedMetrics[]> => {
    const match = `${deps.prefix}:${METRICS_KEY_PART}:*`;
    const keys: string[] = [];
    let cursor = '0';
    do {
      const [next, batch] = await deps.redis.scan(cursor, 'MATCH', match, 'COUNT', 200);
      cursor = next;
      keys.push(...batch);
    } while (cursor !== '0' && keys.length < MAX_PROCESSES);
    const chosen = keys.slice(0, MAX_PROCESSES);
    if (!chosen.length) return [];
    const texts = await deps.redis.mget(...chosen);
    const out: PublishedMetrics[] = [];
    chosen.forEach((k, i) => {
      const holder = k.slice(match.length - 1);
      const parsed = holder === deps.own.process ? undefined : parsePublished(texts[i] ?? null, holder);
      if (parsed) out.push(parsed);
    });
    return out;
  };

  /** The exposition text and its content type. */
  const scrape = async (): Promise<{ contentType: string; body: string }> => {
    await readSources();
    const own = parsePublished(JSON.stringify(await deps.own.registry.getMetricsAsJSON()), deps.own.process);
    const all = [await scrapeRegistry.getMetricsAsJSON(), ...(own ? [own] : []), ...(await readPublished())];
    const merged = AggregatorRegistry.aggregate(all);
    return { contentType: merged.contentType, body: await merged.metrics() };
  };

  return { scrape };
};
export type MetricsScrape = ReturnType<typeof makeMetricsScrape>;
