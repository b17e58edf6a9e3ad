import type { Config } from '../config';
import { makePgRpc, type PgRpcOptions } from './pg-rpc';
import type { Rpc } from './rpc';
import { makeSupabaseRpc } from './supabase-rpc';

/** For composition roots only: the rpc adapter the configuration names, and how to release it. */
export const makeRpcFromConfig = (config: Config): { rpc: Rpc; close: () => Promise<void> } => {
  if (config.RPC_ADAPTER === 'supabase') {
    // The schema guarantees both are present for this adapter.
    const { rpc } = makeSupabaseRpc({
      url: config.SUPABASE_URL ?? '',
      serviceRoleKey: config.SUPABASE_SERVICE_ROLE_KEY ?? '',
      requestTimeoutMs: config.DATABASE_QUERY_TIMEOUT_MS ?? config.DATABASE_STATEMENT_TIMEOUT_MS + 5_000,
    });
    return { rpc, close: async () => undefined };
  }
  return makePgRpc(pgRpcOptions(config));
};

/** The direct adapter's options from the configuration (the DATABASE_* variables). */
export const pgRpcOptions = (config: Config): PgRpcOptions => ({
  connectionString: config.DATABASE_URL,
  max: config.DATABASE_POOL_SIZE,
  role: config.DATABASE_ROLE,
  statementTimeoutMs: config.DATABASE_STATEMENT_TIMEOUT_MS,
  queryTimeoutMs: config.DATABASE_QUERY_TIMEOUT_MS,
  connectTimeoutMs: config.DATABASE_CONNECT_TIMEOUT_MS,
  keepAliveIdleMs: config.DATABASE_KEEPALIVE_IDLE_MS,
});
