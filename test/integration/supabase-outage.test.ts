import { randomUUID } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { classify } from '../../orchestrator/errors';
import { makeSupabaseRpc } from '../../orchestrator/db/supabase-rpc';
import { signJwt, startPostgrestStandIn } from '../support/postgrest-rpc';
import { rejection } from '../support/rejection';

/**
 * Outages as the supabase-js adapter meets them over HTTP: PostgREST up but its database down
 * (PGRST000, 503), and PostgREST itself unreachable (the fetch fails). Both are `db_unavailable`,
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

  it('PostgREST unreachable (fetch fails) is db_unavailable, retried', async () => {
    const { rpc } = makeSupabaseRpc({ url: `http://127.0.0.1:${await closedPort()}`, serviceRoleKey: key });
    const err = await rejection(rpc('organizations__create', { p_name: 'outage' }));
    expect([err.code, classify(err)]).toEqual(['db_unavailable', 'retry']);
    expect(err.message).toMatch(/^organizations__create: .*fetch failed/);
  });
});
