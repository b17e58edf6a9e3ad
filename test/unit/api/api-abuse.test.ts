import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import { serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { generateToken, type ApiPrincipal } from '../../../orchestrator/api/api-tokens';
import { registerAuth } from '../../../orchestrator/api/auth';
import { makeErrorHandler } from '../../../orchestrator/api/problems';
import { makeAuthFailureLimiter } from '../../../orchestrator/api/rate-limit';
import { eventRoutes } from '../../../orchestrator/api/routes/events';
import type { ApiDeps } from '../../../orchestrator/api/server';
import type { Rpc } from '../../../orchestrator/db/rpc';
import { makeLogger } from '../../../orchestrator/log';
import { openSse, type SseStream } from '../../support/sse';

/**
 * Abuse limits of the API, with a counting token store and an in-memory stand-in for Redis:
 * failed authentications per address (429 before any token lookup), open event streams per token
 * (429 for the 21st while another token still gets its stream; closing one frees a slot), and the
 * maximum lifetime of a stream (a revoked token's stream cannot outlive it).
 */
const log = makeLogger({ level: 'silent', name: 'api-abuse-test' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The four Redis commands the limiter uses, with expiry. */
const fakeRedis = () => {
  const m = new Map<string, { n: number; until: number }>();
  const live = (k: string) => {
    const e = m.get(k);
    if (e && e.until > 0 && e.until <= Date.now()) m.delete(k);
    return m.get(k);
  };
  return {
    keys: m,
    get: async (k: string) => (live(k) ? String(live(k)?.n) : null),
    pttl: async (k: string) => {
      const e = live(k);
      return e ? (e.until > 0 ? e.until - Date.now() : -1) : -2;
    },
    incr: async (k: string) => {
      const e = live(k) ?? { n: 0, until: 0 };
      e.n += 1;
      m.set(k, e);
      return e.n;
    },
    pexpire: async (k: string, ms: number) => {
      const e = live(k);
      if (!e) return 0;
      e.until = Date.now() + ms;
      return 1;
    },
  };
};

/** A token store that knows the given tokens and counts every lookup (each one is a DB call). */
const countingTokens = (known: Map<string, ApiPrincipal>) => {
  const calls = { n: 0 };
  return {
    calls,
    authenticate: async (token: string) => {
      calls.n += 1;
      return known.get(token);
    },
  };
};

const orgA = randomUUID();
const principal = (orgId: string): ApiPrincipal => ({
  tokenId: randomUUID(),
  orgId,
  scopes: ['deployments:read'],
});

describe('failed authentications per address', () => {
  it('past the limit: 429 with Retry-After and no token lookup; a valid token from another address still works', async () => {
    const good = generateToken();
    const tokens = countingTokens(new Map([[good, principal(orgA)]]));
    const redis = fakeRedis();
    const app = Fastify();
    app.setValidatorCompiler(validatorCompiler);
    app.setSerializerCompiler(serializerCompiler);
    app.setErrorHandler(makeErrorHandler(log));
    registerAuth(app, tokens, makeAuthFailureLimiter({ redis, limit: '30/min', prefix: 't' }));
    app.get('/x', { config: { scopes: ['deployments:read'] } }, async () => ({ ok: true }));
    await app.ready();
    const from = (ip: string, token: string) =>
      app.inject({
        method: 'GET',
        url: '/x',
        remoteAddress: ip,
        headers: { authorization: `Bearer ${token}` },
      });

    for (let i = 0; i < 30; i++) expect((await from('203.0.113.7', generateToken())).statusCode).toBe(401);
    expect(tokens.calls.n).toBe(30);
    for (let i = 0; i < 20; i++) {
      const r = await from('203.0.113.7', generateToken());
      expect(r.statusCode).toBe(429);
      expect(r.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(Number(r.headers['retry-after'])).toBeLessThanOrEqual(60);
    }
    // the 20 refused requests reached no token lookup (no api_tokens__authenticate call)
    expect(tokens.calls.n).toBe(30);
    // counted by address, never by token: the key holds no token
    expect([...redis.keys.keys()]).toEqual(['t:authfail:ip-203.0.113.7']);
    // another address with a valid token is not affected
    expect((await from('198.51.100.2', good)).statusCode).toBe(200);
    // a valid token does not add to the count; a few failures there stay under the limit
    for (let i = 0; i < 5; i++) expect((await from('198.51.100.2', generateToken())).statusCode).toBe(401);
    expect((await from('198.51.100.2', good)).statusCode).toBe(200);
    await app.close();
  });

  it('the window ends: the address may try again', async () => {
    const good = generateToken();
    const tokens = countingTokens(new Map([[good, principal(orgA)]]));
    const app = Fastify();
    app.setErrorHandler(makeErrorHandler(log));
    registerAuth(app, tokens, makeAuthFailureLimiter({ redis: fakeRedis(), limit: '3/s', prefix: 't' }));
    app.get('/x', { config: { scopes: ['deployments:read'] } }, async () => ({ ok: true }));
    const get = (token: string) =>
      app.inject({
        method: 'GET',
        url: '/x',
        remoteAddress: '203.0.113.9',
        headers: { authorization: `Bearer ${token}` },
      });
    for (let i = 0; i < 3; i++) expect((await get(generateToken())).statusCode).toBe(401);
    expect((await get(good)).statusCode).toBe(429);
    await sleep(1_100);
    expect((await get(good)).statusCode).toBe(200);
    await app.close();
  });
});

describe('event streams', () => {
  const deploymentId = randomUUID();
  /** A deployment of orgA that never ends; polls find nothing new. */
  const rpc = (async (fn: string) => {
    if (fn === 'deployment_events__list')
      return { org_id: orgA, status: 'provisioning', settled: false, events: [] };
    return [];
  }) as Rpc;

  const start = async (config: { API_STREAMS_PER_TOKEN: number; API_STREAM_MAX_MS: number }) => {
    const a1 = generateToken();
    const a2 = generateToken();
    const tokens = countingTokens(
      new Map([
        [a1, principal(orgA)],
        [a2, principal(orgA)],
      ]),
    );
    const app: FastifyInstance = Fastify();
    app.setValidatorCompiler(validatorCompiler);
    app.setSerializerCompiler(serializerCompiler);
    app.setErrorHandler(makeErrorHandler(log));
    registerAuth(app, tokens);
    const deps = { log, tokens, pipeline: { db: { rpc }, config } } as unknown as ApiDeps;
    await app.register(eventRoutes, deps);
    await app.listen({ host: '127.0.0.1', port: 0 });
    const addr = app.server.address();
    const port = typeof addr === 'object' && addr ? addr.port : 0;
    const open = (token: string) =>
      openSse(`http://127.0.0.1:${port}/v1/deployments/${deploymentId}/events`, {
        authorization: `Bearer ${token}`,
      });
    return { app, a1, a2, open };
  };

  it('the 21st stream of one token is 429 while another token still gets its stream; closing one frees a slot', async () => {
    const { app, a1, a2, open } = await start({ API_STREAMS_PER_TOKEN: 20, API_STREAM_MAX_MS: 600_000 });
    const streams: SseStream[] = [];
    try {
      for (let i = 0; i < 20; i++) {
        const s = await open(a1);
        streams.push(s);
        expect(s.status).toBe(200);
      }
      const over = await open(a1);
      streams.push(over);
      expect(over.status).toBe(429);
      expect(over.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(over.headers.get('retry-after')).toBe('10');
      const other = await open(a2);
      streams.push(other);
      expect(other.status).toBe(200);

      streams[0]?.abort();
      await sleep(200);
      const again = await open(a1);
      streams.push(again);
      expect(again.status).toBe(200);
      const full = await open(a1);
      streams.push(full);
      expect(full.status).toBe(429);
    } finally {
      for (const s of streams) s.abort();
      await app.close();
    }
  });

  it('a stream ends after API_STREAM_MAX_MS without an end event, and its slot is free again', async () => {
    const { app, a1, open } = await start({ API_STREAMS_PER_TOKEN: 1, API_STREAM_MAX_MS: 1_000 });
    const streams: SseStream[] = [];
    try {
      const s = await open(a1);
      streams.push(s);
      expect(s.status).toBe(200);
      const t0 = Date.now();
      // the server closes the connection: no frame, no `end` event (EventSource reconnects)
      expect(await s.next(5_000)).toBeNull();
      expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
      expect(Date.now() - t0).toBeLessThan(3_000);
      const next = await open(a1);
      streams.push(next);
      expect(next.status).toBe(200);
    } finally {
      for (const s of streams) s.abort();
      await app.close();
    }
  });
});
