import { hostname } from 'node:os';
import { DelayedError, UnrecoverableError, Worker, type ConnectionOptions, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { classify } from '../errors';
import type { Logger } from '../log';
import { failedJobOutcome, metrics } from '../metrics/metrics';
import type { DeploymentStore } from '../deployments/deployment-store';
import type { HostProvider } from '../infra/host-provider';
import { ShutdownRequested, reasonOf, type StepDef, type StepRunner } from '../steps/step-runner';
import type { Leases } from './deployment-lease';
import { parsePayload, type QueueName } from './job-payloads';
import type { Queues } from './queues';
import { startHeartbeat } from './worker-heartbeat';

/**
 * The consumer side: a BullMQ worker per queue. Every job is parsed against its queue's schema
 * (refused as unrecoverable, and its data wiped from Redis, when it holds anything but ids), runs
 * under the deployment's lease (a job whose deployment is busy waits, delayed, without spending an
 * attempt), and maps errors to BullMQ's retry semantics through `classify`.
 */
export interface WorkerSettings {
  readonly connection: ConnectionOptions;
  readonly prefix: string;
  readonly concurrency: number;
  readonly lockDurationMs: number;
  /** Jobs per hour per queue that may call the cloud API (hcloud); undefined: no limit (local). */
  readonly cloudJobsPerHour?: number;
  readonly reconcileIdleSeconds: number;
  readonly orphanGraceSeconds: number;
}

export interface WorkerDeps {
  readonly store: DeploymentStore;
  readonly runner: StepRunner;
  readonly provisionSteps: readonly StepDef[];
  readonly deprovisionSteps: readonly StepDef[];
  readonly hosts: HostProvider;
  readonly queues: Queues;
  readonly leases: Leases;
  readonly redis: Redis;
  readonly log: Logger;
  /** Extra maintenance work (e.g. signing audit checkpoints), by task name. */
  readonly maintenance?: Partial<Record<string, () => Promise<unknown>>>;
  /** Processors of further queues (rotate, revoke: orchestrator/rotation), started with the rest. */
  readonly processors?: Partial<Record<QueueName, (job: Job, token?: string) => Promise<unknown>>>;
}

const LEASE_BUSY_DELAY_MS = 1_000;

/**
 * BullMQ's limiter for a queue whose jobs call the Hetzner API: one job started per
 * 3,600 s / perHour, across every worker process (the limiter lives in Redis). A job is a whole
 * provisioning or deprovisioning, so this bounds the requests per hour; a burst of jobs waits in
 * the queue instead of spending the project's 3,600 requests an hour at once.
 */
export const cloudLimiter = (perHour: number): { max: number; duration: number } => ({
  max: 1,
  duration: Math.ceil(3_600_000 / perHour),
});

export const makeWorkers = (deps: WorkerDeps, s: WorkerSettings) => {
  const holder = `${hostname()}-${process.pid}`;
  let stopping = false;
  const log = deps.log.child({ worker: holder });

  const finalAttempt = (job: Job): boolean => job.attemptsMade + 1 >= (job.opts.attempts ?? 1);

  const refuse = async (job: Job, problem: string): Promise<never> => {
    // The payload may hold a value: wipe it from Redis before failing the job for good.
    await job.updateData({}).catch(() => undefined);
    throw new UnrecoverableError(problem);
  };

  const deploymentJob =
    (queue: 'provision' | 'deprovision') =>
    async (job: Job, token?: string): Promise<{ outcome: string }> => {
      const parsed = parsePayload(queue, job.data);
      if (!parsed.ok) return refuse(job, parsed.problem);
      const { deploymentId } = parsed.payload;
      const lease = await deps.leases.acquire(deploymentId, holder);
      if (!lease) {
        await job.moveToDelayed(Date.now() + LEASE_BUSY_DELAY_MS, token);
        throw new DelayedError();
      }
      try {
        const outcome = await deps.runner.run({
          operation: queue,
          deploymentId,
          steps: queue === 'provision' ? deps.provisionSteps : deps.deprovisionSteps,
          jobId: job.id ?? 'unknown',
          finalAttempt: finalAttempt(job),
          stopping: () => stopping || !lease.held(),
        });
        return { outcome };
      } catch (err) {
        if (err instanceof ShutdownRequested) {
          // Back to the queue at a step boundary; no attempt spent, nothing half-done.
          await job.moveToDelayed(Date.now(), token);
          throw new DelayedError();
        }
        // Only our own, value-free reason reaches Redis as the failure text.
        if (classify(err) === 'permanent') throw new UnrecoverableError(reasonOf(err));
        throw new Error(reasonOf(err));
      } finally {
        await lease.release().catch(() => undefined);
      }
    };

  /** Re-enqueue what stopped moving: a flushed Redis or a lost job loses no deployment (one org's, or all). */
  const reconcile = async (opts: { orgId?: string } = {}): Promise<{ enqueued: string[] }> => {
    const stalled = await deps.store.listStalled(s.reconcileIdleSeconds, opts.orgId);
    const enqueued: string[] = [];
    for (const d of stalled) {
      const queue: QueueName | undefined =
        d.status === 'deprovisioning'
          ? 'deprovision'
          : d.status === 'requested' || d.status === 'provisioning'
            ? 'provision'
            : undefined;
      if (!queue) continue;
      await deps.queues.enqueue(queue, { deploymentId: d.id }, d.id);
      enqueued.push(d.id);
    }
    if (enqueued.length) log.info({ enqueued }, 'reconciler re-enqueued stalled deployments');
    return { enqueued };
  };

  /** Hosts no live deployment owns, removed once they have been seen unowned for the grace period. */
  const orphanSweep = async (): Promise<{ removed: string[]; waiting: string[] }> => {
    const key = `${s.prefix}:orphans:first-seen`;
    const ids = await deps.hosts.list();
    const unowned = ids.length ? await deps.store.unowned(ids) : [];
    // Redis's clock, which every worker shares: "first seen" is stamped and compared on one clock,
    // so a worker whose own clock runs ahead cannot cut the grace period short.
    const [sec, usec] = await deps.redis.time();
    const now = Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
    const removed: string[] = [];
    const waiting: string[] = [];
    const seen = await deps.redis.hgetall(key);
    for (const id of Object.keys(seen)) if (!unowned.includes(id)) await deps.redis.hdel(key, id);
    for (const id of unowned) {
      const first = Number(seen[id] ?? 0);
      if (!first) await deps.redis.hset(key, id, String(now));
      if (first && now - first >= s.orphanGraceSeconds * 1000) {
        await deps.hosts.destroy(id);
        await deps.redis.hdel(key, id);
        removed.push(id);
      } else waiting.push(id);
    }
    if (removed.length || waiting.length) log.warn({ removed, waiting }, 'orphan sweep');
    return { removed, waiting };
  };

  const maintenance = async (job: Job): Promise<unknown> => {
    const parsed = parsePayload('maintenance', job.data);
    if (!parsed.ok) return refuse(job, parsed.problem);
    const { task } = parsed.payload;
    if (task === 'reconcile') return reconcile();
    if (task === 'orphan-sweep') return orphanSweep();
    const extra = deps.maintenance?.[task];
    if (!extra) throw new UnrecoverableError(`maintenance task ${task} is not configured in this worker`);
    return extra();
  };

  const workers: Worker[] = [];
  let stopHeartbeat: (() => Promise<void>) | undefined;
  const start = (
    queues: readonly QueueName[] = [
      'provision',
      'deprovision',
      'maintenance',
      ...(Object.keys(deps.processors ?? {}) as QueueName[]),
    ],
  ): void => {
    // the API's /readyz needs at least one live worker process (a key with a TTL in Redis)
    stopHeartbeat ??= startHeartbeat(deps.redis, s.prefix, holder);
    const common = {
      connection: s.connection,
      prefix: s.prefix,
      lockDuration: s.lockDurationMs,
      stalledInterval: Math.max(1_000, Math.floor(s.lockDurationMs / 2)),
      maxStalledCount: 3,
    };
    const limiter = s.cloudJobsPerHour ? cloudLimiter(s.cloudJobsPerHour) : undefined;
    for (const q of queues) {
      const processor =
        deps.processors?.[q] ??
        (q === 'maintenance' ? maintenance : deploymentJob(q === 'provision' ? 'provision' : 'deprovision'));
      const w = new Worker(q, processor, {
        ...common,
        concurrency: q === 'maintenance' ? 1 : s.concurrency,
        ...(limiter && q !== 'maintenance' ? { limiter } : {}),
      });
      w.on('failed', (job, err) =>
        log.warn(
          { queue: q, jobId: job?.id, attempts: job?.attemptsMade, reason: err.message },
          'job failed',
        ),
      );
      w.on('failed', (job, err) => metrics.jobs.inc({ queue: q, outcome: failedJobOutcome(job, err) }));
      w.on('completed', () => metrics.jobs.inc({ queue: q, outcome: 'completed' }));
      w.on('error', (err) => log.error({ queue: q, reason: reasonOf(err) }, 'worker error'));
      workers.push(w);
    }
  };

  /** Stop taking jobs; running ones stop at their next step boundary (or finish) within graceMs. */
  const close = async (graceMs: number): Promise<void> => {
    stopping = true;
    await stopHeartbeat?.();
    const all = Promise.all(workers.map((w) => w.close()));
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), graceMs).unref());
    if ((await Promise.race([all.then(() => 'ok' as const), timer])) === 'timeout') {
      log.warn(
        { graceMs },
        'jobs still running after the grace period; their locks will expire and another worker resumes them',
      );
      await Promise.all(workers.map((w) => w.close(true)));
    }
  };

  return { start, close, reconcile, orphanSweep, holder };
};
export type Workers = ReturnType<typeof makeWorkers>;
