import { UnrecoverableError, type Job } from 'bullmq';
import { classify } from '../errors';
import type { Logger } from '../log';
import { parsePayload } from '../queues/job-payloads';
import type { Queues } from '../queues/queues';
import { reasonOf } from '../steps/step-runner';
import type { RevokeJob } from './revoke-job';
import { rotationMetrics } from './rotation-metrics';
import type { RotationJob } from './rotation-job';
import type { RotationStore } from './rotation-store';
import type { OverdueKey } from './secret-binding-store';

/**
 * BullMQ processors of the `rotate` and `revoke` queues, and rotation's maintenance tasks:
 * `rotation-sweep` (resume rotations whose job was lost, queue again the job of a revocation left
 * open (a provision held the secret) or whose job was lost, retire old versions whose grace period
 * ended) and `key-age` (flag keys older than their max age). Payloads are parsed like every other
 * queue's: anything but ids is refused as unrecoverable and wiped from Redis.
 */
const refuse = async (job: Job, problem: string): Promise<never> => {
  await job.updateData({}).catch(() => undefined);
  throw new UnrecoverableError(problem);
};

const finalAttempt = (job: Job): boolean => job.attemptsMade + 1 >= (job.opts.attempts ?? 1);

/** Our own value-free reason reaches Redis; permanent errors are not retried. */
const rethrow = (err: unknown): never => {
  if (classify(err) === 'permanent') throw new UnrecoverableError(reasonOf(err));
  throw new Error(reasonOf(err));
};

export const makeRotationProcessors = (deps: { rotationJob: RotationJob; revokeJob: RevokeJob }) => {
  const signal = new AbortController().signal;
  return {
    rotate: async (job: Job): Promise<unknown> => {
      const parsed = parsePayload('rotate', job.data);
      if (!parsed.ok) return refuse(job, parsed.problem);
      try {
        const out = await deps.rotationJob.run({
          rotationId: parsed.payload.rotationId,
          jobId: job.id ?? `rotate-${parsed.payload.rotationId}`,
          signal,
          finalAttempt: finalAttempt(job),
        });
        const m = rotationMetrics.deployments;
        m.inc({ outcome: 'switched' }, out.switched.length);
        m.inc({ outcome: 'rolled_back' }, out.rolledBack.length);
        m.inc({ outcome: 'failed' }, out.failed.length);
        m.inc({ outcome: 'skipped' }, out.skipped.length);
        return out;
      } catch (err) {
        return rethrow(err);
      }
    },
    revoke: async (job: Job): Promise<unknown> => {
      const parsed = parsePayload('revoke', job.data);
      if (!parsed.ok) return refuse(job, parsed.problem);
      try {
        return await deps.revokeJob.run({
          revocationId: parsed.payload.revocationId,
          jobId: job.id ?? `revoke-${parsed.payload.revocationId}`,
          signal,
          finalAttempt: finalAttempt(job),
        });
      } catch (err) {
        return rethrow(err);
      }
    },
  };
};

export const makeRotationMaintenance = (deps: {
  rotations: RotationStore;
  queues: Pick<Queues, 'enqueue'>;
  log: Logger;
  stalledSeconds: number;
  /** Called with the overdue keys on every key-age pass (a metrics gauge). */
  onOverdue?: (keys: readonly OverdueKey[]) => void;
}) => {
  const { rotations, log } = deps;
  const ctx = { actor: 'maintenance', jobId: 'maintenance-rotation-sweep' };

  const sweep = async (): Promise<{
    resumed: string[];
    revokes: string[];
    retired: { rotationId: string; versions: number[] }[];
  }> => {
    const { stalled, due } = await rotations.listAttention(deps.stalledSeconds);
    for (const id of stalled) await deps.queues.enqueue('rotate', { rotationId: id }, id);
    // open revocations idle that long: their job again (ids only; one still queued or running
    // under the same id is kept), until a run finds nothing holding the secret
    const revokes = await rotations.listOpenRevocations(deps.stalledSeconds);
    for (const id of revokes) await deps.queues.enqueue('revoke', { revocationId: id }, id);
    const retired: { rotationId: string; versions: number[] }[] = [];
    for (const id of due) {
      try {
        const r = await rotations.retireOld(id, ctx);
        if (r.retired.length) retired.push({ rotationId: id, versions: r.retired });
        if (r.kept.length)
          log.warn({ rotationId: id, kept: r.kept }, 'old version kept: a deployment still runs it');
      } catch (err) {
        log.warn({ rotationId: id, reason: reasonOf(err) }, 'could not retire an old version');
      }
    }
    if (stalled.length || revokes.length || retired.length)
      log.info({ resumed: stalled, revokes, retired }, 'rotation sweep');
    return { resumed: stalled, revokes, retired };
  };

  const keyAge = async (): Promise<{ overdue: number }> => {
    const keys = await rotations.overdue();
    rotationMetrics.keysOverMaxAge.set(keys.length);
    deps.onOverdue?.(keys);
    for (const k of keys)
      log.warn(
        { secretId: k.secretId, orgId: k.orgId, ageSeconds: k.ageSeconds, maxAgeSeconds: k.maxAgeSeconds },
        'key older than its max age: rotate it',
      );
    return { overdue: keys.length };
  };

  return { sweep, keyAge };
};
