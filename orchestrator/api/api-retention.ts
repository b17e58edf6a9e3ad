import type { Config } from '../config';
import type { Rpc } from '../db/rpc';
import type { Logger } from '../log';

/**
 * The `retention` maintenance task: forgets the API's bookkeeping past its configured age —
 * idempotency keys, finished webhook deliveries, and the event log of settled deployments — through
 * `api_retention__apply` (migration 20261202100000_retention). The SQL function holds the floors
 * (1 day for keys, 7 days for events and deliveries) and the rules (nothing of a deployment still
 * moving, nothing a pending delivery names); the audit log is not its business. Each call removes
 * at most `batch` rows of each kind in one short transaction; the task calls again while a kind
 * came back full, up to `maxRounds` (the next run carries on).
 */
export interface RetentionCounts {
  readonly idempotencyKeys: number;
  readonly webhookDeliveries: number;
  readonly events: number;
}

export const makeApiRetention = (deps: {
  rpc: Rpc;
  log: Logger;
  ages: Pick<Config, 'IDEMPOTENCY_KEEP_SECONDS' | 'EVENTS_KEEP_SECONDS' | 'DELIVERIES_KEEP_SECONDS'>;
  batch?: number;
  maxRounds?: number;
}) => {
  const batch = deps.batch ?? 10_000;
  const maxRounds = deps.maxRounds ?? 20;

  const run = async (): Promise<RetentionCounts> => {
    const total = { idempotencyKeys: 0, webhookDeliveries: 0, events: 0 };
    for (let round = 0; round < maxRounds; round++) {
      const r = await deps.rpc<{ idempotency_keys: number; webhook_deliveries: number; events: number }>(
        'api_retention__apply',
        {
          p_idempotency_keys_seconds: deps.ages.IDEMPOTENCY_KEEP_SECONDS,
          p_events_seconds: deps.ages.EVENTS_KEEP_SECONDS,
          p_deliveries_seconds: deps.ages.DELIVERIES_KEEP_SECONDS,
          p_batch: batch,
        },
      );
      total.idempotencyKeys += r.idempotency_keys;
      total.webhookDeliveries += r.webhook_deliveries;
      total.events += r.events;
      if (Math.max(r.idempotency_keys, r.webhook_deliveries, r.events) < batch) break;
    }
    if (total.idempotencyKeys || total.webhookDeliveries || total.events)
      deps.log.info(total, 'retention removed old API records');
    return total;
  };

  return { run };
};
export type ApiRetention = ReturnType<typeof makeApiRetention>;
