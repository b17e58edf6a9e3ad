import { Pool, type PoolConfig } from 'pg';
import { OrchestratorError, TRANSIENT_SYSTEM_CODES } from '../errors';
import { checkCall, mapDbError, type Rpc } from './rpc';

export interface PgRpc {
  readonly rpc: Rpc;
  readonly close: () => Promise<void>;
}

/**
 * The direct Postgres adapter: `select public.<fn>(p_a => $1, …)`. Values always travel as bind
 * parameters, so statement logging never sees a secret literal.
 */
export const makePgRpc = (opts: {
  connectionString: string;
  max?: number;
  statementTimeoutMs?: number;
  /** The role every session assumes (`SET ROLE` at connection start); default `cortex_orchestrator`. */
  role?: string;
}): PgRpc => {
  const role = opts.role ?? 'cortex_orchestrator';
  if (!/^[a-z_][a-z0-9_]*$/.test(role))
    throw new OrchestratorError('config_invalid', 'DATABASE_ROLE: must be a plain role name');
  const config: PoolConfig = {
    connectionString: opts.connectionString,
    // Even when the login user is more (locally, the superuser), the orchestrator acts as its own
    // role: it can call the audited functions, but cannot read the vault, write a table, disable
    // the audit trigger or bypass the functions' grants.
    options: `-c role=${role}`,
    max: opts.max ?? 10,
    statement_timeout: opts.statementTimeoutMs ?? 30_000,
    application_name: 'cortex-orchestrator',
  };
  const pool = new Pool(config);
  // An idle client's error (server restart) must not crash the process; the next query reconnects.
  pool.on('error', () => undefined);

  const rpc: Rpc = async <T>(fn: string, args: Readonly<Record<string, unknown>>): Promise<T> => {
    const entries = checkCall(fn, args);
    const params = entries.map(([, v]) => v);
    const named = entries.map(([k], i) => `${k} => $${i + 1}`).join(', ');
    try {
      const res = await pool.query<{ result: T }>(`select public.${fn}(${named}) as result`, params);
      return res.rows[0]?.result as T;
    } catch (err) {
      const e = err as { code?: unknown; message?: unknown };
      if (typeof e.code === 'string' && TRANSIENT_SYSTEM_CODES.has(e.code))
        throw new OrchestratorError('db_unavailable', `${fn}: database unreachable (${e.code})`, {
          cause: err,
        });
      throw mapDbError(fn, e);
    }
  };
  return { rpc, close: () => pool.end() };
};
