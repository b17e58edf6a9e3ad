import { hostname } from 'node:os';
import { collectProcessDefaults, processRegistry } from '../../metrics/metrics';
import { makeMetricsScrape } from '../../metrics/metrics-scrape';
import type { ApiPlugin } from '../server';

/**
 * `GET /metrics` (Prometheus text format), `admin` scope: one scrape for the whole orchestrator —
 * deployments by status (Postgres) and jobs by queue and state (BullMQ) read now, this process's
 * counters, and every live worker's published counters labelled `process` (orchestrator/metrics).
 * Not in the OpenAPI document: it is for Prometheus, not for the onboarding app.
 */
export const METRICS_PATH = '/metrics';

export const metricsRoutes: ApiPlugin = async (app, deps) => {
  const { pipeline } = deps;
  // METRICS_ENABLED=false (on by default): no /metrics route (a 404), and workers publish nothing.
  if (!pipeline.config.METRICS_ENABLED) return;
  collectProcessDefaults();
  const scrape = makeMetricsScrape({
    rpc: pipeline.db.rpc,
    queues: pipeline.queues,
    redis: pipeline.redis,
    prefix: pipeline.config.QUEUE_PREFIX,
    own: { registry: processRegistry, process: `api-${hostname()}-${process.pid}` },
  });
  app.get(
    METRICS_PATH,
    { config: { scopes: ['admin'] }, schema: { hide: true } },
    async (_request, reply) => {
      const { contentType, body } = await scrape.scrape();
      return reply.header('content-type', contentType).header('cache-control', 'no-store').send(body);
    },
  );
};
