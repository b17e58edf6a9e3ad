import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, Socket, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DestinationStream } from 'pino';
import { Redis } from 'ioredis';
import { startApi, type RunningApi } from '../../orchestrator/api/api-process';
import { makeTokenStore } from '../../orchestrator/api/api-tokens';
import { makeRevocationAnnouncer } from '../../orchestrator/api/token-revocations';
import { runCli } from '../../orchestrator/cli/cortexctl';
import { redisOptionsFromUrl, type Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import { makeLogger } from '../../orchestrator/log';
import { startTestApi } from '../support/api';
import { testDatabaseUrl } from '../support/db';
import { startTestPipeline } from '../support/pipeline';
import { openSse } from '../support/sse';
import { freePort } from '../support/free-port';

/**
 * The API's token cache (orchestrator/api/token-cache.ts) against real Redis and Postgres, with two
 * API instances sharing one queue prefix: A in this process, whose revocation feed reaches Redis
 * through a TCP proxy the test can cut, and B a real `cortexctl api` child process. The cache TTL
 * is a minute here, so anything refused "at once" is refused by the announcement (or by the
 * bypass while the feed is down), never by expiry; the positive control shows that a revocation
 * made in plain SQL, which nobody announces, IS hidden by the cache while the feed is up.
 */
jest.setTimeout(120_000);

/** A TCP proxy to Redis that can be cut (live connections destroyed, new ones refused) and restored. */
const redisProxy = async (target: { host: string; port: number }) => {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  const listen = () =>
    new Promise<void>((resolve, reject) => {
      server = createServer((client) => {
        const upstream = new Socket();
        upstream.connect(target.port, target.host);
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on('error', () => undefined);
          s.on('close', () => {
            sockets.delete(s);
            client.destroy();
            upstream.destroy();
          });
        }
        client.pipe(upstream).pipe(client);
      });
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        const a = server?.address();
        port = typeof a === 'object' && a ? a.port : 0;
        resolve();
      });
    });
  await listen();
  return {
    get port() {
      return port;
    },
    async cut() {
      await new Promise<void>((resolve) => {
        server?.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
    },
    restore: listen,
  };
};

const waitFor = async (what: string, check: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> => {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

let pipeline: Pipeline;
let proxy: Awaited<ReturnType<typeof redisProxy>>;
let a: RunningApi;
let b: { child: ChildProcess; url: string; exited: Promise<number | null> };
const logs: string[] = [];

beforeAll(async () => {
  pipeline = await startTestPipeline({ API_TOKEN_CACHE_MS: '60000' });
  const target = redisOptionsFromUrl(pipeline.config.REDIS_URL);
  proxy = await redisProxy({ host: target.host ?? '127.0.0.1', port: target.port ?? 6379 });
  const sink: DestinationStream = { write: (line: string) => void logs.push(line) };
  a = await startApi(pipeline.config, makeLogger({ level: 'debug', name: 'cache-test' }, sink), {
    pipeline,
    port: 0,
    host: '127.0.0.1',
    revocationSubscriber: new Redis({
      ...target,
      host: '127.0.0.1',
      port: proxy.port,
      autoResubscribe: false,
      retryStrategy: () => 100,
    }),
  });
  const port = await freePort();
  const child = spawn(
    join(__dirname, '../../node_modules/.bin/tsx'),
    ['orchestrator/cli/cortexctl.ts', 'api'],
    {
      cwd: join(__dirname, '../..'),
      env: {
        ...process.env,
        DATABASE_URL: testDatabaseUrl(),
        REDIS_URL: pipeline.config.REDIS_URL,
        API_PORT: String(port),
        QUEUE_PREFIX: pipeline.config.QUEUE_PREFIX,
        API_TOKEN_CACHE_MS: '60000',
        LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let output = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  b = { child, url: `http://127.0.0.1:${port}`, exited };
  await new Promise<void>((resolve, reject) => {
    const onData = (d: Buffer): void => {
      output += d.toString();
      // listening, and its revocation feed subscribed (until then it would not cache at all)
      if (output.includes('listening on') && output.includes('token revocation feed subscribed')) resolve();
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    void exited.then(() => reject(new Error(`cortexctl api exited: ${output.slice(-2000)}`)));
  });
  await waitFor('A subscribed', () => logs.some((l) => l.includes('token revocation feed subscribed')));
});

afterAll(async () => {
  if (b?.child.exitCode === null) {
    b.child.kill('SIGTERM');
    await b.exited;
  }
  await a?.close();
  await proxy?.cut();
  await pipeline?.close(5_000);
});

/** A token of a fresh organisation, and a deployment of it to read. */
const fixture = async () => {
  const rpc = pipeline.db.rpc;
  const tag = randomBytes(4).toString('hex');
  const org = await rpc<{ id: string }>('organizations__create', { p_name: `cache-${tag}` });
  const dep = await rpc<{ id: string }>('deployments__create', {
    p_org_id: org.id,
    p_name: `cache ${tag}`,
    p_subdomain: `cache-${tag}`,
  });
  // a store that does NOT announce: a revocation "made in plain SQL"
  const silent = makeTokenStore({ rpc });
  const tok = await silent.create(
    { orgId: org.id, name: 'cache test', scopes: ['deployments:read'] },
    'cache-test',
  );
  const get = async (base: string, path = `/v1/deployments/${dep.id}`): Promise<number> =>
    (await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${tok.token}` } })).status;
  return { ...tok, deploymentId: dep.id, silent, get };
};

const cli = async (args: string[]): Promise<{ code: number; out: string }> => {
  let out = '';
  const code = await runCli(args, {
    env: {
      ...process.env,
      DATABASE_URL: testDatabaseUrl(),
      REDIS_URL: pipeline.config.REDIS_URL,
      // the default QUEUE_PREFIX, not the APIs': the announcement's channel is the same for all
      QUEUE_PREFIX: 'cortex',
      LOG_LEVEL: 'silent',
    },
    out: (s) => (out += s),
  });
  return { code, out };
};

describe('token cache across two API instances', () => {
  it('positive control: a revocation nobody announces is hidden by the cache while the feed is up', async () => {
    const f = await fixture();
    for (const base of [a.url, b.url, a.url, b.url]) expect(await f.get(base)).toBe(200);
    await f.silent.revoke(f.id, 'cache-test');
    // both instances still answer from their cache: this is what the announcement is for
    expect(await f.get(a.url)).toBe(200);
    expect(await f.get(b.url)).toBe(200);
    // announced afterwards: refused at once on both
    await makeRevocationAnnouncer(pipeline.redis)(f.id);
    expect(await f.get(a.url)).toBe(401);
    expect(await f.get(b.url)).toBe(401);
  });

  it('revoked with `cortexctl tokens revoke`: the very next request on BOTH instances is 401', async () => {
    const f = await fixture();
    for (const base of [a.url, b.url, a.url, b.url]) expect(await f.get(base)).toBe(200);
    const r = await cli(['tokens', 'revoke', f.id]);
    expect(r.code).toBe(0);
    expect(r.out).not.toContain('warning');
    const [onA, onB] = await Promise.all([f.get(a.url), f.get(b.url)]);
    expect([onA, onB]).toEqual([401, 401]);
  });

  it('with the pub/sub connection cut, the cache is bypassed: every request is looked up in Postgres', async () => {
    const f = await fixture();
    const g = await fixture();
    expect(await f.get(a.url)).toBe(200);
    expect(await g.get(a.url)).toBe(200);
    const subscribed = () => logs.filter((l) => l.includes('token revocation feed subscribed')).length;
    const before = subscribed();
    await proxy.cut();
    try {
      await waitFor('A to notice the cut', () => logs.some((l) => l.includes('token revocation feed down')));
      // f was cached before the cut; g is used during the outage (which must not cache it either)
      expect(await g.get(a.url)).toBe(200);
      await f.silent.revoke(f.id, 'cache-test');
      await g.silent.revoke(g.id, 'cache-test');
      expect(await f.get(a.url)).toBe(401);
      expect(await g.get(a.url)).toBe(401);
      // a valid token still works while the feed is down (from Postgres)
      const h = await fixture();
      expect(await h.get(a.url)).toBe(200);
    } finally {
      await proxy.restore();
    }
    // subscribed again: caching resumes (the positive control, on A after the recovery)
    await waitFor('A to subscribe again', () => subscribed() > before);
    const k = await fixture();
    expect(await k.get(a.url)).toBe(200);
    await k.silent.revoke(k.id, 'cache-test');
    expect(await k.get(a.url)).toBe(200);
  });

  it('an open event stream of a token revoked with the CLI ends within 2 s; the reconnect is 401', async () => {
    const f = await fixture();
    const url = `${b.url}/v1/deployments/${f.deploymentId}/events`;
    const s = await openSse(url, { authorization: `Bearer ${f.token}` });
    try {
      expect(s.status).toBe(200);
      expect((await s.next(10_000))?.event).toBe('status');
      expect((await cli(['tokens', 'revoke', f.id])).code).toBe(0);
      const t0 = Date.now();
      // frames already queued may come first; the stream then ends (null), well before its lifetime
      for (let fr = await s.next(2_000); fr; fr = await s.next(2_000)) expect(fr.event).not.toBe('end');
      expect(Date.now() - t0).toBeLessThan(2_000);
      const again = await fetch(url, {
        headers: { authorization: `Bearer ${f.token}`, 'last-event-id': '1' },
      });
      expect(again.status).toBe(401);
    } finally {
      s.abort();
    }
  });
});

describe('Redis down (a Redis of this test on a port of its own, stopped and started again)', () => {
  it('authenticated requests get 503 within API_REDIS_TIMEOUT_MS instead of waiting; public routes answer; back to 200 when Redis returns', async () => {
    const port = await freePort();
    const dir = await mkdtemp(join(tmpdir(), 'cortex-redis-down-'));
    const startRedis = (): ChildProcess =>
      spawn(
        'redis-server',
        ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
        { stdio: 'ignore' },
      );
    const stopRedis = async (r: ChildProcess): Promise<void> => {
      if (r.exitCode !== null || r.signalCode !== null) return;
      const gone = new Promise((resolve) => r.once('exit', resolve));
      r.kill('SIGKILL');
      await gone;
    };
    const pong = async (): Promise<boolean> => {
      const c = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null });
      c.on('error', () => undefined);
      try {
        await c.connect();
        return (await c.ping()) === 'PONG';
      } catch {
        return false;
      } finally {
        c.disconnect();
      }
    };
    let redis = startRedis();
    let own: Pipeline | undefined;
    let api: RunningApi | undefined;
    try {
      await waitFor('the test Redis', pong);
      own = await startTestPipeline({ REDIS_URL: `redis://127.0.0.1:${port}`, API_REDIS_TIMEOUT_MS: '500' });
      const quiet = makeLogger({ level: 'silent', name: 'redis-down' });
      api = await startApi(own.config, quiet, { pipeline: own, port: 0, host: '127.0.0.1' });
      const url = api.url;
      const rpc = own.db.rpc;
      const org = await rpc<{ id: string }>('organizations__create', {
        p_name: `redis-down-${randomBytes(4).toString('hex')}`,
      });
      const tok = await makeTokenStore({ rpc }).create(
        { orgId: org.id, name: 'redis down', scopes: ['deployments:read'] },
        'cache-test',
      );
      const get = (token: string) =>
        fetch(`${url}/v1/deployments`, {
          headers: { authorization: `Bearer ${token}` },
          signal: AbortSignal.timeout(10_000),
        });
      expect((await get(tok.token)).status).toBe(200);

      await stopRedis(redis);
      // a known token (rate limiter) and an unknown one (failed-authentication limiter): both fast
      for (const token of [tok.token, `ctx_${'B'.repeat(43)}`]) {
        const t0 = Date.now();
        const r = await get(token);
        const took = Date.now() - t0;
        expect(r.status).toBe(503);
        expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
        expect(r.headers.get('retry-after')).toBe('5');
        // Refused before any token lookup, by the failed-authentication limiter — for the known
        // token too (it skips the address block, not the outage): during an outage no request
        // reaches Postgres only to be refused by the rate limiter after (review R1).
        expect(((await r.json()) as { detail: string }).detail).toBe(
          'the failed-authentication limiter cannot reach Redis; retry shortly',
        );
        expect(took).toBeLessThan(2_000);
      }
      // public routes are not counted while Redis is out: health still answers
      expect((await fetch(`${url}/healthz`)).status).toBe(200);

      redis = startRedis();
      await waitFor('the API to count again', async () => (await get(tok.token)).status === 200, 30_000);
    } finally {
      await api?.close();
      await own?.close(2_000).catch(() => undefined);
      await stopRedis(redis);
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('an address over the failed-authentication limit', () => {
  it('a token this process found valid still passes; a token it has not seen waits; a revoked one is refused', async () => {
    const u = await startTestApi({ API_AUTH_FAILURE_LIMIT: '5/min' });
    try {
      const org = await u.org();
      const known = await u.token(org, ['deployments:read']);
      const fresh = await u.token(org, ['deployments:read']);
      const get = async (token: string) => (await u.call('GET', '/v1/deployments', { token })).status;
      expect(await get(known.token)).toBe(200);
      const unknown = () => `ctx_${randomBytes(32).toString('hex').slice(0, 43)}`;
      for (let i = 0; i < 5; i++) expect(await get(unknown())).toBe(401);
      expect(await get(unknown())).toBe(429);
      // the address is blocked: the known token passes, the never-seen one is refused before any lookup
      expect(await get(known.token)).toBe(200);
      expect(await get(fresh.token)).toBe(429);
      expect(await get(unknown())).toBe(429);
      // revoked (announced): refused. 429 once the announcement has reached this process (no longer
      // vouched for, so refused like any other request from the address); 401 when the request is
      // checked first and the cache's barrier then applies the revocation (a race the test cannot
      // order: both refuse, neither serves).
      await u.tokens.revoke(known.id, 'cache-test');
      expect([401, 429]).toContain(await get(known.token));
      expect(await get(known.token)).toBe(429);
    } finally {
      await u.close();
    }
  });
});
