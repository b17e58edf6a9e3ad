import { Client, Pool } from 'pg';
import { makePgRpc } from '../../orchestrator/db/pg-rpc';
import { Secret } from '../../orchestrator/secret';
import { makeMemoryFingerprintKey } from '../../orchestrator/secrets/fingerprint';
import { makeSecretsService } from '../../orchestrator/secrets/secrets-service';
import { canary } from '../support/canary';
import { makeOrgWithDeployment, testDatabaseUrl } from '../support/db';

/** The fingerprint key (kept outside the database); in memory for the test. */
const fingerprintKey = makeMemoryFingerprintKey();

/**
 * The audit log is chained per organisation, with a chain head locked only while an
 * organisation's rows are appended: while org A's head is held, an audited read for org B
 * finishes; the same read for org A waits (the control, under a short lock_timeout).
 */
let admin: Pool;
let pg: ReturnType<typeof makePgRpc>;
const clients: Client[] = [];

beforeAll(() => {
  admin = new Pool({ connectionString: testDatabaseUrl(), max: 2 });
  pg = makePgRpc({ connectionString: testDatabaseUrl(), max: 2 });
});
afterAll(async () => {
  await Promise.all(clients.map((c) => c.end()));
  await pg.close();
  await admin.end();
});

/** An org with a deployment and one bound secret; returns what a read needs and the value. */
const orgWithSecret = async () => {
  const secrets = makeSecretsService({ rpc: pg.rpc, fingerprintKey });
  const { orgId, deploymentId } = await makeOrgWithDeployment(pg.rpc);
  const value = canary('other');
  const meta = await secrets.create({ orgId, name: 'k', provider: 'other', value: new Secret(value) });
  await secrets.bind(deploymentId, 'API_KEY', meta.secretId);
  return { orgId, deploymentId, value };
};

/** An orchestrator session that gives up on any lock after `ms`. */
const session = async (ms: number): Promise<Client> => {
  const c = new Client({ connectionString: testDatabaseUrl() });
  await c.connect();
  clients.push(c);
  await c.query('set role cortex_orchestrator');
  await c.query(`set lock_timeout = '${ms}ms'`);
  return c;
};

/** The audited read as the secrets service makes it: intent committed first, then the read. */
const read = async (c: Client, depId: string): Promise<{ status: string; secrets?: unknown }> => {
  const intent = await c.query<{ id: string }>(
    `select public.deployment_secrets__intend_read($1::uuid, null, 'test:chain-heads') ->> 'intent_id' as id`,
    [depId],
  );
  const r = await c.query<{ r: { status: string; secrets?: unknown } }>(
    `select public.deployment_secrets__read($1::uuid, null, 'test:chain-heads', p_intent_id => $2::uuid) as r`,
    [depId, intent.rows[0]?.id],
  );
  return r.rows[0]!.r;
};

describe('per-organisation audit chain heads', () => {
  it("a read for org B finishes while org A's chain head is held; org A's own read waits", async () => {
    const a = await orgWithSecret();
    const b = await orgWithSecret();
    const holder = await admin.connect();
    try {
      await holder.query('begin');
      const head = await holder.query(
        'select 1 from public.secret_access_log_chains where chain_id = $1 for update',
        [a.orgId],
      );
      expect(head.rowCount).toBe(1);

      const forB = await read(await session(2_000), b.deploymentId);
      expect(forB.status).toBe('ok');
      expect(JSON.stringify(forB.secrets)).toContain(b.value);

      // The control: the same read for org A needs A's head, and gives up on it (55P03).
      const forA = await read(await session(300), a.deploymentId).catch((e: unknown) => e);
      expect((forA as { code?: string }).code).toBe('55P03');

      await holder.query('commit');
    } catch (err) {
      await holder.query('rollback');
      throw err;
    } finally {
      holder.release();
    }
    // Released: org A reads again.
    expect((await read(await session(2_000), a.deploymentId)).status).toBe('ok');
  });
});
