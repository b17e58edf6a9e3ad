import { Queue, type ConnectionOptions, type JobsOptions } from 'bullmq';
import { OrchestratorError } from '../errors';
import { QUEUE_NAMES, jobIdFor, parsePayload, type Payload, type QueueName } from './job-payloads';

/**
 * The producer side: one BullMQ queue per name, and `enqueue`, which checks the payload against
 * its queue's schema before anything reaches Redis and gives the job a deterministic id (one
 * provision and one deprovision per deployment at a time; a second request is the same job).
 */
export interface QueueSettings {
  readonly connection: ConnectionOptions;
  /** Key prefix in Redis (tests use one of their own). */
  readonly prefix: string;
  readonly attempts: number;
  readonly backoffMs: number;
}

export const jobOptions = (s: Pick<QueueSettings, 'attempts' | 'backoffMs'>): JobsOptions => ({
  attempts: s.attempts,
  backoff: { type: 'exponential', delay: s.backoffMs },
  // Postgres holds the record of what happened; Redis keeps only work in flight (and a day of failures).
  removeOnComplete: true,
  removeOnFail: { age: 24 * 3600 },
});

export const makeQueues = (s: QueueSettings) => {
  const queues = Object.fromEntries(
    QUEUE_NAMES.map((n) => [n, new Queue(n, { connection: s.connection, prefix: s.prefix })]),
  ) as Record<QueueName, Queue>;

  /** Drop a finished (failed or completed) job with this id so the same id can run again. */
  const clearFinished = async (queue: QueueName, jobId: string): Promise<void> => {
    const job = await queues[queue].getJob(jobId);
    if (!job) return;
    const state = await job.getState();
    if (state === 'failed' || state === 'completed') await job.remove().catch(() => undefined);
  };

  const enqueue = async <Q extends QueueName>(queue: Q, data: Payload<Q>, key: string): Promise<string> => {
    const parsed = parsePayload(queue, data);
    if (!parsed.ok) throw new OrchestratorError('invalid_input', parsed.problem, { field: 'payload' });
    const jobId = jobIdFor(queue, key);
    await clearFinished(queue, jobId);
    await queues[queue].add(queue, parsed.payload, { ...jobOptions(s), jobId });
    return jobId;
  };

  /** Remove every job of a deployment that is not running (after deprovisioning). */
  const forgetDeployment = async (deploymentId: string): Promise<void> => {
    for (const q of ['provision', 'deprovision'] as const) {
      const job = await queues[q].getJob(jobIdFor(q, deploymentId));
      if (job && !(await job.isActive())) await job.remove().catch(() => undefined);
    }
  };

  const close = async (): Promise<void> => {
    await Promise.all(Object.values(queues).map((q) => q.close()));
  };

  return { queues, enqueue, clearFinished, forgetDeployment, close };
};
export type Queues = ReturnType<typeof makeQueues>;
