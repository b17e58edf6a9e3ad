import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, Pool } from 'pg';
import { testDatabaseUrl } from '../support/db';

/**
 * Review R12 finding 4 (issue 11): one health event, and one webhook delivery per active endpoint,
 * per (revocation, deployment) and per (rotation, deployment), whatever the callers' isolation
 * level. The functions look for the event under the deployment's row lock and insert it otherwise;
 * under REPEATABLE READ a transaction whose snapshot predates the other's commit does not see that
 * event. Two sessions as cortex_orchestrator, each in a REPEATABLE READ transaction with its
 * snapshot taken: the first records the event, the second calls while the first holds the row lock
 * (and so waits), the first commits, the second goes on. Since 20261206090000/090050/090100 the second
 * gets 40001 (retried by the callers: healthRetryable) and nothing is written; its retry gets
 * `existing`. Before, it wrote a second event and a second set of deliveries.
 */
const SERIALIZATION_FAILURE = '40001';

let admin: Pool;
let sessions: Client[] = [];

const session = async (): Promise<Client> => {
  const c = new Client({ connectionString: testDatabaseUrl(), statement_timeout: 30_000 });
  await c.connect();
  await c.query('set role cortex_orchestrator');
  sessions.push(c);
  return c;
};

beforeAll(() => {
  admin = new Pool({ connectionString: testDatabaseUrl(), max: 2 });
});
afterEach(async () => {
  await Promise.all(sessions.map((c) => c.end()));
  sessions = [];
});
afterAll(async () => {
  await admin.end();
});

interface Fixture {
  orgId: string;
  depId: string;
  /** an open revocation of a secret bound to the deployment */
  revocationId: string;
  /** a running rotation whose row of the deployment is rolled_back unverified, with no event yet */
  rotationId: string;
}

/** A value shaped as a fingerprint (64 hex); the function stores it, the test never reads it. */
const fingerprint = (): string => randomUUID().replace(/-/g, '').repeat(2);

/**
 * Org with a ready deployment, two active webhook endpoints and a disabled one. The rotation row is
 * set rolled_back by hand: set_state would record the event itself (20261205130000).
 */
const fixture = async (): Promise<Fixture> => {
  const tag = randomUUID().slice(0, 8);
  const q = async (sql: string, args: unknown[]): Promise<string> =>
    (await admin.query<{ v: string }>(sql, args)).rows[0]!.v;
  const orgId = await q(`select public.organizations__create($1) ->> 'id' as v`, [`test-org-${tag}`]);
  const depId = await q(`select public.deployments__create($1, $2, $3) ->> 'id' as v`, [
    orgId,
    `agent-${tag}`,
    `t-${tag}`,
  ]);
  const secret = async (name: string): Promise<string> =>
    q(`select public.secrets__create($1, $2, 'other', $3, $4) ->> 'secret_id' as v`, [
      orgId,
      name,
      `value-${randomUUID()}`,
      fingerprint(),
    ]);
  const revoked = await secret('revoked');
  const rotated = await secret('rotated');
  await admin.query(`select public.deployment_secrets__bind($1, 'REVOKED_KEY', $2)`, [depId, revoked]);
  await admin.query(`select public.deployment_secrets__bind($1, 'ROTATED_KEY', $2)`, [depId, rotated]);
  await admin.query(`update public.deployments set status = 'provisioning' where id = $1`, [depId]);
  await admin.query(`update public.deployments set status = 'ready' where id = $1`, [depId]);
  const endpoints: string[] = [];
  for (const n of [1, 2, 3])
    endpoints.push(
      await q(`select public.webhook_endpoints__create($1, $2) ->> 'id' as v`, [
        orgId,
        `https://hooks.example.com/${tag}/${n}`,
      ]),
    );
  await admin.query(`select public.webhook_endpoints__disable($1, $2)`, [orgId, endpoints[2]]);
  const revocationId = await q(
    `select public.secrets__request_revoke($1, null, null, 'test:health-unique') ->> 'revocation_id' as v`,
    [revoked],
  );
  const rotationId = randomUUID();
  await admin.query(
    `select public.secret_rotations__start($1, $2, $3, $4, 3600, false, 'test:health-unique', $5, p_org_id => $6)`,
    [rotationId, rotated, `value-${randomUUID()}`, fingerprint(), `rotate-${tag}`, orgId],
  );
  await admin.query(
    `update public.secret_rotation_deployments set state = 'rolled_back', reason = 'unhealthy_rollback_unverified'
      where rotation_id = $1 and deployment_id = $2`,
    [rotationId, depId],
  );
  return { orgId, depId, revocationId, rotationId };
};

const pidOf = async (c: Client): Promise<number> =>
  (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;

/** Until the backend waits on a lock another transaction holds (the deployment's row). */
const blocked = async (pid: number): Promise<void> => {
  for (let i = 0; i < 1000; i++) {
    const r = await admin.query<{ wait_event_type: string | null }>(
      'select wait_event_type from pg_stat_activity where pid = $1',
      [pid],
    );
    if (r.rows[0]?.wait_event_type === 'Lock') return;
    await sleep(5);
  }
  throw new Error(`backend ${pid} never waited on a lock`);
};

const settle = <T>(p: Promise<T>): Promise<PromiseSettledResult<T>> =>
  p.then(
    (value): PromiseSettledResult<T> => ({ status: 'fulfilled', value }),
    (reason: unknown): PromiseSettledResult<T> => ({ status: 'rejected', reason }),
  );

interface Recorded {
  id: string;
  existing: boolean;
}

type Producer = (c: Client, f: Fixture) => Promise<Recorded>;

const call = async (c: Client, sql: string, args: unknown[]): Promise<Recorded> => {
  const r = await c.query<{ r: { id: number | string; existing: boolean } }>(sql, args);
  const out = r.rows[0]!.r;
  return { id: String(out.id), existing: out.existing };
};
const revokeHealth: Producer = (c, f) =>
  call(c, `select public.deployment_events__record_health($1, $2, 'kept_unhealthy') as r`, [
    f.depId,
    f.revocationId,
  ]);
const rotationHealth: Producer = (c, f) =>
  call(c, `select public.deployment_events__record_rotation_health($1, $2, 'rollback_unverified') as r`, [
    f.depId,
    f.rotationId,
  ]);

/** The deployment's health events (ids) of the revocation or rotation, and their deliveries. */
const recorded = async (f: Fixture, key: 'revocation_id' | 'rotation_id') => {
  const value = key === 'revocation_id' ? f.revocationId : f.rotationId;
  const events = await admin.query<{ id: string }>(
    `select id::text from public.deployment_events
      where deployment_id = $1 and kind = 'health' and payload ->> '${key}' = $2 order by id`,
    [f.depId, value],
  );
  const deliveries = await admin.query<{ n: number }>(
    `select count(*)::int as n from public.webhook_deliveries where event_id = any($1::bigint[])`,
    [events.rows.map((r) => r.id)],
  );
  return { events: events.rows.map((r) => r.id), deliveries: deliveries.rows[0]!.n };
};

describe.each([
  ['revoke health (deployment_events__record_health)', revokeHealth, 'revocation_id' as const],
  ['rotation health (deployment_events__record_rotation_health)', rotationHealth, 'rotation_id' as const],
])('%s in two REPEATABLE READ transactions', (_name, produce, key) => {
  jest.setTimeout(60_000);

  it('one event and one delivery per active endpoint; the second gets 40001, its retry the same event', async () => {
    const f = await fixture();
    const [a, b] = [await session(), await session()];
    const pidB = await pidOf(b);
    for (const c of [a, b]) {
      await c.query('begin isolation level repeatable read');
      await c.query('select 1'); // the snapshot: taken before either records anything
    }
    const first = await produce(a, f);
    expect(first.existing).toBe(false);
    const second = settle(produce(b, f)); // waits for the deployment's row lock a holds
    await blocked(pidB);
    await a.query('commit');
    const outcome = await second;
    await b.query(outcome.status === 'fulfilled' ? 'commit' : 'rollback');
    expect(await recorded(f, key)).toEqual({ events: [first.id], deliveries: 2 });

    // Postgres refuses the insert whose conflicting row is outside the snapshot (ON CONFLICT DO
    // NOTHING under REPEATABLE READ): a serialization failure, nothing written by b
    expect(outcome.status).toBe('rejected');
    if (outcome.status === 'rejected') {
      expect((outcome.reason as { code?: unknown }).code).toBe(SERIALIZATION_FAILURE);
      expect((outcome.reason as Error).message).toMatch(/could not serialize access/);
    }

    // the caller's retry (a new transaction) finds the event and sends nothing
    await b.query('begin isolation level repeatable read');
    expect(await produce(b, f)).toEqual({ id: first.id, existing: true });
    await b.query('commit');
    expect(await recorded(f, key)).toEqual({ events: [first.id], deliveries: 2 });
  });
});
