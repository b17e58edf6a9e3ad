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
 * A read whose transaction never commits still leaves a committed trace (security review, item
 * 6). A caller holding the orchestrator's credentials wraps the read in its own transaction and
 * rolls it back: the read's audit rows go, but the intent it had to commit first stays, and no read
 * row names it. Without a committed intent no value comes back at all.
 */
let pg: ReturnType<typeof makePgRpc>;
let admin: Pool;

beforeAll(() => {
  pg = makePgRpc({ connectionString: testDatabaseUrl(), max: 2 });
  admin = new Pool({ connectionString: testDatabaseUrl(), max: 2 });
});
afterAll(async () => {
  await pg.close();
  await admin.end();
});

/** A deployment with one bound secret; a session of its own as cortex_orchestrator. */
const setup = async () => {
  const secrets = makeSecretsService({ rpc: pg.rpc, fingerprintKey });
  const { deploymentId } = await makeOrgWithDeployment(pg.rpc);
  const value = canary('other');
  const { secretId } = await secrets.create({
    orgId: (await pg.rpc<{ org_id: string }>('deployments__get', { p_deployment_id: deploymentId })).org_id,
    name: 'k',
    provider: 'other',
    value: new Secret(value),
  });
  await secrets.bind(deploymentId, 'KEY', secretId);
  const c = new Client({ connectionString: testDatabaseUrl() });
  await c.connect();
  await c.query('set role cortex_orchestrator');
  return { deploymentId, secretId, value, c };
};

const intend = async (c: Client, deploymentId: string, actor: string): Promise<string> => {
  const r = await c.query<{ id: string }>(
    `select public.deployment_secrets__intend_read($1::uuid, null, $2) ->> 'intent_id' as id`,
    [deploymentId, actor],
  );
  return r.rows[0]!.id;
};
const read = async (c: Client, deploymentId: string, intentId: string | null) =>
  (
    await c.query<{ r: { status: string; secrets?: { value: string }[] } }>(
      `select public.deployment_secrets__read($1::uuid, p_actor => 'test:intent', p_intent_id => $2::uuid) as r`,
      [deploymentId, intentId],
    )
  ).rows[0]!.r;

/** What stays committed about a deployment's reads: its intents, and the read rows of the log. */
const trace = async (deploymentId: string) => {
  const intents = await admin.query<{ id: string; actor: string }>(
    'select id::text, actor from public.secret_read_intents where deployment_id = $1 order by at',
    [deploymentId],
  );
  const reads = await admin.query<{ outcome: string; reason: string }>(
    `select outcome, reason from public.secret_access_log where deployment_id = $1 and operation = 'read' order by id`,
    [deploymentId],
  );
  return { intents: intents.rows, reads: reads.rows };
};

describe('a read whose transaction rolls back', () => {
  it('returns the value but leaves its committed intent, which no read row names', async () => {
    const { deploymentId, value, c } = await setup();
    try {
      const intentId = await intend(c, deploymentId, 'test:rollback');
      await c.query('begin');
      const r = await read(c, deploymentId, intentId);
      await c.query('rollback');
      expect(r.secrets?.[0]?.value).toBe(value);
      const t = await trace(deploymentId);
      expect(t.intents).toEqual([{ id: intentId, actor: 'test:rollback' }]);
      expect(t.reads).toEqual([]); // the read's own audit row rolled back …
      // … so the intent with no read naming it is the trace
    } finally {
      await c.end();
    }
  });

  it('leaves the same trace when only a savepoint rolls back and the transaction commits', async () => {
    const { deploymentId, value, c } = await setup();
    try {
      const intentId = await intend(c, deploymentId, 'test:savepoint');
      await c.query('begin');
      await c.query('savepoint s');
      const r = await read(c, deploymentId, intentId);
      await c.query('rollback to savepoint s');
      await c.query('commit');
      expect(r.secrets?.[0]?.value).toBe(value);
      const t = await trace(deploymentId);
      expect(t.intents.map((i) => i.id)).toEqual([intentId]);
      expect(t.reads).toEqual([]);
    } finally {
      await c.end();
    }
  });

  it('gets no value when the intent is made inside the same transaction (or a savepoint of it)', async () => {
    const { deploymentId, c } = await setup();
    try {
      await c.query('begin');
      const own = await intend(c, deploymentId, 'test:same-txn');
      const r1 = await read(c, deploymentId, own);
      await c.query('savepoint s');
      const inSavepoint = await intend(c, deploymentId, 'test:same-txn');
      await c.query('release savepoint s');
      const r2 = await read(c, deploymentId, inSavepoint);
      await c.query('rollback');
      expect([r1.status, r2.status]).toEqual(['denied', 'denied']);
      expect(r1.secrets).toBeUndefined();
      expect(r2.secrets).toBeUndefined();
    } finally {
      await c.end();
    }
  });

  it('a committed read names its intent in its audit row (control)', async () => {
    const { deploymentId, value, c } = await setup();
    try {
      const intentId = await intend(c, deploymentId, 'test:commit');
      const r = await read(c, deploymentId, intentId);
      expect(r.secrets?.[0]?.value).toBe(value);
      const t = await trace(deploymentId);
      expect(t.reads).toEqual([{ outcome: 'success', reason: `env_var KEY; intent ${intentId}` }]);
    } finally {
      await c.end();
    }
  });
});
