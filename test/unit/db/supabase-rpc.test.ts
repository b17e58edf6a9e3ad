import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { classify } from '../../../orchestrator/errors';
import { makeSupabaseRpc } from '../../../orchestrator/db/supabase-rpc';
import { rejection } from '../../support/rejection';

/**
 * The supabase-js adapter against PostgREST's wire answers, without a server: a fetch that records
 * each request and answers as PostgREST does (bodies and statuses from its error reference).
 */
const URL_ = 'https://project.supabase.example';
const JWT = 'eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiY29ydGV4X29yY2hlc3RyYXRvciJ9.c2ln';

const answering = (status: number, body: unknown) => {
  const requests: { url: string; headers: Headers; body: string }[] = [];
  const fetch = (async (input: string | URL | Request, init?: RequestInit) => {
    requests.push({ url: String(input), headers: new Headers(init?.headers), body: String(init?.body) });
    return new Response(JSON.stringify(body), {
      status,
      headers: { 'content-type': 'application/json; charset=utf-8' },
    });
  }) as typeof globalThis.fetch;
  return { fetch, requests };
};
const pgrst = (code: string, message: string) => ({ code, message, details: null, hint: null });

describe('supabase-js adapter', () => {
  it('posts the named arguments to /rest/v1/rpc/<fn> in the public profile, and returns the jsonb', async () => {
    const f = answering(200, { id: 'x' });
    const { rpc } = makeSupabaseRpc({ url: URL_, serviceRoleKey: JWT, fetch: f.fetch });
    expect(await rpc('organizations__create', { p_name: 'acme' })).toEqual({ id: 'x' });
    expect(f.requests).toHaveLength(1);
    const [req] = f.requests;
    expect(req?.url).toBe(`${URL_}/rest/v1/rpc/organizations__create`);
    expect(JSON.parse(req?.body ?? '')).toEqual({ p_name: 'acme' });
    expect(req?.headers.get('content-profile')).toBe('public');
    expect(req?.headers.get('apikey')).toBe(JWT);
    expect(req?.headers.get('authorization')).toBe(`Bearer ${JWT}`);
  });

  it('sends an sb_secret_ key as the apikey (supabase-js 2.119 also sends it as the bearer token)', async () => {
    const key = `sb_secret_${'k'.repeat(32)}`;
    const f = answering(200, null);
    const { rpc } = makeSupabaseRpc({ url: URL_, serviceRoleKey: key, fetch: f.fetch });
    await rpc('organizations__create', { p_name: 'acme' });
    expect(f.requests[0]?.headers.get('apikey')).toBe(key);
    expect(f.requests[0]?.headers.get('authorization')).toBe(`Bearer ${key}`);
  });

  // PostgREST's "Group 0 - Connection" (503, and 504 for the pool timeout): the database is out
  // of reach, so the call is retried, as a refused direct connection is.
  it.each([
    [503, 'PGRST000', 'Database connection error. Retrying the connection.'],
    [503, 'PGRST001', 'Database client error. Retrying the connection.'],
    [503, 'PGRST002', 'Could not query the database for the schema cache. Retrying.'],
    [504, 'PGRST003', 'Timed out acquiring connection from connection pool.'],
  ])('maps %s %s to db_unavailable, retried', async (status, code, message) => {
    const f = answering(status, pgrst(code, message));
    const { rpc } = makeSupabaseRpc({ url: URL_, serviceRoleKey: JWT, fetch: f.fetch });
    const err = await rejection(rpc('organizations__create', { p_name: 'acme' }));
    expect([err.code, classify(err)]).toEqual(['db_unavailable', 'retry']);
    expect(err.message).toBe(`organizations__create: PostgREST ${code}: ${message}`);
  });

  it('maps other PostgREST errors (a refused key, an unexposed schema) to internal, not db_unavailable', async () => {
    for (const [status, code] of [
      [401, 'PGRST301'],
      [406, 'PGRST106'],
      [404, 'PGRST202'],
    ] as const) {
      const f = answering(status, pgrst(code, 'no'));
      const { rpc } = makeSupabaseRpc({ url: URL_, serviceRoleKey: JWT, fetch: f.fetch });
      const err = await rejection(rpc('organizations__create', { p_name: 'acme' }));
      expect([code, err.code]).toEqual([code, 'internal']);
      expect(err.message).toBe(`organizations__create: PostgREST ${code}: no`);
    }
  });

  it('maps a failed fetch (no answer at all) to db_unavailable, retried, with one attempt only', async () => {
    let calls = 0;
    const fetch = (async () => {
      calls++;
      throw new TypeError('fetch failed');
    }) as typeof globalThis.fetch;
    const { rpc } = makeSupabaseRpc({ url: URL_, serviceRoleKey: JWT, fetch });
    const err = await rejection(rpc('organizations__create', { p_name: 'acme' }));
    expect([err.code, classify(err)]).toEqual(['db_unavailable', 'retry']);
    expect(err.message).toMatch(/^organizations__create: .*fetch failed/);
    // A POST is not idempotent: supabase-js must not retry it behind our back.
    expect(calls).toBe(1);
  });

  it('maps SQLSTATEs from the function as the direct adapter does', async () => {
    const f = answering(400, pgrst('22023', 'p_name: must not be empty'));
    const { rpc } = makeSupabaseRpc({ url: URL_, serviceRoleKey: JWT, fetch: f.fetch });
    const err = await rejection(rpc('organizations__create', { p_name: 'acme' }));
    expect([err.code, err.field]).toEqual(['invalid_input', 'p_name']);
  });
});

/**
 * The client-side bound (DATABASE_QUERY_TIMEOUT_MS): a PostgREST, proxy or socket that stops
 * answering must not hold a job for TCP's retransmission limit. Real HTTP servers on loopback and
 * Node's own fetch (undici), so that the abort really ends a request in flight.
 */
describe('supabase-js adapter: a call that gets no answer', () => {
  const servers: Server[] = [];
  afterAll(async () => {
    for (const s of servers) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  });
  const listen = async (handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> => {
    const s = createServer(handler);
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const a = s.address();
    return `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  };

  it.each([
    ['accepts the request and never answers', () => undefined],
    [
      'sends its headers and stalls the body',
      (_req: IncomingMessage, res: ServerResponse) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write('{"id":');
      },
    ],
  ])('a server that %s: db_unavailable (retried) at the bound, no argument in the message', async (_, h) => {
    const seen: string[] = [];
    const url = await listen((req, res) => {
      seen.push(req.url ?? '');
      h(req, res);
    });
    const { rpc } = makeSupabaseRpc({ url, serviceRoleKey: JWT, requestTimeoutMs: 400 });
    const canaryArg = `canary-${Math.random().toString(36).slice(2)}`;
    const t0 = Date.now();
    const err = await rejection(rpc('organizations__create', { p_name: canaryArg }));
    const took = Date.now() - t0;
    expect([err.code, classify(err)]).toEqual(['db_unavailable', 'retry']);
    expect(err.message).toBe('organizations__create: Supabase unreachable (no answer within 400 ms)');
    expect(err.message).not.toContain(canaryArg);
    expect(seen).toEqual(['/rest/v1/rpc/organizations__create']);
    // bounded: not before the limit, and long before any TCP-level give-up (generous for a busy machine)
    expect(took).toBeGreaterThanOrEqual(390);
    expect(took).toBeLessThan(10_000);
  });

  it('an answer in time is not affected by the bound', async () => {
    const url = await listen((_req, res) => {
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{"id":"x"}');
      }, 50);
    });
    const { rpc } = makeSupabaseRpc({ url, serviceRoleKey: JWT, requestTimeoutMs: 5_000 });
    expect(await rpc('organizations__create', { p_name: 'acme' })).toEqual({ id: 'x' });
  });

  it('a fetch that ignores the abort signal is still bounded', async () => {
    const never = (() => new Promise<Response>(() => undefined)) as typeof fetch;
    const { rpc } = makeSupabaseRpc({ url: URL_, serviceRoleKey: JWT, fetch: never, requestTimeoutMs: 200 });
    const err = await rejection(rpc('organizations__create', { p_name: 'acme' }));
    expect(err.code).toBe('db_unavailable');
  });

  it.each([0, -1, 1.5, Number.NaN])('refuses requestTimeoutMs %s, naming the field', (v) => {
    expect(() => makeSupabaseRpc({ url: URL_, serviceRoleKey: JWT, requestTimeoutMs: v })).toThrow(
      /requestTimeoutMs/,
    );
  });
});
