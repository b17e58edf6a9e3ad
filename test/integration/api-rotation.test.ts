import { makeRotationFromPipeline } from '../../orchestrator/rotation/rotation-from-config';
import { Secret } from '../../orchestrator/secret';
import type { Workers } from '../../orchestrator/queues/workers';
import { startTestApi, type TestApi } from '../support/api';
import { adminPool, auditRows } from '../support/db';
import { canary } from '../support/canary';

/**
 * The rotation routes over a real listening API (no hosts: the keys here are bound to no
 * deployment, so a rotation completes as soon as the worker takes it): idempotency, org isolation,
 * the value in no response and no log line, the audit context of the caller.
 */
jest.setTimeout(120_000);

let t: TestApi;
let workers: Workers;
const admin = adminPool();

beforeAll(async () => {
  t = await startTestApi();
  const rot = makeRotationFromPipeline(t.pipeline);
  workers = t.pipeline.makeWorkerSet(rot.maintenanceTasks, rot.processors);
  workers.start(['rotate', 'revoke']);
});
afterAll(async () => {
  await t?.close();
  await admin.end();
});

const keyOf = async (orgId: string): Promise<string> =>
  (
    await t.pipeline.secrets.create({
      orgId,
      name: `rot-${Math.random().toString(36).slice(2, 8)}`,
      provider: 'anthropic',
      value: new Secret(canary()),
    })
  ).secretId;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('rotation over the API', () => {
  it('rotates with an Idempotency-Key (a repeat is the same rotation, another value 422), follows it to completed, audits the token', async () => {
    const org = await t.org();
    const tok = await t.token(org, ['secrets:write', 'deployments:read']);
    const secretId = await keyOf(org);
    const value = canary();
    const headers = { 'idempotency-key': 'rotate-1' };
    const first = await t.call('POST', `/v1/secrets/${secretId}/rotate`, {
      token: tok.token,
      body: { value },
      headers,
    });
    expect(first.status).toBe(202);
    const rot = first.json as { id: string; toVersion: number; deployments: unknown[] };
    expect([rot.toVersion, rot.deployments]).toEqual([2, []]);
    const again = await t.call('POST', `/v1/secrets/${secretId}/rotate`, {
      token: tok.token,
      body: { value },
      headers,
    });
    expect([again.status, (again.json as { id: string }).id]).toEqual([200, rot.id]);
    const other = await t.call('POST', `/v1/secrets/${secretId}/rotate`, {
      token: tok.token,
      body: { value: canary() },
      headers,
    });
    expect(other.json).toMatchObject({ status: 422, field: 'header.idempotency-key' });
    let state = '';
    for (let i = 0; i < 100 && state !== 'completed'; i++) {
      const s = await t.call('GET', `/v1/rotations/${rot.id}`, { token: tok.token });
      expect(s.status).toBe(200);
      state = (s.json as { state: string }).state;
      if (state !== 'completed') await sleep(200);
    }
    expect(state).toBe('completed');
    for (const r of [first, again, other]) expect(r.text).not.toContain(value);
    expect(t.logs.some((l) => l.includes(value))).toBe(false);
    const rows = (await auditRows(admin, { secretId })).filter((r) => r.operation === 'rotate');
    expect(rows.length).toBeGreaterThanOrEqual(2);
    expect(rows.every((r) => r.actor === `token:${tok.id}` || r.actor === 'orchestrator')).toBe(true);
    expect(rows.some((r) => r.actor === `token:${tok.id}` && r.job_id === `rotate-${rot.id}`)).toBe(true);
  });

  it("another organisation's secret and rotation are 404 to an org token; bad input names the field", async () => {
    const orgA = await t.org();
    const orgB = await t.org();
    const tokB = await t.token(orgB, ['secrets:write', 'deployments:read']);
    const tokA = await t.token(orgA, ['secrets:write', 'deployments:read']);
    const secretA = await keyOf(orgA);
    const r = await t.call('POST', `/v1/secrets/${secretA}/rotate`, {
      token: tokB.token,
      body: { value: canary() },
    });
    expect(r.status).toBe(404);
    expect(
      (await t.call('POST', `/v1/secrets/${secretA}/revoke`, { token: tokB.token, body: {} })).status,
    ).toBe(404);
    const ok = await t.call('POST', `/v1/secrets/${secretA}/rotate`, {
      token: tokA.token,
      body: { value: canary() },
    });
    expect(ok.status).toBe(202);
    const id = (ok.json as { id: string }).id;
    expect((await t.call('GET', `/v1/rotations/${id}`, { token: tokB.token })).status).toBe(404);
    const bad = await t.call('POST', `/v1/secrets/${secretA}/rotate`, {
      token: tokA.token,
      body: { value: 'short' },
    });
    expect(bad.status).toBe(400);
    expect(bad.json).toMatchObject({ field: 'value' });
    expect(bad.text).not.toContain('qz7');
    const noScope = await t.token(orgA, ['deployments:read']);
    expect(
      (
        await t.call('POST', `/v1/secrets/${secretA}/rotate`, {
          token: noScope.token,
          body: { value: canary() },
        })
      ).status,
    ).toBe(403);
  });

  it('revoking a whole secret deletes every version from the vault', async () => {
    const org = await t.org();
    const tok = await t.token(org, ['secrets:write']);
    const secretId = await keyOf(org);
    const ua = 'revoker/1.0 (api-rotation test)';
    const r = await t.call('POST', `/v1/secrets/${secretId}/revoke`, {
      token: tok.token,
      body: {},
      headers: { 'user-agent': ua },
    });
    expect(r.status).toBe(202);
    const { jobId } = r.json as { jobId: string };
    // the accepted request is audited with the token, address, user agent and the job it queued
    const requested = (await auditRows(admin, { secretId })).filter((x) => x.operation === 'request');
    expect(requested).toEqual([
      expect.objectContaining({
        org_id: org,
        outcome: 'success',
        actor: `token:${tok.id}`,
        request_ip: '127.0.0.1',
        user_agent: ua,
        job_id: jobId,
      }),
    ]);
    let revoked = false;
    for (let i = 0; i < 100 && !revoked; i++) {
      revoked = (await auditRows(admin, { secretId })).some((x) => x.operation === 'revoke');
      if (!revoked) await sleep(200);
    }
    expect(revoked).toBe(true);
    const n = await admin.query<{ n: string }>(
      `select count(*) as n from vault.secrets v join public.secret_versions sv on sv.vault_secret_id = v.id where sv.secret_id = $1`,
      [secretId],
    );
    expect(Number(n.rows[0]?.n)).toBe(0);
  });
});
