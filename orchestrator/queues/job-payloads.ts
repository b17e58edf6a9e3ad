import { z } from 'zod';
import { webhookJobSchema } from '../webhooks/webhook-payloads';

/**
 * What a job may carry: ids and references only (DESIGN: job data sits in Redis in clear text).
 * One strict zod schema per queue: an unknown field, a long string, anything that is not an id is
 * refused, so a value that slipped into a payload is never acted upon.
 */
export const QUEUE_NAMES = [
  'provision',
  'deprovision',
  'maintenance',
  'rotate',
  'revoke',
  'webhooks',
] as const;
export type QueueName = (typeof QUEUE_NAMES)[number];

const deploymentJob = z.object({ deploymentId: z.uuid() }).strict();
export const MAINTENANCE_TASKS = [
  'reconcile',
  'orphan-sweep',
  'audit-checkpoint',
  'rotation-sweep',
  'key-age',
  'retention',
] as const;
export type MaintenanceTask = (typeof MAINTENANCE_TASKS)[number];

export const payloadSchemas = {
  provision: deploymentJob,
  deprovision: deploymentJob,
  maintenance: z.object({ task: z.enum(MAINTENANCE_TASKS) }).strict(),
  // rotation (orchestrator/rotation): the value went into the vault before the job was enqueued
  rotate: z.object({ rotationId: z.uuid() }).strict(),
  // a revoke requested in Postgres (secrets__request_revoke): its revocation's id alone
  revoke: z.object({ revocationId: z.uuid() }).strict(),
  // webhook deliveries (orchestrator/webhooks): its own worker; listed here for the board and metrics
  webhooks: webhookJobSchema,
} as const satisfies Record<QueueName, z.ZodType>;

export type Payload<Q extends QueueName> = z.output<(typeof payloadSchemas)[Q]>;

/**
 * Parse a payload; on failure, say which paths were wrong and never what they held (the message
 * ends up in Redis as the job's failure reason).
 */
export const parsePayload = <Q extends QueueName>(
  queue: Q,
  data: unknown,
): { ok: true; payload: Payload<Q> } | { ok: false; problem: string } => {
  const r = payloadSchemas[queue].safeParse(data);
  if (r.success) return { ok: true, payload: r.data as Payload<Q> };
  const paths = [...new Set(r.error.issues.map((i) => i.path.map(String).join('.') || '(root)'))];
  return {
    ok: false,
    problem: `payload refused for queue ${queue}: ${paths.slice(0, 5).join(', ')} (ids only)`,
  };
};

/** Deterministic job ids without `:` (BullMQ's key separator). */
export const jobIdFor = (queue: QueueName, key: string): string => {
  if (!/^[A-Za-z0-9_-]{1,100}$/.test(key)) throw new Error('job id key must be [A-Za-z0-9_-]');
  return `${queue}-${key}`;
};
