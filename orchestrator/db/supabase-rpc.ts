import { createClient } from '@supabase/supabase-js';
import WebSocket from 'ws';
import { OrchestratorError } from '../errors';
import { checkCall, mapDbError, type Rpc } from './rpc';

/** PGRST000–PGRST003: PostgREST could not reach the database (its "Group 0 - Connection"). */
const POSTGREST_UNAVAILABLE = new Set(['PGRST000', 'PGRST001', 'PGRST002', 'PGRST003']);

/**
 * The supabase-js adapter: `.rpc()` over PostgREST, for a hosted Supabase. The key must be a JWT
 * signed with the project's JWT secret whose `role` claim is `cortex_orchestrator` (README,
 * "Supabase: the data contract"); with any other key the contract functions refuse to run.
 */
export const makeSupabaseRpc = (opts: {
  url: string;
  serviceRoleKey: string;
  fetch?: typeof fetch;
  /**
   * Client-side bound on one call, request to the end of the answer (default 35 s: the direct
   * adapter's statement timeout plus 5 s). Without it a PostgREST, proxy or socket that stops
   * answering holds the job for as long as the operating system keeps the connection.
   */
  requestTimeoutMs?: number;
}): { rpc: Rpc } => {
  const timeoutMs = opts.requestTimeoutMs ?? 35_000;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1)
    throw new OrchestratorError('config_invalid', 'requestTimeoutMs: must be a positive integer (ms)', {
      field: 'requestTimeoutMs',
    });
  const client = createClient(opts.url, opts.serviceRoleKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    db: { schema: 'public' },
    // supabase-js builds a realtime client even when it is unused, and Node 20 has no global
    // WebSocket; `ws` is the transport Supabase documents for that case.
    realtime: { transport: WebSocket as never },
    global: opts.fetch ? { fetch: opts.fetch } : {},
  });
  const rpc: Rpc = async <T>(fn: string, args: Readonly<Record<string, unknown>>): Promise<T> => {
    const body = Object.fromEntries(checkCall(fn, args));
    // The bound: the signal ends the request and the reading of its body (undici honours it); the
    // race covers a fetch that would not. Either way the call fails as an unanswered one does
    // (db_unavailable, retried), naming the function only.
    const limit = AbortSignal.timeout(timeoutMs);
    let onAbort: (() => void) | undefined;
    const expired = new Promise<never>((_, reject) => {
      onAbort = () => reject(new Error('timeout'));
      limit.addEventListener('abort', onAbort, { once: true });
    });
    const noAnswer = () =>
      new OrchestratorError(
        'db_unavailable',
        `${fn}: Supabase unreachable (no answer within ${timeoutMs} ms)`,
      );
    let res: Awaited<ReturnType<typeof client.rpc>>;
    try {
      res = await Promise.race([client.rpc(fn, body).abortSignal(limit), expired]);
    } catch (err) {
      if (limit.aborted) throw noAnswer();
      throw new OrchestratorError('db_unavailable', `${fn}: Supabase unreachable`, { cause: err });
    } finally {
      if (onAbort) limit.removeEventListener('abort', onAbort);
    }
    if (res.error && limit.aborted) throw noAnswer();
    if (res.error) {
      // supabase-js reports a failed fetch as an error with an empty code.
      if (!res.error.code) throw new OrchestratorError('db_unavailable', `${fn}: ${res.error.message}`);
      // PostgREST's connection group: the database is down or unreachable (503), or no pool
      // connection came free in time (504). Transient, like a refused direct connection.
      if (POSTGREST_UNAVAILABLE.has(res.error.code))
        throw new OrchestratorError(
          'db_unavailable',
          `${fn}: PostgREST ${res.error.code}: ${res.error.message}`,
        );
      if (res.error.code.startsWith('PGRST'))
        throw new OrchestratorError('internal', `${fn}: PostgREST ${res.error.code}: ${res.error.message}`);
      throw mapDbError(fn, res.error);
    }
    return res.data as T;
  };
  return { rpc };
};
