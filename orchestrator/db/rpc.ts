import { OrchestratorError, type ErrorCode } from '../errors';

/**
 * The data port: every read or write the orchestrator makes is a call of a SQL function in
 * supabase/migrations. Args are the function's named parameters (`p_org_id`, …); `undefined`
 * values are left out so the function's defaults apply. Both adapters return the function's
 * jsonb result as parsed JSON.
 */
export type Rpc = <T = unknown>(fn: string, args: Readonly<Record<string, unknown>>) => Promise<T>;

export const FN_NAME = /^[a-z_][a-z0-9_]*$/;
export const ARG_NAME = /^p_[a-z0-9_]+$/;

export const checkCall = (fn: string, args: Readonly<Record<string, unknown>>): [string, unknown][] => {
  if (!FN_NAME.test(fn))
    throw new OrchestratorError('internal', `rpc: bad function name ${JSON.stringify(fn)}`);
  const entries = Object.entries(args).filter(([, v]) => v !== undefined);
  for (const [k] of entries)
    if (!ARG_NAME.test(k))
      throw new OrchestratorError('internal', `rpc ${fn}: bad argument name ${JSON.stringify(k)}`);
  return entries;
};

/** SQLSTATEs the migrations raise on purpose, and what they mean to callers. */
const SQLSTATE_CODES: Readonly<Record<string, ErrorCode>> = {
  '22023': 'invalid_input', // invalid_parameter_value: our functions' "<field>: <what is wrong>"
  '22P02': 'invalid_input', // invalid_text_representation: a malformed uuid, inet, …
  '22001': 'invalid_input', // string_data_right_truncation
  '23514': 'invalid_input', // check_violation
  '23505': 'conflict', // unique_violation
  '23503': 'not_found', // foreign_key_violation: the referenced row is gone
  P0002: 'not_found', // no_data_found
  '42501': 'internal', // insufficient_privilege: a wiring error (wrong role/key), not bad input
  '40001': 'db_error', // serialization_failure: retried
  '40P01': 'db_error', // deadlock_detected: retried
  '55006': 'superseded', // object_in_use: the pipeline's fencing token is no longer the operation's
};

/**
 * Map a database error (from pg or from PostgREST's JSON body, which carry the same `code` and
 * `message`) to an OrchestratorError. Postgres puts values into `detail` ("Key (name)=(…) already
 * exists") and some messages quote the input (`invalid input syntax for type uuid: "…"`), and a
 * value may be a secret: so the raw error is never kept as a cause, and an input error's message
 * is kept only when it is one of ours (`<field>: <what is wrong>`, which never echoes a value).
 */
export const mapDbError = (fn: string, err: { code?: unknown; message?: unknown }): OrchestratorError => {
  const sqlstate = typeof err.code === 'string' ? err.code : '';
  const message = typeof err.message === 'string' ? err.message : 'database error';
  let code: ErrorCode = SQLSTATE_CODES[sqlstate] ?? 'db_error';
  if (/^08|^57P0[123]$|^53300$/.test(sqlstate)) code = 'db_unavailable';
  if (code === 'invalid_input') {
    const field = /^([a-z_][a-z0-9_]*): /.exec(message)?.[1];
    return field
      ? new OrchestratorError('invalid_input', message, { field })
      : new OrchestratorError('invalid_input', `${fn}: malformed input (SQLSTATE ${sqlstate})`, {
          field: 'input',
        });
  }
  return new OrchestratorError(code, `${fn}: ${message} (SQLSTATE ${sqlstate || 'unknown'})`);
};
