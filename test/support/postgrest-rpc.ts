import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool, type PoolClient } from 'pg';

/**
 * A stand-in for PostgREST's RPC endpoint (PostgREST itself cannot run here): `POST
 * /rest/v1/rpc/<fn>` with a JSON body of named arguments. Like PostgREST it
 *  - takes the role from the key (`apikey` / `Authorization: Bearer`): a HS256 JWT's `role`
 *    claim, or an opaque key from `keys` (Supabase's `sb_secret_…` keys map to service_role);
 *  - runs the call in a transaction as that role (`set local role`) with `request.jwt.claims` set;
 *  - looks the function up in the catalogue and binds the body with `json_to_record`, casting each
 *    argument to the parameter's declared type; unknown functions or argument names are PGRST202;
 *  - returns the function's result as JSON, or `{code, message, details, hint}` with PostgREST's
 *    HTTP status on error.
 */
export interface PostgrestStandIn {
  readonly url: string;
  close(): Promise<void>;
}

// The roles `authenticator` may switch to: Supabase's three and the orchestrator's own.
const ROLES = new Set(['anon', 'authenticated', 'service_role', 'cortex_orchestrator']);

export const signJwt = (claims: Record<string, unknown>, secret: string): string => {
  const b64 = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
};

const verifyJwt = (token: string, secret: string): Record<string, unknown> | undefined => {
  const [h, p, s] = token.split('.');
  if (!h || !p || !s) return undefined;
  const expected = createHmac('sha256', secret).update(`${h}.${p}`).digest();
  const got = Buffer.from(s, 'base64url');
  if (got.length !== expected.length || !timingSafeEqual(got, expected)) return undefined;
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
  if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) return undefined;
  return claims;
};

// PostgREST's mapping of SQLSTATE classes to HTTP statuses (the subset our functions raise).
const httpStatus = (sqlstate: string, role: string): number => {
  if (sqlstate === '42501') return role === 'anon' ? 401 : 403;
  if (sqlstate === '42883' || sqlstate === 'PGRST202') return 404;
  if (sqlstate === '23505' || sqlstate === '23503') return 409;
  if (sqlstate.startsWith('08')) return 503;
  if (sqlstate.startsWith('40')) return 500;
  if (sqlstate === 'P0001' || sqlstate.startsWith('22') || sqlstate.startsWith('23')) return 400;
  return 500;
};

const readBody = async (req: IncomingMessage): Promise<string> => {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
};

// PostgREST's own answers when it cannot reach the database ("Group 0 - Connection").
const CONNECTION_ERROR = { code: 'PGRST000', message: 'Database connection error. Retrying the connection.' };
const POOL_TIMEOUT = { code: 'PGRST003', message: 'Timed out acquiring connection from connection pool.' };
// Only `public` is exposed (Supabase's default `db-schemas` for the API is public, graphql_public).
const EXPOSED_SCHEMAS = ['public'];

export const startPostgrestStandIn = async (opts: {
  databaseUrl: string;
  jwtSecret: string;
  keys?: Record<string, string>;
  /** PostgREST's `db-pool` and `db-pool-acquisition-timeout` (ms). */
  poolSize?: number;
  poolAcquireTimeoutMs?: number;
}): Promise<PostgrestStandIn> => {
  const pool = new Pool({
    connectionString: opts.databaseUrl,
    max: opts.poolSize ?? 8,
    connectionTimeoutMillis: opts.poolAcquireTimeoutMs ?? 10_000,
  });
  pool.on('error', () => undefined);

  const send = (res: ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
    res.end(JSON.stringify(body));
  };

  const roleOf = (req: IncomingMessage): { role: string; claims: Record<string, unknown> } | undefined => {
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    const key = bearer ?? (req.headers.apikey as string | undefined);
    if (!key) return undefined;
    const mapped = opts.keys?.[key];
    if (mapped) return { role: mapped, claims: { role: mapped } };
    const claims = verifyJwt(key, opts.jwtSecret);
    const role = claims?.role;
    return claims && typeof role === 'string' && ROLES.has(role) ? { role, claims } : undefined;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const fn = /^\/rest\/v1\/rpc\/([a-z_][a-z0-9_]*)$/.exec(
      new URL(req.url ?? '/', 'http://x').pathname,
    )?.[1];
    if (req.method !== 'POST' || !fn)
      return send(res, 404, {
        code: 'PGRST125',
        message: 'Invalid path specified in request URL',
        details: null,
        hint: null,
      });
    const who = roleOf(req);
    if (!who)
      return send(res, 401, {
        code: 'PGRST301',
        message: 'JWT could not be decoded or is invalid',
        details: null,
        hint: null,
      });
    // A POST names its schema in Content-Profile; PostgREST refuses one it does not expose.
    const profile = req.headers['content-profile'];
    if (typeof profile === 'string' && !EXPOSED_SCHEMAS.includes(profile))
      return send(res, 406, {
        code: 'PGRST106',
        message: `Invalid schema: ${profile}`,
        details: null,
        hint: `Only the following schemas are exposed: ${EXPOSED_SCHEMAS.join(', ')}`,
      });
    let body: Record<string, unknown>;
    try {
      const text = await readBody(req);
      body = text ? (JSON.parse(text) as Record<string, unknown>) : {};
      if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new Error('not an object');
    } catch {
      return send(res, 400, {
        code: 'PGRST102',
        message: 'Empty or invalid json',
        details: null,
        hint: null,
      });
    }
    let client: PoolClient;
    try {
      client = await pool.connect();
    } catch (err) {
      // All connections busy past the acquisition timeout (504), or no database at all (503).
      const busy = pool.totalCount >= (opts.poolSize ?? 8) && /timeout/i.test(String(err));
      return busy
        ? send(res, 504, { ...POOL_TIMEOUT, details: null, hint: null })
        : send(res, 503, { ...CONNECTION_ERROR, details: (err as Error).message, hint: null });
    }
    try {
      // The schema cache: which function in public has exactly these argument names.
      const found = await client.query<{
        names: string[] | null;
        types: string[];
        nargs: number;
        ndefaults: number;
      }>(
        `select p.proargnames as names,
                array(select format_type(t, null) from unnest(p.proargtypes::oid[]) t) as types,
                p.pronargs as nargs, p.pronargdefaults as ndefaults
           from pg_proc p join pg_namespace n on n.oid = p.pronamespace
          where n.nspname = 'public' and p.proname = $1`,
        [fn],
      );
      const keys = Object.keys(body);
      const match = found.rows.find((r) => {
        const names = (r.names ?? []).slice(0, r.nargs);
        const required = names.slice(0, r.nargs - r.ndefaults);
        return keys.every((k) => names.includes(k)) && required.every((k) => keys.includes(k));
      });
      if (!match)
        return send(res, 404, {
          code: 'PGRST202',
          message: `Could not find the function public.${fn}(${keys.sort().join(', ')}) in the schema cache`,
          details: null,
          hint: null,
        });
      const names = (match.names ?? []).slice(0, match.nargs);
      const cols = keys.map((k) => `${k} ${match.types[names.indexOf(k)] ?? 'text'}`);
      const call = keys.map((k) => `${k} => x.${k}`).join(', ');
      const sql = keys.length
        ? `select to_jsonb(public.${fn}(${call})) as r from json_to_record($1::json) as x(${cols.join(', ')})`
        : `select to_jsonb(public.${fn}()) as r`;
      await client.query('begin');
      try {
        await client.query(`set local role ${who.role}`);
        await client.query(`select set_config('request.jwt.claims', $1, true)`, [JSON.stringify(who.claims)]);
        const out = await client.query<{ r: unknown }>(sql, keys.length ? [JSON.stringify(body)] : []);
        await client.query('commit');
        return send(res, 200, out.rows[0]?.r ?? null);
      } catch (err) {
        await client.query('rollback');
        const e = err as { code?: string; message?: string; detail?: string; hint?: string };
        const code = e.code ?? 'XX000';
        return send(res, httpStatus(code, who.role), {
          code,
          message: e.message ?? 'error',
          details: e.detail ?? null,
          hint: e.hint ?? null,
        });
      }
    } finally {
      client.release();
    }
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() =>
      send(res, 500, { code: 'XX000', message: 'stand-in failure', details: null, hint: null }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await pool.end();
    },
  };
};
