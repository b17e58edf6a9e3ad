import { randomUUID } from 'node:crypto';
import { makeApiRetention } from '../../orchestrator/api/api-retention';
import { makeApiClient } from '../../orchestrator/api/client';
import { Secret } from '../../orchestrator/secret';
import type { Workers } from '../../orchestrator/queues/workers';
import { startTestApi, type TestApi } from '../support/api';
import { adminPool, auditRows } from '../support/db';
import { canary } from '../support/canary';
import { dumpRedis, uniqueSubdomain } from '../support/pipeline';

/**
 * The API end to end through a real listening server, real Postgres and Redis: `live` has workers
 * (a deployment requested over HTTP reaches `ready` on a real local host); `quiet` has none under
 * its queue prefix, for the tests that only need the records (idempotency, isolation). Every request
 * goes through the onboarding app's typed client, so a drift of the API's schema fails to compile.
 */
jest.setTimeout(360_000);

let live: TestApi;
let quiet: TestApi;
let workers: Workers;
const admin = adminPool();

beforeAll(async () => {
  [live, quiet] = await Promise.all([startTestApi(), startTestApi()]);
  workers = live.pipeline.makeWorkerSet();
  workers.start();
});
afterAll(async () => {
  for (const t of [quiet, live]) {
    if (!t) continue;
    // the jobs this file queued (quiet's are never consumed) go with it
    const keys = [...(await dumpRedis(t.pipeline.redis, `${t.pipeline.config.QUEUE_PREFIX}:*`)).keys()];
    if (keys.length) await t.pipeline.redis.del(...keys);
  }
  await live?.close();
  await quiet?.close();
  await admin.end();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('a deployment over HTTP', () => {
  it('stores a canary key, requests a deployment bound to it, reaches ready, is audited and deleted; the key is in no response, log line or Redis key', async () => {
    const t = live;
    const org = await t.org();
    const tok = await t.token(org, ['secrets:write', 'deployments:write', 'deployments:read', 'audit:read']);
    const value = canary('anthropic');
    const responses: string[] = [];
    const ua = 'onboarding-app/1.0 (api test)';
    // the onboarding app's typed client, every response (body and headers) kept for the canary check
    const api = makeApiClient({
      baseUrl: t.api.url,
      token: tok.token,
      userAgent: ua,
      fetch: async (request) => {
        const res = await fetch(request);
        responses.push(await res.clone().text(), JSON.stringify([...res.headers]));
        return res;
      },
    });

    const stored = await api.POST('/v1/secrets', {
      body: { name: 'anthropic key', provider: 'anthropic', value },
    });
    expect(stored.response.status).toBe(201);
    const meta = stored.data;
    if (!meta) throw new Error('no key metadata');
    expect(Object.keys(meta).sort()).toEqual(
      ['displayPrefix', 'fingerprint', 'id', 'name', 'orgId', 'provider', 'version'].sort(),
    );
    expect(meta).toMatchObject({ name: 'anthropic key', provider: 'anthropic', orgId: org });
    // the audit row names the token, the address and the user agent
    const created = (await auditRows(admin, { secretId: meta.id })).find((r) => r.operation === 'create');
    expect(created).toMatchObject({
      outcome: 'success',
      actor: `token:${tok.id}`,
      request_ip: '127.0.0.1',
      user_agent: ua,
    });

    const listed = await api.GET('/v1/secrets');
    expect(listed.data?.map((s) => s.id)).toEqual([meta.id]);

    const subdomain = uniqueSubdomain('api');
    const req = await api.POST('/v1/deployments', {
      body: {
        name: 'api test agent',
        subdomain,
        bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: meta.id }],
      },
    });
    expect(req.response.status).toBe(201);
    const id = req.data?.deploymentId ?? '';
    expect(req.response.headers.get('location')).toBe(`/v1/deployments/${id}`);

    type Got = NonNullable<Awaited<ReturnType<typeof getDeployment>>['data']>;
    const getDeployment = () => api.GET('/v1/deployments/{id}', { params: { path: { id } } });
    let d: Got | undefined;
    const deadline = Date.now() + 240_000;
    while (Date.now() < deadline) {
      d = (await getDeployment()).data;
      if (d && ['ready', 'failed'].includes(d.status)) break;
      await sleep(1_000);
    }
    expect(d?.status).toBe('ready');
    expect(d?.steps.filter((s) => s.operation === 'provision').map((s) => s.step)).toEqual([
      'host',
      'dns',
      'ssh',
      'configure',
      'secrets',
      'start',
      'health',
      'ready',
    ]);

    // a ready deployment cannot be retried
    const retry = await api.POST('/v1/deployments/{id}/retry', { params: { path: { id } } });
    expect(retry.response.status).toBe(409);

    const audit = await api.GET('/v1/deployments/{id}/audit', { params: { path: { id } } });
    expect(audit.response.status).toBe(200);
    expect(audit.data?.chain.ok).toBe(true);
    expect(audit.data?.entries.map((e) => [e.operation, e.outcome])).toEqual(
      expect.arrayContaining([
        ['bind', 'success'],
        ['read', 'success'],
      ]),
    );
    const orgAudit = await api.GET('/v1/orgs/{orgId}/audit', { params: { path: { orgId: org } } });
    expect(orgAudit.response.status).toBe(200);
    expect(orgAudit.data?.chain).toMatchObject({ ok: true });

    const del = await api.DELETE('/v1/deployments/{id}', { params: { path: { id } } });
    expect([del.response.status, del.data?.status]).toEqual([202, 'deprovisioning']);
    // the deletion is audited with the token, address, user agent and the job it queued
    const deleteRequest = (await auditRows(admin, { deploymentId: id })).filter(
      (r) => r.operation === 'request',
    );
    expect(deleteRequest).toEqual([
      expect.objectContaining({
        org_id: org,
        outcome: 'success',
        actor: `token:${tok.id}`,
        request_ip: '127.0.0.1',
        user_agent: ua,
        job_id: del.data?.jobId,
        reason: 'deprovision requested',
      }),
    ]);
    const gone = await t.pipeline.service.watch(id, () => undefined, {
      timeoutMs: 120_000,
      until: (x) => x.status === 'deleted',
    });
    expect(gone.status).toBe('deleted');

    // the canary: in no response (bodies and headers), no log line, no Redis key or job
    expect(responses.length).toBeGreaterThan(10);
    expect(responses.filter((r) => r.includes(value))).toEqual([]);
    expect(t.logs.length).toBeGreaterThan(10);
    expect(t.logs.some((l) => l.includes('"url":"/v1/secrets"'))).toBe(true);
    expect(t.logs.filter((l) => l.includes(value))).toEqual([]);
    expect(t.logs.filter((l) => l.includes(tok.token))).toEqual([]);
    const redis = await dumpRedis(t.pipeline.redis, `${t.pipeline.config.QUEUE_PREFIX}:*`);
    expect([...redis].filter(([k, v]) => k.includes(value) || v.includes(value))).toEqual([]);
  });

  it('/readyz is ready with a live worker, and names the workers when none runs under the prefix', async () => {
    const ok = await live.client().GET('/readyz');
    expect([ok.response.status, ok.data]).toEqual([
      200,
      { status: 'ready', checks: { postgres: 'ok', redis: 'ok', workers: 'ok' } },
    ]);
    const not = await quiet.client().GET('/readyz');
    expect(not.response.status).toBe(503);
    expect(not.response.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(not.error).toMatchObject({ checks: { postgres: 'ok', redis: 'ok', workers: 'failed' } });
  });
});

describe('DELETE /v1/deployments/:id', () => {
  it('is audited when accepted: a request row naming the token, address, user agent and job (no worker needed)', async () => {
    const t = quiet;
    const org = await t.org();
    const tok = await t.token(org, ['deployments:write']);
    const req = await t.client(tok.token).POST('/v1/deployments', {
      body: { name: 'delete audit', subdomain: uniqueSubdomain('del'), runtime: 'echo', bindings: [] },
    });
    expect(req.response.status).toBe(201);
    const id = req.data?.deploymentId ?? '';
    const ua = 'deleter/1.0 (api test)';
    const del = await makeApiClient({ baseUrl: t.api.url, token: tok.token, userAgent: ua }).DELETE(
      '/v1/deployments/{id}',
      { params: { path: { id } } },
    );
    expect(del.response.status).toBe(202);
    const rows = (await auditRows(admin, { deploymentId: id })).filter((r) => r.operation === 'request');
    expect(rows).toEqual([
      expect.objectContaining({
        org_id: org,
        outcome: 'success',
        actor: `token:${tok.id}`,
        request_ip: '127.0.0.1',
        user_agent: ua,
        job_id: `deprovision-${id}`,
        reason: 'deprovision requested',
      }),
    ]);
    expect(del.data?.jobId).toBe(`deprovision-${id}`);
  });
});

describe('Idempotency-Key', () => {
  const body = (subdomain: string) => ({ name: 'idem', subdomain, runtime: 'echo' as const, bindings: [] });

  it('two concurrent requests with one key make one deployment; the replay answers 200 with the same body', async () => {
    const t = quiet;
    const org = await t.org();
    const c = t.client((await t.token(org, ['deployments:write', 'deployments:read'])).token);
    const sub = uniqueSubdomain('idem');
    const key = `key-${sub}`;
    const send = () =>
      c.POST('/v1/deployments', { params: { header: { 'idempotency-key': key } }, body: body(sub) });
    const [a, b] = await Promise.all([send(), send()]);
    expect([a.response.status, b.response.status].sort()).toEqual([200, 201]);
    expect(a.data).toEqual(b.data);
    const list = await c.GET('/v1/deployments');
    expect(list.data).toHaveLength(1);
    const again = await send();
    expect([again.response.status, again.data, again.response.headers.get('idempotent-replayed')]).toEqual([
      200,
      a.data,
      'true',
    ]);
    const count = await admin.query('select count(*)::int as n from public.deployments where org_id = $1', [
      org,
    ]);
    expect(count.rows[0]).toEqual({ n: 1 });
  });

  it('the same key with another body is a 422 problem naming the header, and makes nothing', async () => {
    const t = quiet;
    const org = await t.org();
    const c = t.client((await t.token(org, ['deployments:write'])).token);
    const sub = uniqueSubdomain('idem');
    const header = { 'idempotency-key': `k-${sub}` };
    const first = await c.POST('/v1/deployments', { params: { header }, body: body(sub) });
    expect(first.response.status).toBe(201);
    const other = await c.POST('/v1/deployments', {
      params: { header },
      body: { ...body(sub), name: 'another name' },
    });
    expect(other.response.status).toBe(422);
    expect(other.response.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(other.error).toMatchObject({ status: 422, field: 'header.idempotency-key' });
    const count = await admin.query('select count(*)::int as n from public.deployments where org_id = $1', [
      org,
    ]);
    expect(count.rows[0]).toEqual({ n: 1 });
    // without a key, the same body is a new request (refused here: the subdomain is taken)
    const nokey = await c.POST('/v1/deployments', { body: body(sub) });
    expect(nokey.response.status).toBe(409);
    // the database's own words (constraint names, SQLSTATEs) stay out of the problem
    expect(nokey.error).toMatchObject({ field: 'subdomain', detail: 'subdomain: is already in use' });
    expect(JSON.stringify(nokey.error)).not.toMatch(/SQLSTATE|constraint|_key|deployments__/);
  });
});

describe('Idempotency-Key scope: one rule for every endpoint', () => {
  const body = (subdomain: string) => ({ name: 'idem', subdomain, runtime: 'echo' as const, bindings: [] });
  const keyOf = async (t: TestApi, orgId: string): Promise<string> =>
    (
      await t.pipeline.secrets.create({
        orgId,
        name: `idem-${randomUUID().slice(0, 8)}`,
        provider: 'anthropic',
        value: new Secret(canary()),
      })
    ).secretId;

  it("keys are per organisation: two tokens of one org and an ops token acting for it get the same deployment and the same rotation; another org's same key is independent", async () => {
    const t = quiet;
    const [orgA, orgB] = [await t.org(), await t.org()];
    const scopes = ['secrets:write', 'deployments:write', 'deployments:read'] as const;
    const a1 = t.client((await t.token(orgA, scopes)).token);
    const a2 = t.client((await t.token(orgA, scopes)).token);
    const ops = t.client((await t.token(null, scopes)).token);
    const b = t.client((await t.token(orgB, scopes)).token);
    const header = { 'idempotency-key': `shared-${randomUUID()}` };

    // POST /v1/deployments
    const sub = uniqueSubdomain('idem');
    const d1 = await a1.POST('/v1/deployments', { params: { header }, body: body(sub) });
    const d2 = await a2.POST('/v1/deployments', { params: { header }, body: body(sub) });
    const d3 = await ops.POST('/v1/deployments', { params: { header }, body: { ...body(sub), orgId: orgA } });
    expect([d1.response.status, d2.response.status, d3.response.status]).toEqual([201, 200, 200]);
    expect(d1.data?.orgId).toBe(orgA);
    expect([d2.data?.deploymentId, d3.data?.deploymentId]).toEqual([
      d1.data?.deploymentId,
      d1.data?.deploymentId,
    ]);
    const dB = await b.POST('/v1/deployments', { params: { header }, body: body(uniqueSubdomain('idem')) });
    expect(dB.response.status).toBe(201);
    expect(dB.data?.deploymentId).not.toBe(d1.data?.deploymentId);
    const counts = await admin.query<{ org_id: string; n: number }>(
      'select org_id::text, count(*)::int as n from public.deployments where org_id = any($1) group by org_id order by org_id',
      [[orgA, orgB]],
    );
    expect(counts.rows).toEqual(
      [
        { org_id: orgA, n: 1 },
        { org_id: orgB, n: 1 },
      ].sort((x, y) => x.org_id.localeCompare(y.org_id)),
    );

    // POST /v1/secrets/:id/rotate, the same key (its own endpoint: no clash with the deployment's)
    const [secretA, otherA, secretB] = [await keyOf(t, orgA), await keyOf(t, orgA), await keyOf(t, orgB)];
    const value = canary();
    const rotate = (c: typeof a1, id: string, v = value) =>
      c.POST('/v1/secrets/{id}/rotate', { params: { path: { id }, header }, body: { value: v } });
    const r1 = await rotate(a1, secretA);
    const r2 = await rotate(a2, secretA);
    const r3 = await rotate(ops, secretA);
    expect([r1.response.status, r2.response.status, r3.response.status]).toEqual([202, 200, 200]);
    expect([r2.data?.id, r3.data?.id]).toEqual([r1.data?.id, r1.data?.id]);
    expect(r1.data?.toVersion).toBe(2);
    // the same key on another secret of the org is another request: 422, as for a deployment
    const clash = await rotate(a2, otherA, canary());
    expect([clash.response.status, clash.error?.field]).toEqual([422, 'header.idempotency-key']);
    // ... and so is the same key and value with another leak setting (the answer is not the earlier rotation)
    const leak = await a1.POST('/v1/secrets/{id}/rotate', {
      params: { path: { id: secretA }, header },
      body: { value, leaked: true },
    });
    expect([leak.response.status, leak.error?.field]).toEqual([422, 'header.idempotency-key']);
    // another organisation's same key starts its own rotation
    const rB = await rotate(b, secretB);
    expect(rB.response.status).toBe(202);
    expect(rB.data?.id).not.toBe(r1.data?.id);
    const versions = await admin.query<{ id: string; current_version: number }>(
      'select id::text, current_version from public.secrets where id = any($1)',
      [[secretA, otherA, secretB]],
    );
    expect(Object.fromEntries(versions.rows.map((r) => [r.id, r.current_version]))).toEqual({
      [secretA]: 2,
      [otherA]: 1,
      [secretB]: 2,
    });
  });
});

describe('retention of idempotency keys', () => {
  it('the maintenance task (as the orchestrator role) forgets a key past IDEMPOTENCY_KEEP_SECONDS: the key then starts a new request; a recent key is kept', async () => {
    const t = quiet;
    const org = await t.org();
    const c = t.client((await t.token(org, ['deployments:write'])).token);
    const [oldKey, newKey] = [`old-${randomUUID()}`, `new-${randomUUID()}`];
    const ask = (key: string) =>
      c.POST('/v1/deployments', {
        params: { header: { 'idempotency-key': key } },
        body: { name: 'kept', subdomain: uniqueSubdomain('ret') },
      });
    expect((await ask(oldKey)).response.status).toBe(201);
    expect((await ask(newKey)).response.status).toBe(201);
    // another body under a remembered key: 422
    expect((await ask(oldKey)).response.status).toBe(422);
    await admin.query(
      `update public.api_idempotency_keys set created_at = now() - make_interval(secs => $2 + 60)
       where org_id = $1 and key = $3`,
      [org, t.pipeline.config.IDEMPOTENCY_KEEP_SECONDS, oldKey],
    );
    const removed = await makeApiRetention({
      rpc: t.pipeline.db.rpc,
      log: t.log,
      ages: t.pipeline.config,
    }).run();
    expect(removed.idempotencyKeys).toBeGreaterThanOrEqual(1);
    const left = await admin.query<{ key: string }>(
      'select key from public.api_idempotency_keys where org_id = $1 order by key',
      [org],
    );
    expect(left.rows.map((r) => r.key)).toEqual([newKey]);
    // forgotten: the old key now makes a new deployment; the recent one still refuses another body
    expect((await ask(oldKey)).response.status).toBe(201);
    expect((await ask(newKey)).response.status).toBe(422);
  });
});

describe('organisations are isolated', () => {
  it("org A's token gets 404 for org B's deployment, key and audit; an ops token sees them", async () => {
    const t = quiet;
    const [orgA, orgB] = [await t.org(), await t.org()];
    const all = ['secrets:write', 'deployments:write', 'deployments:read', 'audit:read'] as const;
    const a = t.client((await t.token(orgA, all)).token);
    const b = t.client((await t.token(orgB, all)).token);
    const ops = t.client((await t.token(null, ['deployments:read', 'audit:read', 'admin'])).token);
    const keyB = await t.pipeline.secrets.create({
      orgId: orgB,
      name: 'b key',
      provider: 'openai',
      value: new Secret(canary('openai')),
    });
    const depB = await b.POST('/v1/deployments', {
      body: { name: 'b agent', subdomain: uniqueSubdomain('iso') },
    });
    expect(depB.response.status).toBe(201);
    const idB = depB.data?.deploymentId ?? '';
    const unknown = '00000000-0000-4000-8000-000000000000';

    // each call for B's ids and for ids that do not exist: the same 404 problem
    const calls: [string, (id: string, orgId: string) => Promise<{ response: Response; error?: unknown }>][] =
      [
        ['GET deployment', (id) => a.GET('/v1/deployments/{id}', { params: { path: { id } } })],
        ['POST retry', (id) => a.POST('/v1/deployments/{id}/retry', { params: { path: { id } } })],
        ['DELETE deployment', (id) => a.DELETE('/v1/deployments/{id}', { params: { path: { id } } })],
        ['GET deployment audit', (id) => a.GET('/v1/deployments/{id}/audit', { params: { path: { id } } })],
        ['GET org audit', (_, orgId) => a.GET('/v1/orgs/{orgId}/audit', { params: { path: { orgId } } })],
        ['GET secrets', (_, orgId) => a.GET('/v1/secrets', { params: { query: { orgId } } })],
      ];
    for (const [name, call] of calls) {
      const theirs = await call(idB, orgB);
      const none = await call(unknown, unknown);
      expect([name, theirs.response.status]).toEqual([name, 404]);
      // the same answer as for an id that does not exist: nothing confirms B's ids
      expect(theirs.error).toEqual(none.error);
    }
    const store = await a.POST('/v1/secrets', {
      body: { orgId: orgB, name: 'x', provider: 'other', value: canary('other') },
    });
    expect(store.response.status).toBe(404);
    // binding B's key from A: refused, naming the field, the same as an unknown id
    const bind = (secretId: string) =>
      a.POST('/v1/deployments', {
        body: { name: 'a agent', subdomain: uniqueSubdomain('iso'), bindings: [{ envVar: 'K', secretId }] },
      });
    const stolen = await bind(keyB.secretId);
    expect(stolen.response.status).toBe(422);
    expect(stolen.error).toMatchObject({ field: 'bindings.0.secretId' });
    expect((await bind(unknown)).error).toEqual(stolen.error);
    // B's deployment is untouched, and listed only for B
    expect((await a.GET('/v1/deployments')).data).toEqual([]);
    const byId = { params: { path: { id: idB } } };
    expect((await b.GET('/v1/deployments/{id}', byId)).response.status).toBe(200);
    expect((await t.pipeline.store.get(idB)).status).toBe('requested');

    // an ops token sees every organisation's
    expect((await ops.GET('/v1/deployments/{id}', byId)).response.status).toBe(200);
    expect(
      (await ops.GET('/v1/orgs/{orgId}/audit', { params: { path: { orgId: orgB } } })).response.status,
    ).toBe(200);
  });

  it('an org token cannot hold admin; an ops token must name the organisation it acts on', async () => {
    const t = quiet;
    const org = await t.org();
    await expect(t.token(org, ['admin'])).rejects.toMatchObject({ code: 'invalid_input', field: 'scopes' });
    const ops = t.client((await t.token(null, ['secrets:write'])).token);
    const r = await ops.POST('/v1/secrets', {
      body: { name: 'k', provider: 'other', value: canary('other') },
    });
    expect([r.response.status, r.error?.field]).toEqual([400, 'orgId']);
  });
});
