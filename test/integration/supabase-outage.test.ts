import { randomUUID } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { Pool } from 'pg';
import { makePgRpc } from '../../orchestrator/db/pg-rpc';
import { classify } from '../../orchestrator/errors';
import { makeSupabaseRpc } from '../../orchestrator/db/supabase-rpc';
import { Secret } from '../../orchestrator/secret';
import { makeMemoryFingerprintKey } from '../../orchestrator/secrets/fingerprint';
import { makeSecretsService } from '../../orchestrator/secrets/secrets-service';
import { canary } from '../support/canary';
import { makeOrgWithDeployment, testDatabaseUrl } from '../support/db';
import { signJwt, startPostgrestStandIn } from '../support/postgrest-rpc';
import { rejection } from '../support/rejection';

/** The fingerprint key (kept outside the database); in memory for the test. */
const fingerprintKey = makeMemoryFingerprintKey();

/**
 * Outages as the supabase-js adapter meets them over HTTP: PostgREST up but its database down
 * (PGRST000, 503) or its pool exhausted (PGRST003, 504), and PostgREST itself unreachable (the
 * fetch fails). Both are `db_unavailable`,
 * which the pipeline retries, as the README promises.
 */
const jwtSecret = randomUUID() + randomUUID();
const key = signJwt({ role: 'cortex_orchestrator' }, jwtSecret);

/** A port nobody listens on for the test's duration (bound, then closed just before use). */
const closedPort = async (): Promise<number> => {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
};

describe('supabase-js adapter during an outage', () => {
  it('PostgREST answering PGRST000 (its database down) is db_unavailable, retried', async () => {
    const standIn = await startPostgrestStandIn({
      databaseUrl: `postgres://postgres@127.0.0.1:${await closedPort()}/cortex?sslmode=disable`,
      jwtSecret,
    });
    try {
      const { rpc } = makeSupabaseRpc({ url: standIn.url, serviceRoleKey: key });
      const err = await rejection(rpc('organizations__create', { p_name: 'outage' }));
      expect([err.code, classify(err)]).toEqual(['db_unavailable', 'retry']);
      expect(err.message).toBe(
        'organizations__create: PostgREST PGRST000: Database connection error. Retrying the connection.',
      );
    } finally {
      await standIn.close();
    }
  });

  it('PostgREST out of pool connections (PGRST003, 504) is db_unavailable, retried', async () => {
    // One pool connection, held by a read stuck behind org A's chain head (locked here): the next
    // call waits for a connection past the acquisition timeout.
    const pg = makePgRpc({ connectionString: testDatabaseUrl(), max: 1 });
    const admin = new Pool({ connectionString: testDatabaseUrl(), max: 1 });
    const standIn = await startPostgrestStandIn({
      databaseUrl: testDatabaseUrl(),
      jwtSecret,
      poolSize: 1,
      poolAcquireTimeoutMs: 300,
    });
    const holder = await admin.connect();
    try {
      const secrets = makeSecretsService({ rpc: pg.rpc, fingerprintKey });
      const { orgId, deploymentId } = await makeOrgWithDeployment(pg.rpc);
      const meta = await secrets.create({
        orgId,
        name: 'k',
        provider: 'other',
        value: new Secret(canary('other')),
      });
      await secrets.bind(deploymentId, 'API_KEY', meta.secretId);
      const { rpc } = makeSupabaseRpc({ url: standIn.url, serviceRoleKey: key });
      await holder.query('begin');
      await holder.query('select 1 from public.secret_access_log_chains where chain_id = $1 for update', [
        orgId,
      ]);
      const stuck = makeSecretsService({ rpc, fingerprintKey })
        .readForDeployment(deploymentId)
        .catch((e: unknown) => e);
      await new Promise((r) => setTimeout(r, 200)); // the stuck read has the only connection
      const err = await rejection(rpc('organizations__create', { p_name: 'outage' }));
      expect([err.code, classify(err)]).toEqual(['db_unavailable', 'retry']);
      expect(err.message).toBe(
        'organizations__create: PostgREST PGRST003: Timed out acquiring connection from connection pool.',
      );
      await holder.query('rollback');
      expect(await stuck).toMatchObject({ status: 'ok' });
    } finally {
      holder.release();
      await standIn.close();
      await admin.end();
      await pg.close();
    }
  });

  it('PostgREST unreachable (fetch fails) is db_unavailable, retried', async () => {
    const { rpc } = makeSupabaseRpc({ url: `http://127.0.0.1:${await closedPort()}`, serviceRoleKey: key });
    const err = await rejection(rpc('organizations__create', { p_name: 'outage' }));
    expect([err.code, classify(err)]).toEqual(['db_unavailable', 'retry']);
    expect(err.message).toMatch(/^organizations__create: .*fetch failed/);
  });
});
