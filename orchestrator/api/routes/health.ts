import { z } from 'zod';
import { workersAlive } from '../../queues/worker-heartbeat';
import { sendProblem } from '../problems';
import type { ApiPlugin } from '../server';
import { makeSingleFlightMemo } from '../single-flight-memo';

/**
 * `/healthz`: the process answers. `/readyz`: Postgres answers through the contract (as the
 * orchestrator's role), Redis answers, and at least one worker process has beaten its heartbeat
 * within its TTL. Both public: they say nothing about any organisation.
 *
 * /readyz is anonymous, and its worker check SCANs the Redis keyspace until it finds a heartbeat
 * (all of it when no worker runs). So (review R15 F3) concurrent requests share one check, its
 * answer is kept READY_MEMO_MS, and a check that outlives CHECK_TIMEOUT_MS is aborted, not just
 * no longer waited for: the scan stops at its next page.
 */
const CHECK_TIMEOUT_MS = 2_000;
export const READY_MEMO_MS = 1_000;
const checkResult = z.enum(['ok', 'failed']);
const readySchema = z.object({
  status: z.literal('ready'),
  checks: z.object({ postgres: checkResult, redis: checkResult, workers: checkResult }),
});
type Check = z.infer<typeof checkResult>;

/** `check`'s outcome within CHECK_TIMEOUT_MS; at the deadline its signal is aborted. */
const within = async (check: (signal: AbortSignal) => Promise<unknown>): Promise<Check> => {
  const ac = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'failed'>((r) => {
    timer = setTimeout(() => r('failed'), CHECK_TIMEOUT_MS);
  });
  try {
    const p = Promise.resolve().then(() => check(ac.signal));
    return await Promise.race([p.then((v) => (v === false ? 'failed' : 'ok')), timeout]);
  } catch {
    return 'failed';
  } finally {
    clearTimeout(timer);
    ac.abort(new Error('/readyz: the check was given up'));
  }
};

export const healthRoutes: ApiPlugin = async (app, deps) => {
  const { pipeline } = deps;
  const readiness = makeSingleFlightMemo(
    async () => {
      const [postgres, redis, workers] = await Promise.all([
        within(() => pipeline.db.rpc('api__ready', {})),
        within(() => pipeline.redis.ping()),
        within((signal) => workersAlive(pipeline.redis, pipeline.config.QUEUE_PREFIX, signal)),
      ]);
      return { postgres, redis, workers };
    },
    { ttlMs: READY_MEMO_MS, maxKeys: 1 },
  );
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
      const checks = (await readiness.get('readyz')).value;
      if (checks.postgres === 'ok' && checks.redis === 'ok' && checks.workers === 'ok')
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
