import { readFileSync } from 'node:fs';
import { loadConfig } from '../../../orchestrator/config';
import { PG_CLIENT_FAILURES, mapPgError, pgPoolConfig } from '../../../orchestrator/db/pg-rpc';
import { pgRpcOptions } from '../../../orchestrator/db/rpc-from-config';
import { classify, isOrchestratorError } from '../../../orchestrator/errors';
import { canary } from '../../support/canary';

const URL_ = 'postgres://postgres@127.0.0.1:54329/cortex?sslmode=disable';

const configFailure = (env: Record<string, string>): string => {
  try {
    loadConfig(env);
  } catch (err) {
    if (isOrchestratorError(err) && err.code === 'config_invalid') return err.message;
    throw err;
  }
  throw new Error('expected loadConfig to fail');
};

describe('pg-rpc bounds: configuration', () => {
  it('bounds every wait by default: statement 30 s, query 35 s, connect 10 s, keepalive after 10 s idle', () => {
    expect(pgPoolConfig(pgRpcOptions(loadConfig({})))).toMatchObject({
      statement_timeout: 30_000,
      query_timeout: 35_000,
      connectionTimeoutMillis: 10_000,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
  });

  it('passes each DATABASE_* variable through, and derives the query timeout from the statement timeout', () => {
    const env = {
      DATABASE_STATEMENT_TIMEOUT_MS: '2000',
      DATABASE_CONNECT_TIMEOUT_MS: '3000',
      DATABASE_KEEPALIVE_IDLE_MS: '4000',
    };
    expect(pgPoolConfig(pgRpcOptions(loadConfig(env)))).toMatchObject({
      statement_timeout: 2_000,
      query_timeout: 7_000,
      connectionTimeoutMillis: 3_000,
      keepAliveInitialDelayMillis: 4_000,
    });
    expect(
      pgPoolConfig(pgRpcOptions(loadConfig({ ...env, DATABASE_QUERY_TIMEOUT_MS: '2500' }))).query_timeout,
    ).toBe(2_500);
  });

  it('refuses a query timeout at or below the statement timeout, by name', () => {
    expect(
      configFailure({ DATABASE_STATEMENT_TIMEOUT_MS: '5000', DATABASE_QUERY_TIMEOUT_MS: '5000' }),
    ).toMatch(/DATABASE_QUERY_TIMEOUT_MS: must be greater than DATABASE_STATEMENT_TIMEOUT_MS/);
    expect(configFailure({ DATABASE_QUERY_TIMEOUT_MS: '30000' })).toContain('DATABASE_QUERY_TIMEOUT_MS');
    expect(() =>
      pgPoolConfig({ connectionString: URL_, statementTimeoutMs: 800, queryTimeoutMs: 500 }),
    ).toThrow(/DATABASE_QUERY_TIMEOUT_MS: must be greater than DATABASE_STATEMENT_TIMEOUT_MS/);
  });

  it('names a bad value by its variable and never prints it', () => {
    const value = canary('other');
    const msg = configFailure({
      DATABASE_STATEMENT_TIMEOUT_MS: value,
      DATABASE_QUERY_TIMEOUT_MS: '0',
      DATABASE_CONNECT_TIMEOUT_MS: '1.5',
      DATABASE_KEEPALIVE_IDLE_MS: '10',
    });
    for (const k of [
      'DATABASE_STATEMENT_TIMEOUT_MS',
      'DATABASE_QUERY_TIMEOUT_MS',
      'DATABASE_CONNECT_TIMEOUT_MS',
      'DATABASE_KEEPALIVE_IDLE_MS',
    ])
      expect(msg).toContain(`${k}: `);
    expect(msg).not.toContain(value);
  });
});

describe('pg-rpc bounds: errors', () => {
  it("maps each of pg's own connection and timeout failures to db_unavailable, retried, naming only the function", () => {
    for (const [message, what] of Object.entries(PG_CLIENT_FAILURES)) {
      const err = mapPgError('secrets__create', new Error(message));
      expect([err.code, classify(err), err.message]).toEqual([
        'db_unavailable',
        'retry',
        `secrets__create: database unreachable (${what})`,
      ]);
      expect(err.cause).toBeUndefined();
    }
    expect(mapPgError('f', new Error('Query read timeout')).message).toBe(
      'f: database unreachable (no answer within the query timeout)',
    );
  });

  it('matches messages pg and pg-pool really raise (a pg upgrade that rewords one fails here)', () => {
    const sources =
      readFileSync(require.resolve('pg/lib/client.js'), 'utf8') +
      readFileSync(require.resolve('pg-pool'), 'utf8');
    for (const message of Object.keys(PG_CLIENT_FAILURES)) expect(sources).toContain(`'${message}'`);
  });

  it('leaves server errors (which carry a SQLSTATE) and system errors to their own mappings', () => {
    expect(mapPgError('f', Object.assign(new Error('Query read timeout'), { code: '57014' })).code).toBe(
      'db_error',
    );
    expect(mapPgError('f', Object.assign(new Error('dup'), { code: '23505' })).code).toBe('conflict');
    expect(mapPgError('f', Object.assign(new Error('x'), { code: 'ECONNRESET' })).message).toBe(
      'f: database unreachable (ECONNRESET)',
    );
    expect(mapPgError('f', new Error('something else')).code).toBe('db_error');
  });
});
