import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
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
 * Every audited secret function takes its row locks in one order: deployment, then secrets (by
 * id), then bindings, then the org's audit chain head, last. A function that locked the chain head
 * and then a secret row deadlocked with a read or revoke that held the secret and waited for the
 * chain head (SQLSTATE 40P01, one of them killed after deadlock_timeout).
 *
 * Each actor has its own connection, as cortex_orchestrator. The staged tests force the interleaving
 * that deadlocked: a third session holds the chain head, the actors queue up behind it in a fixed
 * order, and then it lets go. The stress test runs the same calls at once, many times.
 */
const DEADLOCK = '40P01';

let admin: Pool;
let pg: ReturnType<typeof makePgRpc>;
let actors: Client[] = [];

const actor = async (): Promise<Client> => {
  const c = new Client({ connectionString: testDatabaseUrl(), statement_timeout: 30_000 });
  await c.connect();
  await c.query('set role cortex_orchestrator');
  actors.push(c);
  return c;
};

beforeAll(() => {
  admin = new Pool({ connectionString: testDatabaseUrl(), max: 2 });
  pg = makePgRpc({ connectionString: testDatabaseUrl(), max: 2 });
});
afterEach(async () => {
  await Promise.all(actors.map((c) => c.end()));
  actors = [];
});
afterAll(async () => {
  await pg.close();
  await admin.end();
});

interface Fixture {
  orgId: string;
  /** the deployment being deleted */
  depA: string;
  /** another deployment of the same org */
  depB: string;
  /** secrets scoped to depA, each bound to it */
  scoped: string[];
  /** an org-wide secret bound to both deployments */
  orgWide: string;
}

/** Each scoped secret's open revocation (20261204100000_revocations.sql), opened by the fixture. */
const revocationOf = new Map<string, string>();
const fixture = async (scopedCount = 2): Promise<Fixture> => {
  const secrets = makeSecretsService({ rpc: pg.rpc, fingerprintKey });
  const { orgId, deploymentId: depA } = await makeOrgWithDeployment(pg.rpc);
  const tag = randomUUID().slice(0, 8);
  const depB = (
    await pg.rpc<{ id: string }>('deployments__create', {
      p_org_id: orgId,
      p_name: `agent-b-${tag}`,
      p_subdomain: `t-b-${tag}`,
    })
  ).id;
  const scoped: string[] = [];
  for (let i = 0; i < scopedCount; i++) {
    const meta = await secrets.create({
      orgId,
      deploymentId: depA,
      name: `scoped-${i}`,
      provider: 'other',
      value: new Secret(canary('other')),
    });
    await secrets.bind(depA, `SCOPED_${i}`, meta.secretId);
    scoped.push(meta.secretId);
    // a revoke acts only under a revocation requested (and committed) first
    const req = await pg.rpc<{ revocation_id: string }>('secrets__request_revoke', {
      p_secret_id: meta.secretId,
      p_actor: 'test:lock-order',
    });
    revocationOf.set(meta.secretId, req.revocation_id);
  }
  const orgWide = (
    await secrets.create({ orgId, name: 'org-wide', provider: 'other', value: new Secret(canary('other')) })
  ).secretId;
  await secrets.bind(depA, 'ORG_WIDE', orgWide);
  await secrets.bind(depB, 'ORG_WIDE', orgWide);
  return { orgId, depA, depB, scoped, orgWide };
};

const deleteForDeployment = (c: Client, depId: string) =>
  c.query(`select public.secrets__delete_for_deployment($1::uuid, 'test:lock-order') as r`, [depId]);
/** A read from another deployment that names depA's secrets: denied, but it locks them first. */
const readNaming = (c: Client, depId: string, secretIds: string[]) =>
  c.query(`select public.deployment_secrets__read($1::uuid, $2::uuid[], 'test:lock-order') as r`, [
    depId,
    secretIds,
  ]);
/** A read of everything bound, with its intent committed first (as the secrets service does). */
const readAll = async (c: Client, depId: string) => {
  const intent = await c.query<{ id: string }>(
    `select public.deployment_secrets__intend_read($1::uuid, null, 'test:lock-order') ->> 'intent_id' as id`,
    [depId],
  );
  return c.query(
    `select public.deployment_secrets__read($1::uuid, null, 'test:lock-order', p_intent_id => $2::uuid) as r`,
    [depId, intent.rows[0]?.id],
  );
};
const revoke = (c: Client, secretId: string) =>
  c.query(`select public.secrets__revoke($1::uuid, $2::uuid, 'test:lock-order') as r`, [
    secretId,
    revocationOf.get(secretId),
  ]);

const pidOf = async (c: Client): Promise<number> =>
  (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;

/** Until the backend waits on a row lock (a tuple, or the transaction holding one). */
const blockedOnRow = async (pid: number): Promise<void> => {
  for (let i = 0; i < 1000; i++) {
    const r = await admin.query<{ wait_event_type: string | null; wait_event: string | null }>(
      'select wait_event_type, wait_event from pg_stat_activity where pid = $1',
      [pid],
    );
    const w = r.rows[0];
    if (w?.wait_event_type === 'Lock' && (w.wait_event === 'tuple' || w.wait_event === 'transactionid'))
      return;
    await sleep(5);
  }
  throw new Error(`backend ${pid} never waited on a row lock`);
};

const settle = <T>(p: Promise<T>): Promise<PromiseSettledResult<T>> =>
  p.then(
    (value): PromiseSettledResult<T> => ({ status: 'fulfilled', value }),
    (reason: unknown): PromiseSettledResult<T> => ({ status: 'rejected', reason }),
  );

/**
 * Holds the org's chain head (as an audit append does) while `first` and then `second` start and
 * block, each on its own connection; then lets go and settles both. With the chain head locked
 * before a secret, `first` (resumed first) would then wait for a row `second` holds.
 */
const staged = async <A, B>(
  orgId: string,
  first: (c: Client) => Promise<A>,
  second: (c: Client) => Promise<B>,
): Promise<[PromiseSettledResult<A>, PromiseSettledResult<B>]> => {
  const [c1, c2] = [await actor(), await actor()];
  const [pid1, pid2] = [await pidOf(c1), await pidOf(c2)];
  const holder = await admin.connect();
  try {
    await holder.query('begin');
    const head = await holder.query(
      'select 1 from public.secret_access_log_chains where chain_id = $1 for update',
      [orgId],
    );
    expect(head.rowCount).toBe(1);
    const settled1 = settle(first(c1));
    await blockedOnRow(pid1);
    const settled2 = settle(second(c2));
    await blockedOnRow(pid2);
    await holder.query('commit');
    return [await settled1, await settled2];
  } catch (err) {
    await holder.query('rollback');
    throw err;
  } finally {
    holder.release();
  }
};

const errorCodes = (results: PromiseSettledResult<unknown>[]): string[] =>
  results.flatMap((r) =>
    r.status === 'rejected'
      ? [String((r.reason as { code?: unknown }).code ?? (r.reason as Error).message)]
      : [],
  );

const result = <T>(r: PromiseSettledResult<{ rows: { r: T }[] }>): T => {
  if (r.status === 'rejected') throw r.reason;
  return r.value.rows[0]!.r;
};

const verifies = async (orgId: string): Promise<boolean> =>
  (await pg.rpc<{ ok: boolean }>('secret_access_log__verify', { p_org_id: orgId })).ok;

/** Audit rows of one deployment, counted by operation/outcome. */
const auditCounts = async (orgId: string, depId: string): Promise<Record<string, number>> =>
  Object.fromEntries(
    (
      await admin.query<{ key: string; n: number }>(
        `select operation || '/' || outcome as key, count(*)::int as n from public.secret_access_log
          where org_id = $1 and deployment_id = $2 group by 1`,
        [orgId, depId],
      )
    ).rows.map((r) => [r.key, r.n]),
  );

const added = (after: Record<string, number>, before: Record<string, number>): Record<string, number> =>
  Object.fromEntries(
    Object.entries(after)
      .map(([k, n]): [string, number] => [k, n - (before[k] ?? 0)])
      .filter(([, n]) => n !== 0),
  );

describe('audit lock order', () => {
  jest.setTimeout(60_000);

  it('a delete queued on the chain head, then a read naming its secrets from another deployment: no deadlock', async () => {
    const f = await fixture();
    const beforeA = await auditCounts(f.orgId, f.depA);
    const beforeB = await auditCounts(f.orgId, f.depB);
    const [del, read] = await staged(
      f.orgId,
      (c) => deleteForDeployment(c, f.depA),
      (c) => readNaming(c, f.depB, f.scoped),
    );
    expect(errorCodes([del, read])).toEqual([]);
    expect(result(del)).toEqual({ deleted: f.scoped.length });
    expect(result<{ status: string }>(read).status).toBe('denied');
    // both committed their audit rows, and the chain they share still verifies
    expect(added(await auditCounts(f.orgId, f.depA), beforeA)).toEqual({
      'unbind/success': f.scoped.length + 1,
      'delete/success': f.scoped.length,
    });
    expect(added(await auditCounts(f.orgId, f.depB), beforeB)).toEqual({ 'read/denied': f.scoped.length });
    expect(await verifies(f.orgId)).toBe(true);
  });

  it('a read naming the secrets queued first, then the delete: no deadlock either way round', async () => {
    const f = await fixture();
    const [read, del] = await staged(
      f.orgId,
      (c) => readNaming(c, f.depB, f.scoped),
      (c) => deleteForDeployment(c, f.depA),
    );
    expect(errorCodes([read, del])).toEqual([]);
    expect(result(del)).toEqual({ deleted: f.scoped.length });
    expect(await verifies(f.orgId)).toBe(true);
  });

  it('a delete queued on the chain head, then a revoke of one of its secrets: no deadlock', async () => {
    const f = await fixture();
    const [del, rev] = await staged(
      f.orgId,
      (c) => deleteForDeployment(c, f.depA),
      (c) => revoke(c, f.scoped[0]!),
    );
    expect(errorCodes([del, rev])).toEqual([]);
    expect(result(del)).toEqual({ deleted: f.scoped.length });
    // the delete went first, so the revoke found the secret deleted and changed nothing
    expect(result<{ status: string }>(rev).status).toBe('deleted');
    expect(await verifies(f.orgId)).toBe(true);
  });

  it('a revoke queued first, then the delete: no deadlock either way round', async () => {
    const f = await fixture();
    const [rev, del] = await staged(
      f.orgId,
      (c) => revoke(c, f.scoped[0]!),
      (c) => deleteForDeployment(c, f.depA),
    );
    expect(errorCodes([rev, del])).toEqual([]);
    expect(result<{ status: string }>(rev).status).toBe('revoked');
    // a revoked secret is still the deployment's, and is deleted with the others
    expect(result(del)).toEqual({ deleted: f.scoped.length });
    expect(await verifies(f.orgId)).toBe(true);
  });

  it('delete, reads and revoke of one org run at once, many times, without a deadlock', async () => {
    const rounds = 40;
    const [cDel, cRead, cReadAll, cRevoke] = [await actor(), await actor(), await actor(), await actor()];
    const codes: string[] = [];
    for (let i = 0; i < rounds; i++) {
      const f = await fixture(3);
      const settled = await Promise.allSettled([
        deleteForDeployment(cDel, f.depA),
        // named in reverse: the read locks them in id order whatever order they are asked in
        readNaming(cRead, f.depB, [...f.scoped].reverse()),
        readAll(cReadAll, f.depA),
        revoke(cRevoke, f.scoped[i % f.scoped.length]!),
      ]);
      codes.push(...errorCodes(settled));
      expect(await verifies(f.orgId)).toBe(true);
    }
    expect(codes.filter((c) => c === DEADLOCK)).toEqual([]);
    expect(codes).toEqual([]);
  });
});
