import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { makeApiClient } from '../../orchestrator/api/client';
import { runCli } from '../../orchestrator/cli/cortexctl';
import { startTestApi, type TestApi } from '../support/api';
import { testDatabaseUrl } from '../support/db';

/**
 * The API's skeleton through a real listening server: public health and OpenAPI, bearer tokens and
 * scopes, problem documents for every error (validation names the field, unknown routes are 404).
 * Requests go through the onboarding app's typed client (`t.client`), so a drift of the API's
 * schema fails to compile here; raw requests (`t.call`) only where a test sends what the client
 * cannot: an unknown route, a malformed escape or JSON body, the OpenAPI document and docs page.
 */
jest.setTimeout(60_000);

let t: TestApi;
beforeAll(async () => {
  t = await startTestApi();
});
afterAll(async () => {
  await t?.close();
});

const PROBLEM = /^application\/problem\+json/;

describe('public routes', () => {
  it('GET /healthz answers without a token', async () => {
    const r = await t.client().GET('/healthz');
    expect([r.response.status, r.data]).toEqual([200, { status: 'ok' }]);
  });

  it('GET /openapi.json is an OpenAPI 3.1 document generated from the route schemas', async () => {
    const r = await t.call('GET', '/openapi.json');
    expect(r.status).toBe(200);
    const doc = r.json as { openapi: string; paths: Record<string, Record<string, unknown>> };
    expect(doc.openapi).toBe('3.1.0');
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining([
        '/v1/secrets',
        '/v1/deployments',
        '/v1/deployments/{id}',
        '/v1/orgs/{orgId}/audit',
      ]),
    );
    const body = JSON.stringify(doc.paths['/v1/deployments']?.post);
    // the deployments service's own request schema: its fields and rules appear in the document
    expect(body).toContain('subdomain');
    expect(body).toContain('envVar');
  });

  it('GET /docs serves the docs page', async () => {
    const r = await t.call('GET', '/docs');
    expect(r.status).toBe(200);
    expect(r.text).toContain('swagger');
  });
});

describe('authentication and scopes', () => {
  it('refuses a request without a token, with a malformed one and with an unknown one: 401 problem', async () => {
    for (const token of [undefined, 'nope', `ctx_${'A'.repeat(43)}`]) {
      const r = await t.client(token).GET('/v1/deployments');
      expect(r.response.status).toBe(401);
      expect(r.response.headers.get('content-type')).toMatch(PROBLEM);
      expect(r.response.headers.get('www-authenticate')).toBe('Bearer');
      expect(r.error).toMatchObject({ status: 401, title: 'Unauthorized' });
    }
  });

  it('a revoked token is refused at once (401)', async () => {
    const org = await t.org();
    const tok = await t.token(org, ['deployments:read']);
    const c = t.client(tok.token);
    expect((await c.GET('/v1/deployments')).response.status).toBe(200);
    await t.tokens.revoke(tok.id, 'api-test');
    const r = await c.GET('/v1/deployments');
    expect(r.response.status).toBe(401);
    expect(r.response.headers.get('content-type')).toMatch(PROBLEM);
  });

  it('a token without secrets:write cannot store a key (403), and nothing is stored', async () => {
    const org = await t.org();
    const c = t.client((await t.token(org, ['deployments:read', 'deployments:write', 'audit:read'])).token);
    const r = await c.POST('/v1/secrets', {
      body: { name: 'k', provider: 'anthropic', value: `canary-${randomBytes(16).toString('hex')}` },
    });
    expect(r.response.status).toBe(403);
    expect(r.error).toMatchObject({ status: 403, detail: expect.stringContaining('secrets:write') });
    const list = await c.GET('/v1/secrets');
    expect([list.response.status, list.data]).toEqual([200, []]);
  });

  it('unknown routes are a 404 problem', async () => {
    const org = await t.org();
    const tok = await t.token(org, ['deployments:read']);
    // a path the API does not declare: the typed client cannot name it, so a raw request
    const r = await t.call('GET', '/v1/nothing-here', { token: tok.token });
    expect(r.status).toBe(404);
    expect(r.headers.get('content-type')).toMatch(PROBLEM);
    expect(r.json).toMatchObject({ status: 404, title: 'Not Found' });
  });

  it("the router's own refusals are problem documents too: an over-long path parameter (414), a malformed escape (400)", async () => {
    // found by the property test in a CI dry run: Fastify answered these with its own JSON
    const org = await t.org();
    const tok = await t.token(org, ['deployments:read']);
    const long = await t.client(tok.token).GET('/v1/deployments/{id}', {
      params: { path: { id: 'A'.repeat(201) } },
    });
    expect([long.response.status, long.response.headers.get('content-type')]).toEqual([
      414,
      expect.stringMatching(PROBLEM),
    ]);
    expect(long.error).toMatchObject({ status: 414, field: 'path' });
    // the client escapes every path parameter: a malformed escape needs a raw request
    const bad = await t.call('GET', '/v1/deployments/%E0%A4%A', { token: tok.token });
    expect([bad.status, bad.headers.get('content-type')]).toEqual([400, expect.stringMatching(PROBLEM)]);
    expect(bad.json).toMatchObject({ status: 400, field: 'path' });
  });
});

describe('problem documents', () => {
  it('a validation error names the field path and echoes no value', async () => {
    const org = await t.org();
    const tok = await t.token(org, ['deployments:write']);
    const hostile = 'HOSTILE-VALUE-d41d8cd98f';
    const r = await t.client(tok.token).POST('/v1/deployments', {
      body: {
        name: 'x',
        subdomain: 'ok-sub',
        bindings: [{ envVar: `lower${hostile}`, secretId: '00000000-0000-4000-8000-000000000000' }],
      },
    });
    expect(r.response.status).toBe(400);
    expect(r.response.headers.get('content-type')).toMatch(PROBLEM);
    expect(r.error).toMatchObject({
      type: expect.stringContaining('invalid-input'),
      status: 400,
      field: 'bindings.0.envVar',
    });
    const text = JSON.stringify(r.error);
    expect(text).not.toContain(hostile);
    expect(text).not.toMatch(/stack|SQLSTATE|select /i);
  });

  it('malformed JSON and an oversized body are problems too (400, 413)', async () => {
    const org = await t.org();
    const tok = await t.token(org, ['secrets:write']);
    // broken JSON: a raw body the client would never send
    const bad = await t.call('POST', '/v1/secrets', {
      token: tok.token,
      rawBody: '{"name": "x", "value": "sk-secret-in-broken-json',
      headers: { 'content-type': 'application/json' },
    });
    expect(bad.status).toBe(400);
    expect(bad.json).toMatchObject({ field: 'body' });
    expect(bad.text).not.toContain('sk-secret-in-broken-json');
    const big = await t.client(tok.token).POST('/v1/secrets', {
      body: { name: 'x', provider: 'other', value: 'v'.repeat(70_000) },
    });
    expect(big.response.status).toBe(413);
    expect(big.response.headers.get('content-type')).toMatch(PROBLEM);
  });
});

describe('cortexctl tokens and api', () => {
  const cli = async (args: string[]): Promise<{ code: number; out: string }> => {
    let out = '';
    const code = await runCli(args, {
      env: { ...process.env, DATABASE_URL: testDatabaseUrl(), LOG_LEVEL: 'silent' },
      out: (s) => (out += s),
    });
    return { code, out };
  };

  it('tokens create prints the token once; list shows its prefix only; revoke refuses it at once', async () => {
    const org = await t.org();
    const made = await cli([
      'tokens',
      'create',
      '--org',
      org,
      '--scope',
      'deployments:read,audit:read',
      '--name',
      'cli',
    ]);
    expect(made.code).toBe(0);
    const token = /^token: +(ctx_[0-9A-Za-z]{43})$/m.exec(made.out)?.[1] ?? '';
    const id = /^token id: +([0-9a-f-]{36})$/m.exec(made.out)?.[1] ?? '';
    expect(token).not.toBe('');
    expect((await t.client(token).GET('/v1/deployments')).response.status).toBe(200);

    const listed = await cli(['tokens', 'list', '--org', org]);
    expect(listed.out).toContain(`ctx_${token.slice(4, 12)}…`);
    expect(listed.out).toContain('audit:read,deployments:read');
    expect(listed.out).not.toContain(token.slice(12));

    expect((await cli(['tokens', 'revoke', id])).code).toBe(0);
    expect((await t.client(token).GET('/v1/deployments')).response.status).toBe(401);
    expect((await cli(['tokens', 'list', '--org', org])).out).toBe('');

    const bad = await cli(['tokens', 'create', '--org', org, '--scope', 'deployments:read,root']);
    expect(bad.code).toBe(1);
    expect(bad.out).toContain('scope[1]: must be one of');
    const both = await cli(['tokens', 'create', '--org', org, '--ops', '--scope', 'admin']);
    expect([both.code, both.out]).toEqual([1, expect.stringContaining('exactly one of --org')]);
  });

  it('cortexctl api listens on 127.0.0.1:API_PORT, answers, and exits 0 on SIGTERM', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const a = s.address();
        s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
      });
    });
    const child = spawn(
      join(__dirname, '../../node_modules/.bin/tsx'),
      ['orchestrator/cli/cortexctl.ts', 'api'],
      {
        cwd: join(__dirname, '../..'),
        env: {
          ...process.env,
          DATABASE_URL: testDatabaseUrl(),
          API_PORT: String(port),
          QUEUE_PREFIX: `t${randomBytes(5).toString('hex')}`,
          LOG_LEVEL: 'warn',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let output = '';
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      const onData = (d: Buffer): void => {
        output += d.toString();
        if (output.includes('listening on')) resolve();
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      void exited.then(() => reject(new Error(`cortexctl api exited: ${output.slice(-2000)}`)));
    });
    expect(output).toContain(`http://127.0.0.1:${port}`);
    const r = await makeApiClient({ baseUrl: `http://127.0.0.1:${port}` }).GET('/healthz');
    expect([r.response.status, r.data]).toEqual([200, { status: 'ok' }]);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});

describe('failed authentications per address (Redis)', () => {
  it('past API_AUTH_FAILURE_LIMIT: 429 with Retry-After, counted by address in Redis with the window as TTL', async () => {
    const u = await startTestApi({ API_AUTH_FAILURE_LIMIT: '5/min' });
    try {
      const org = await u.org();
      const good = await u.token(org, ['deployments:read']);
      const unknown = () => `ctx_${randomBytes(32).toString('hex').slice(0, 43)}`;
      for (let i = 0; i < 5; i++)
        expect((await u.client(unknown()).GET('/v1/deployments')).response.status).toBe(401);
      for (let i = 0; i < 5; i++) {
        const r = await u.client(unknown()).GET('/v1/deployments');
        expect(r.response.status).toBe(429);
        expect(r.response.headers.get('content-type')).toMatch(PROBLEM);
        expect(Number(r.response.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      }
      // while blocked, a token this process has not yet found valid is refused too: telling it apart
      // would take a lookup (a token it has seen passes: api-token-cache.test.ts)
      expect((await u.client(good.token).GET('/v1/deployments')).response.status).toBe(429);
      // (that no token lookup runs while blocked: test/unit/api/api-abuse.test.ts counts them)
      const keys = await u.pipeline.redis.keys(`${u.pipeline.config.QUEUE_PREFIX}:authfail:*`);
      expect(keys).toHaveLength(1);
      expect(keys[0]).toMatch(/:authfail:ip-(::ffff:)?127\.0\.0\.1$/);
      const ttl = await u.pipeline.redis.pttl(keys[0] ?? '');
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(60_000);
    } finally {
      await u.close();
    }
  });
});
