import { Pool, type PoolConfig } from 'pg';
import { OrchestratorError, TRANSIENT_SYSTEM_CODES } from '../errors';
import { checkCall, mapDbError, type Rpc } from './rpc';

export interface PgRpc {
  readonly rpc: Rpc;
  readonly close: () => Promise<void>;
}

export interface PgRpcOptions {
  connectionString: string;
  max?: number;
  /** Server-side bound of one statement (`statement_timeout`); default 30 s. */
  statementTimeoutMs?: number;
  /**
   * Client-side bound of one query, from send to answer (pg's `query_timeout`); default
   * statementTimeoutMs + 5 s, and never at or below it, so the server's own timeout answers first
   * whenever the server can answer at all.
   */
  queryTimeoutMs?: number;
  /** Bound of opening a connection, and of waiting for one from a full pool; default 10 s. */
  connectTimeoutMs?: number;
  /** Idle time before the first TCP keepalive probe; default 10 s. */
  keepAliveIdleMs?: number;
  /** The role every session assumes (`SET ROLE` at connection start); default `cortex_orchestrator`. */
  role?: string;
}

/**
 * The pool settings, computed and checked (pure, so a unit test pins them). Every wait is bounded
 * on this side of the wire: a connection that died silently (a NAT or firewall dropping the flow, a
 * host gone without a RST) never answers, so `statement_timeout`, which the server enforces, never
 * fires, and only TCP's retransmission limit (about 15 minutes) would end the call.
 */
export const pgPoolConfig = (opts: PgRpcOptions): PoolConfig & { query_timeout: number } => {
  const role = opts.role ?? 'cortex_orchestrator';
  if (!/^[a-z_][a-z0-9_]*$/.test(role))
    throw new OrchestratorError('config_invalid', 'DATABASE_ROLE: must be a plain role name');
  const statementTimeoutMs = opts.statementTimeoutMs ?? 30_000;
  const queryTimeoutMs = opts.queryTimeoutMs ?? statementTimeoutMs + 5_000;
  if (queryTimeoutMs <= statementTimeoutMs)
    throw new OrchestratorError(
      'config_invalid',
      'DATABASE_QUERY_TIMEOUT_MS: must be greater than DATABASE_STATEMENT_TIMEOUT_MS',
    );
  return {
    connectionString: opts.connectionString,
    // Even when the login user is more (locally, the superuser), the orchestrator acts as its own
    // role: it can call the audited functions, but cannot read the vault, write a table, disable
    // the audit trigger or bypass the functions' grants.
    options: `-c role=${role}`,
    max: opts.max ?? 10,
    statement_timeout: statementTimeoutMs,
    // pg fails the query with 'Query read timeout' and the pool then destroys that connection
    // (pg-pool removes a client released with an error; pg's end() destroys a socket whose query
    // is still active), so a dead connection is never handed out again.
    query_timeout: queryTimeoutMs,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 10_000,
    // An idle connection that died is found by keepalive probes (Node: the first after this idle
    // time, then 10 probes a second apart) and dropped from the pool before a query picks it.
    keepAlive: true,
    keepAliveInitialDelayMillis: opts.keepAliveIdleMs ?? 10_000,
    application_name: 'cortex-orchestrator',
  };
};

/**
 * pg's own client-side failures carry no `code`, only these messages (pg 8.23: lib/client.js,
 * pg-pool/index.js). Each means the database did not answer in time or the connection is gone: a
 * transient outage, retried like ECONNRESET.
 */
export const PG_CLIENT_FAILURES: Readonly<Record<string, string>> = {
  'Query read timeout': 'no answer within the query timeout',
  'Connection terminated due to connection timeout': 'no connection within the connect timeout',
  'timeout expired': 'no connection within the connect timeout',
  'timeout exceeded when trying to connect': 'no free connection within the connect timeout',
  'Connection terminated unexpectedly': 'connection lost',
};

/**
 * A pg or pg-pool error as the port's error. The transient ones keep no parameter: messages name
 * the function and what happened, never an argument (which may be a secret).
 */
export const mapPgError = (fn: string, err: unknown): OrchestratorError => {
  const e = (err ?? {}) as { code?: unknown; message?: unknown };
  if (typeof e.code === 'string' && TRANSIENT_SYSTEM_CODES.has(e.code))
    return new OrchestratorError('db_unavailable', `${fn}: database unreachable (${e.code})`, {
      cause: err,
    });
  const failure =
    e.code === undefined && typeof e.message === 'string' ? PG_CLIENT_FAILURES[e.message] : undefined;
  // No cause kept: pg's error carries nothing a caller needs, and nothing of the call may leak.
  if (failure) return new OrchestratorError('db_unavailable', `${fn}: database unreachable (${failure})`);
  return mapDbError(fn, e);
};

/**
 * The direct Postgres adapter: `select public.<fn>(p_a => $1, …)`. Values always travel as bind
 * parameters, so statement logging never sees a secret literal.
 */
export const makePgRpc = (opts: PgRpcOptions): PgRpc => {
  const pool = new Pool(pgPoolConfig(opts));
  // An idle client's error (server restart, keepalive gave up) must not crash the process: the
  // pool has already removed that client, and the next query opens a new connection.
  pool.on('error', () => undefined);

  const rpc: Rpc = async <T>(fn: string, args: Readonly<Record<string, unknown>>): Promise<T> => {
    const entries = checkCall(fn, args);
    const params = entries.map(([, v]) => v);
    const named = entries.map(([k], i) => `${k} => $${i + 1}`).join(', ');
    try {
      const res = await pool.query<{ result: T }>(`select public.${fn}(${named}) as result`, params);
      return res.rows[0]?.result as T;
    } catch (err) {
      throw mapPgError(fn, err);
    }
  };
  return { rpc, close: () => pool.end() };
};
