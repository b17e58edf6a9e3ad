import { randomUUID } from 'node:crypto';
import type { Job } from 'bullmq';
import type { Workers } from '../../orchestrator/queues/workers';
import { makeRotationFromPipeline } from '../../orchestrator/rotation/rotation-from-config';
import { Secret } from '../../orchestrator/secret';
import { startTestApi, type TestApi } from '../support/api';
import { adminPool } from '../support/db';
import { canary } from '../support/canary';

/**
 * Review R7 (issue 11): attacks on rotation and revocation that are REFUSED (guards; the review's
 * findings are in its report). As someone who can write jobs into Redis: a revoke naming one
 * organisation's secret and another's deployment, a rotate naming no rotation, a rotate carrying
 * a value. As an org-scoped API token: an Idempotency-Key another organisation used, the overdue
 * keys of another organisation. A race: two rotations of one secret requested at once. Real
 * Postgres and Redis/BullMQ, the rotation workers running; no hosts (nothing here is bound to a
 * running agent).
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

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const keyOf = async (orgId: string): Promise<string> =>
  (
    await t.pipeline.secrets.create({
      orgId,
      name: `r7-${randomUUID().slice(0, 6)}`,
      provider: 'anthropic',
      value: new Secret(canary()),
    })
  ).secretId;

const secretState = async (
  secretId: string,
): Promise<{ status: string; versions: number; vaultRows: number }> => {
  const r = await admin.query<{ status: string; v: string; n: string }>(
    `select s.status,
            (select count(*) from public.secret_versions sv where sv.secret_id = s.id) as v,
            (select count(*) from vault.secrets x join public.secret_versions sv on sv.vault_secret_id = x.id
              where sv.secret_id = s.id) as n
       from public.secrets s where s.id = $1`,
    [secretId],
  );
  return {
    status: String(r.rows[0]?.status),
    versions: Number(r.rows[0]?.v),
    vaultRows: Number(r.rows[0]?.n),
  };
};

const finished = async (job: Job): Promise<string> => {
  for (let i = 0; i < 150; i++) {
    const s = await job.getState();
    if (s === 'completed' || s === 'failed') return s;
    await sleep(200);
  }
  return 'timeout';
};

describe('review R7: forged jobs (someone who can write to Redis)', () => {
  it("a revoke naming org A's secret and org B's deployment changes nothing", async () => {
    const orgA = await t.org();
    const orgB = await t.org();
    const secretA = await keyOf(orgA);
    const depA = await t.pipeline.store.request({
      orgId: orgA,
      name: 'r7 a',
      subdomain: `r7a-${randomUUID().slice(0, 8)}`,
      provider: 'local',
      runtime: 'echo',
      bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: secretA }],
    });
    const depB = await t.pipeline.store.request({
      orgId: orgB,
      name: 'r7 b',
      subdomain: `r7b-${randomUUID().slice(0, 8)}`,
      provider: 'local',
      runtime: 'echo',
      bindings: [],
    });
    if (depA.status !== 'ok' || depB.status !== 'ok') throw new Error('set-up: request refused');
    const job = await t.pipeline.queues.queues.revoke.add(
      'revoke',
      { secretId: secretA, deploymentId: depB.deployment.id },
      { jobId: `forged-${randomUUID()}`, attempts: 1 },
    );
    // a revoke job carries a revocation id alone now (20261204100000_revocations.sql): refused
    expect(await finished(job)).toBe('failed');
    expect(await secretState(secretA)).toEqual({ status: 'active', versions: 1, vaultRows: 1 });
    const bound = await admin.query(
      `select 1 from public.deployment_secrets where deployment_id = $1 and secret_id = $2`,
      [depA.deployment.id, secretA],
    );
    expect(bound.rowCount).toBe(1);
    const revokeRows = await admin.query(
      `select 1 from public.secret_access_log where secret_id = $1 and operation in ('revoke', 'delete', 'unbind')`,
      [secretA],
    );
    expect(revokeRows.rowCount).toBe(0);
  });

  it('a rotate naming no rotation fails for good and creates nothing', async () => {
    const rotationId = randomUUID();
    const job = await t.pipeline.queues.queues.rotate.add(
      'rotate',
      { rotationId },
      { jobId: `forged-${randomUUID()}`, attempts: 3 },
    );
    expect(await finished(job)).toBe('failed');
    // not retried: a rotation that does not exist is a permanent failure (3 attempts allowed, 1 made)
    expect((await t.pipeline.queues.queues.rotate.getJob(job.id ?? ''))?.attemptsMade).toBe(1);
    const r = await admin.query(`select 1 from public.secret_rotations where id = $1`, [rotationId]);
    expect(r.rowCount).toBe(0);
  });

  it('a rotate carrying a value is refused unread and its data wiped from Redis', async () => {
    const org = await t.org();
    const secretId = await keyOf(org);
    const value = canary();
    const job = await t.pipeline.queues.queues.rotate.add(
      'rotate',
      { rotationId: randomUUID(), secretId, value },
      { jobId: `forged-${randomUUID()}`, attempts: 1 },
    );
    expect(await finished(job)).toBe('failed');
    const again = await t.pipeline.queues.queues.rotate.getJob(job.id ?? '');
    expect(again?.data).toEqual({});
    expect(JSON.stringify(again?.failedReason ?? '')).not.toContain(value);
    expect(await secretState(secretId)).toEqual({ status: 'active', versions: 1, vaultRows: 1 });
  });
});

describe('review R7: org-scoped tokens and races over the API', () => {
  it("the same Idempotency-Key from another organisation is another request, never org A's rotation", async () => {
    const orgA = await t.org();
    const orgB = await t.org();
    const tokA = await t.token(orgA, ['secrets:write', 'deployments:read']);
    const tokB = await t.token(orgB, ['secrets:write', 'deployments:read']);
    const secretA = await keyOf(orgA);
    const secretB = await keyOf(orgB);
    const value = canary();
    const headers = { 'idempotency-key': 'r7-shared-key' };
    const a = await t.call('POST', `/v1/secrets/${secretA}/rotate`, {
      token: tokA.token,
      body: { value },
      headers,
    });
    expect(a.status).toBe(202);
    // org B replays A's key on A's secret: absent to B
    const replay = await t.call('POST', `/v1/secrets/${secretA}/rotate`, {
      token: tokB.token,
      body: { value },
      headers,
    });
    expect(replay.status).toBe(404);
    expect(replay.text).not.toContain((a.json as { id: string }).id);
    // and the same key on its own secret (same value) is a rotation of its own
    const b = await t.call('POST', `/v1/secrets/${secretB}/rotate`, {
      token: tokB.token,
      body: { value },
      headers,
    });
    expect(b.status).toBe(202);
    expect((b.json as { id: string }).id).not.toBe((a.json as { id: string }).id);
    expect((b.json as { secretId: string }).secretId).toBe(secretB);
    expect(await secretState(secretA)).toMatchObject({ versions: 2 });
  });

  it("an org token sees only its own organisation's overdue keys", async () => {
    const orgA = await t.org();
    const orgB = await t.org();
    const secretA = await keyOf(orgA);
    await admin.query(`update public.secrets set max_age_seconds = 3600 where id = $1`, [secretA]);
    await admin.query(
      `update public.secret_versions set created_at = now() - interval '2 hours' where secret_id = $1`,
      [secretA],
    );
    const tokA = await t.token(orgA, ['deployments:read']);
    const tokB = await t.token(orgB, ['deployments:read']);
    const seen = async (token: string): Promise<string[]> =>
      ((await t.call('GET', '/v1/secrets/overdue', { token })).json as { secretId: string }[]).map(
        (k) => k.secretId,
      );
    expect(await seen(tokA.token)).toContain(secretA);
    expect(await seen(tokB.token)).not.toContain(secretA);
  });

  it('two rotations of one secret requested at once: one starts, the other is refused, one version added', async () => {
    const org = await t.org();
    const tok = await t.token(org, ['secrets:write']);
    const secretId = await keyOf(org);
    const [x, y] = await Promise.all(
      ['r7-race-1', 'r7-race-2'].map((k) =>
        t.call('POST', `/v1/secrets/${secretId}/rotate`, {
          token: tok.token,
          body: { value: canary() },
          headers: { 'idempotency-key': k },
        }),
      ),
    );
    const statuses = [x?.status, y?.status].sort();
    // the second either finds the first running (409) or, if the first already completed (no
    // deployments: it completes at once), starts after it (202): never two at once
    if (statuses[1] === 409) expect(await secretState(secretId)).toMatchObject({ versions: 2 });
    else expect(await secretState(secretId)).toMatchObject({ versions: 3 });
    expect(statuses[0]).toBe(202);
    const running = await admin.query(
      `select count(*)::int as n from public.secret_rotations where secret_id = $1 and state = 'running'`,
      [secretId],
    );
    expect(running.rows[0]?.n).toBeLessThanOrEqual(1);
  });
});
