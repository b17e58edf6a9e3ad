import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import { serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { generateToken, type ApiPrincipal } from '../../../orchestrator/api/api-tokens';
import { registerAuth } from '../../../orchestrator/api/auth';
import { makeErrorHandler } from '../../../orchestrator/api/problems';
import { auditRoutes } from '../../../orchestrator/api/routes/audit';
import type { ApiDeps } from '../../../orchestrator/api/server';
import type { Rpc } from '../../../orchestrator/db/rpc';
import { makeLogger } from '../../../orchestrator/log';
import type { FingerprintKey } from '../../../orchestrator/secrets/fingerprint';
import { makeSecretsService } from '../../../orchestrator/secrets/secrets-service';

/**
 * Review R15 F2: the audit endpoints verified the organisation's whole hash chain on every
 * request (`secret_access_log__verify`, a walk of every row since the anchor, whatever `limit`),
 * so ten `?limit=1` requests in flight over a padded chain held ten Postgres connections. Now,
 * per API process and organisation: concurrent requests share one verification, an intact result
 * is shared for API_AUDIT_VERIFY_MEMO_MS after it ends (the response's `chain.verifiedAt` says
 * when it was made), a failure or a broken chain is kept for no one. A counting fake rpc under
 * the real secrets service and the real route module.
 */
const log = makeLogger({ level: 'silent', name: 'audit-verify-memo-test' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ticks = async (n = 5) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

type Verify = { ok: boolean; rows_checked: number; first_bad_id: number | null; problem: string | null };
const intact: Verify = { ok: true, rows_checked: 36_000, first_bad_id: null, problem: null };

const start = async (opts: { memoMs: number }) => {
  const orgA = randomUUID();
  const orgB = randomUUID();
  const deploymentA = randomUUID();
  const calls = { verify: [] as string[], rows: 0 };
  /** what the next verification answers (a function, so a test can hold it open or fail it) */
  let verify: (orgId: string) => Promise<Verify> = async () => intact;
  const rpc = (async (fn: string, args: Record<string, unknown>) => {
    if (fn === 'secret_access_log__verify') {
      calls.verify.push(String(args.p_org_id));
      return verify(String(args.p_org_id));
    }
    if (fn === 'api_audit__org') {
      calls.rows += 1;
      return [
        {
          id: 1,
          at: '2026-12-01T00:00:00.000Z',
          deployment_id: null,
          secret_id: null,
          version: null,
          operation: 'bind',
          outcome: 'denied',
          actor: 'token:x',
          job_id: null,
          reason: 'no active secret with this id',
        },
      ];
    }
    throw new Error(`unexpected rpc ${fn}`);
  }) as Rpc;
  const secrets = makeSecretsService({ rpc, fingerprintKey: {} as FingerprintKey });
  const store = {
    get: async (id: string) => {
      if (id !== deploymentA) throw Object.assign(new Error('not found'), { code: 'not_found' });
      return { id, orgId: orgA };
    },
    audit: async () => [],
  };
  const tokenA = generateToken();
  const tokenB = generateToken();
  const principals = new Map<string, ApiPrincipal>([
    [tokenA, { tokenId: randomUUID(), orgId: orgA, scopes: ['audit:read'] }],
    [tokenB, { tokenId: randomUUID(), orgId: orgB, scopes: ['audit:read'] }],
  ]);
  const app: FastifyInstance = Fastify();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler(makeErrorHandler(log));
  registerAuth(app, { authenticate: async (t: string) => principals.get(t) });
  const deps = {
    log,
    tokens: {},
    pipeline: { config: { API_AUDIT_VERIFY_MEMO_MS: opts.memoMs }, db: { rpc }, secrets, store },
  } as unknown as ApiDeps;
  await app.register(auditRoutes, deps);
  await app.ready();
  const orgAudit = (token: string, orgId: string) =>
    app.inject({
      method: 'GET',
      url: `/v1/orgs/${orgId}/audit?limit=1`,
      headers: { authorization: `Bearer ${token}` },
    });
  const deploymentAudit = () =>
    app.inject({
      method: 'GET',
      url: `/v1/deployments/${deploymentA}/audit?limit=1`,
      headers: { authorization: `Bearer ${tokenA}` },
    });
  return {
    app,
    calls,
    orgA,
    orgB,
    tokenA,
    tokenB,
    orgAudit,
    deploymentAudit,
    setVerify: (f: typeof verify) => (verify = f),
  };
};

type Chain = { ok: boolean; rowsChecked: number; verifiedAt: string };
const chainOf = (body: string): Chain => (JSON.parse(body) as { chain: Chain }).chain;

describe('audit chain verification per organisation (review R15 F2)', () => {
  it('two requests within the window: one verification, the same verifiedAt; the rows are read each time', async () => {
    const t = await start({ memoMs: 30_000 });
    const before = Date.now();
    const r1 = await t.orgAudit(t.tokenA, t.orgA);
    const r2 = await t.orgAudit(t.tokenA, t.orgA);
    expect([r1.statusCode, r2.statusCode]).toEqual([200, 200]);
    expect(t.calls.verify).toEqual([t.orgA]);
    expect(t.calls.rows).toBe(2);
    const c1 = chainOf(r1.body);
    expect(c1).toEqual({
      ok: true,
      rowsChecked: 36_000,
      firstBadId: null,
      problem: null,
      verifiedAt: c1.verifiedAt,
    });
    expect(Date.parse(c1.verifiedAt)).toBeGreaterThanOrEqual(before - 1);
    expect(Date.parse(c1.verifiedAt)).toBeLessThanOrEqual(Date.now());
    expect(chainOf(r2.body).verifiedAt).toBe(c1.verifiedAt);
    // the deployment's audit shares its organisation's result; another organisation gets its own run
    const r3 = await t.deploymentAudit();
    expect([r3.statusCode, chainOf(r3.body).verifiedAt]).toEqual([200, c1.verifiedAt]);
    expect((await t.orgAudit(t.tokenB, t.orgB)).statusCode).toBe(200);
    expect(t.calls.verify).toEqual([t.orgA, t.orgB]);
    await t.app.close();
  });

  it('concurrent requests share one verification', async () => {
    const t = await start({ memoMs: 30_000 });
    let release: () => void = () => undefined;
    t.setVerify(() => new Promise<Verify>((r) => (release = () => r(intact))));
    const pending = Array.from({ length: 10 }, () => t.orgAudit(t.tokenA, t.orgA));
    while (t.calls.rows < 10) await ticks(1);
    await ticks();
    expect(t.calls.verify).toEqual([t.orgA]);
    release();
    const answers = await Promise.all(pending);
    expect(answers.map((r) => r.statusCode)).toEqual(Array(10).fill(200));
    expect(new Set(answers.map((r) => chainOf(r.body).verifiedAt)).size).toBe(1);
    expect(t.calls.verify).toHaveLength(1);
    await t.app.close();
  });

  it('after the window, a new verification with a later verifiedAt', async () => {
    const t = await start({ memoMs: 200 });
    const first = chainOf((await t.orgAudit(t.tokenA, t.orgA)).body);
    expect(chainOf((await t.orgAudit(t.tokenA, t.orgA)).body).verifiedAt).toBe(first.verifiedAt);
    expect(t.calls.verify).toHaveLength(1);
    await sleep(260);
    const later = chainOf((await t.orgAudit(t.tokenA, t.orgA)).body);
    expect(t.calls.verify).toHaveLength(2);
    expect(Date.parse(later.verifiedAt)).toBeGreaterThan(Date.parse(first.verifiedAt));
    await t.app.close();
  });

  it('a failed verification fails the requests that shared it and is not kept: the next request verifies again', async () => {
    const t = await start({ memoMs: 30_000 });
    let fail: () => void = () => undefined;
    t.setVerify(
      () => new Promise<Verify>((_r, reject) => (fail = () => reject(new Error('connection terminated')))),
    );
    const pending = Array.from({ length: 3 }, () => t.orgAudit(t.tokenA, t.orgA));
    while (t.calls.rows < 3) await ticks(1);
    await ticks();
    fail();
    expect((await Promise.all(pending)).map((r) => r.statusCode)).toEqual([500, 500, 500]);
    expect(t.calls.verify).toHaveLength(1);
    t.setVerify(async () => intact);
    const again = await t.orgAudit(t.tokenA, t.orgA);
    expect([again.statusCode, chainOf(again.body).ok]).toEqual([200, true]);
    expect(t.calls.verify).toHaveLength(2);
    await t.app.close();
  });

  it('a broken chain is shown as broken and not kept: every request verifies it again', async () => {
    const t = await start({ memoMs: 30_000 });
    t.setVerify(async () => ({ ok: false, rows_checked: 12, first_bad_id: 7, problem: 'changed' }));
    for (let i = 1; i <= 2; i++) {
      const r = await t.orgAudit(t.tokenA, t.orgA);
      expect([r.statusCode, chainOf(r.body)]).toEqual([
        200,
        expect.objectContaining({ ok: false, firstBadId: 7, problem: 'changed' }),
      ]);
      expect(t.calls.verify).toHaveLength(i);
    }
    await t.app.close();
  });
});
