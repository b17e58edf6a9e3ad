import type { Rpc } from '../../../orchestrator/db/rpc';
import { makeApiRetention } from '../../../orchestrator/api/api-retention';
import { configSchema } from '../../../orchestrator/config';
import { makeLogger } from '../../../orchestrator/log';

/**
 * The `retention` maintenance task: passes the configured ages to api_retention__apply and calls
 * again only while a kind came back full (a bounded number of short transactions). The SQL side
 * (floors, what stays) is supabase/tests/23_retention.sql.
 */
const log = makeLogger({ level: 'silent', name: 'retention-test' });
const ages = {
  IDEMPOTENCY_KEEP_SECONDS: 604_800,
  EVENTS_KEEP_SECONDS: 2_592_000,
  DELIVERIES_KEEP_SECONDS: 1_209_600,
};

const fakeRpc = (answers: { idempotency_keys: number; webhook_deliveries: number; events: number }[]) => {
  const calls: Record<string, unknown>[] = [];
  const rpc = (async (fn: string, args: Record<string, unknown>) => {
    expect(fn).toBe('api_retention__apply');
    calls.push(args);
    return answers[calls.length - 1] ?? { idempotency_keys: 0, webhook_deliveries: 0, events: 0 };
  }) as Rpc;
  return { rpc, calls };
};

it('passes the configured ages and batch, and stops after a round that was not full', async () => {
  const { rpc, calls } = fakeRpc([
    { idempotency_keys: 2, webhook_deliveries: 0, events: 1 },
    { idempotency_keys: 9, webhook_deliveries: 9, events: 9 },
  ]);
  const r = await makeApiRetention({ rpc, log, ages, batch: 3 }).run();
  expect(calls).toEqual([
    {
      p_idempotency_keys_seconds: 604_800,
      p_events_seconds: 2_592_000,
      p_deliveries_seconds: 1_209_600,
      p_batch: 3,
    },
  ]);
  expect(r).toEqual({ idempotencyKeys: 2, webhookDeliveries: 0, events: 1 });
});

it('calls again while any kind came back full, up to maxRounds, and sums what went', async () => {
  const full = { idempotency_keys: 0, webhook_deliveries: 0, events: 3 };
  const { rpc, calls } = fakeRpc([full, { ...full, idempotency_keys: 3, events: 1 }, full, full, full]);
  const r = await makeApiRetention({ rpc, log, ages, batch: 3, maxRounds: 4 }).run();
  expect(calls).toHaveLength(4);
  expect(r).toEqual({ idempotencyKeys: 3, webhookDeliveries: 0, events: 10 });
});

it('the configuration refuses ages below the SQL floors and defaults to 7 / 30 / 30 days, hourly', () => {
  const d = configSchema.parse({});
  expect([
    d.IDEMPOTENCY_KEEP_SECONDS,
    d.EVENTS_KEEP_SECONDS,
    d.DELIVERIES_KEEP_SECONDS,
    d.RETENTION_EVERY_MS,
  ]).toEqual([604_800, 2_592_000, 2_592_000, 3_600_000]);
  for (const [k, v] of [
    ['IDEMPOTENCY_KEEP_SECONDS', '86399'],
    ['EVENTS_KEEP_SECONDS', '604799'],
    ['DELIVERIES_KEEP_SECONDS', '3600'],
  ] as const)
    expect(configSchema.safeParse({ [k]: v }).error?.issues.map((i) => i.path.join('.'))).toEqual([k]);
});
