import { z } from 'zod';
import { workersAlive } from '../../queues/worker-heartbeat';
import { sendProblem } from '../problems';
import type { ApiPlugin } from '../server';

/**
 * `/healthz`: the process answers. `/readyz`: Postgres answers through the contract (as the
 * orchestrator's role), Redis answers, and at least one worker process has beaten its heartbeat
 * within its TTL. Both public: they say nothing about any organisation.
 */
const CHECK_TIMEOUT_MS = 2_000;
const checkResult = z.enum(['ok', 'failed']);
const readySchema = z.object({
  status: z.literal('ready'),
  checks: z.object({ postgres: checkResult, redis: checkResult, workers: checkResult }),
});

const within = async (p: Promise<unknown>): Promise<'ok' | 'failed'> => {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'failed'>((r) => {
    timer = setTimeout(() => r('failed'), CHECK_TIMEOUT_MS);
  });
  try {
    return await Promise.race([p.then((v) => (v === false ? 'failed' : 'ok')), timeout]);
  } catch {
    return 'failed';
  } finally {
    clearTimeout(timer);
  }
};

export const healthRoutes: ApiPlugin = async (app, deps) => {
  const { pipeline } = deps;
  app.get(
    '/healthz',
    {
      config: { public: true },
      schema: {
        tags: ['health'],
        summary: 'The process is up',
        security: [],
        response: { 200: z.object({ status: z.literal('ok') }) },
      },
    },
    async () => ({ status: 'ok' as const }),
  );
  app.get(
    '/readyz',
    {
      config: { public: true },
      schema: {
        tags: ['health'],
        summary: 'Postgres, Redis and the workers are reachable',
        security: [],
        response: { 200: readySchema },
      },
    },
    async (_request, reply) => {
      const [postgres, redis, workers] = await Promise.all([
        within(pipeline.db.rpc('api__ready', {})),
        within(pipeline.redis.ping()),
        within(workersAlive(pipeline.redis, pipeline.config.QUEUE_PREFIX)),
      ]);
      const checks = { postgres, redis, workers };
      if (postgres === 'ok' && redis === 'ok' && workers === 'ok')
        return { status: 'ready' as const, checks };
      const failed = Object.entries(checks)
        .filter(([, v]) => v !== 'ok')
        .map(([k]) => k);
      return sendProblem(reply, {
        type: 'https://cortex.invalid/problems/not-ready',
        title: 'Service Unavailable',
        status: 503,
        detail: `not ready: ${failed.join(', ')}`,
        checks,
      });
    },
  );
};
