import { z } from 'zod';

/**
 * The `webhooks` queue: one job per delivery (one status event to one endpoint), carrying the
 * delivery's id and nothing else (DESIGN: job data sits in Redis in clear text). The URL, the
 * event and the signing secret are read from Postgres by the job itself.
 */
export const WEBHOOKS_QUEUE = 'webhooks';

export const webhookJobSchema = z.object({ deliveryId: z.string().regex(/^[1-9][0-9]{0,18}$/) }).strict();
export type WebhookJob = z.output<typeof webhookJobSchema>;

export const parseWebhookJob = (
  data: unknown,
): { ok: true; payload: WebhookJob } | { ok: false; problem: string } => {
  const r = webhookJobSchema.safeParse(data);
  if (r.success) return { ok: true, payload: r.data };
  const paths = [...new Set(r.error.issues.map((i) => i.path.map(String).join('.') || '(root)'))];
  return {
    ok: false,
    problem: `payload refused for queue webhooks: ${paths.slice(0, 5).join(', ')} (ids only)`,
  };
};

/** Deterministic, without `:` (BullMQ's key separator): a delivery is queued at most once at a time. */
export const webhookJobId = (deliveryId: string): string => {
  if (!/^[1-9][0-9]{0,18}$/.test(deliveryId)) throw new Error('delivery id must be a positive integer');
  return `webhooks-${deliveryId}`;
};
