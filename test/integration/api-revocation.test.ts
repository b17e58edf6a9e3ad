import { randomUUID } from 'node:crypto';
import { runCli } from '../../orchestrator/cli/cortexctl';
import {
  makeRotationFromPipeline,
  type RotationWiring,
} from '../../orchestrator/rotation/rotation-from-config';
import { Secret } from '../../orchestrator/secret';
import type { Workers } from '../../orchestrator/queues/workers';
import { startTestApi, type TestApi } from '../support/api';
import { canary } from '../support/canary';
import { testDatabaseUrl } from '../support/db';

/**
 * GET /v1/revocations/:id over a real listening API (issue 11): a revoke's state can be seen
 * afterwards — open or done, its runs, what the last one revoked and what still holds the key —
 * with the rules of GET /v1/rotations/:id (scopes; another organisation's is 404, the same answer
 * as an id nobody opened), and never a value (a canary key, looked for in every answer and log line).
 */
jest.setTimeout(120_000);

let t: TestApi;
let workers: Workers;
let rot: RotationWiring;

beforeAll(async () => {
  t = await startTestApi();
  rot = makeRotationFromPipeline(t.pipeline);
  workers = t.pipeline.makeWorkerSet(rot.maintenanceTasks, rot.processors);
  workers.start(['revoke']);
});
afterAll(async () => {
  await t?.close();
});

const keyOf = async (orgId: string, value: string): Promise<string> =>
  (
    await t.pipeline.secrets.create({
      orgId,
      name: `revoc-${Math.random().toString(36).slice(2, 8)}`,
      provider: 'anthropic',
      value: new Secret(value),
    })
  ).secretId;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface RevocationView {
  id: string;
  secretId: string;
  deploymentId: string | null;
  state: 'open' | 'done';
  attempts: number;
  result: {
    revoked: string[];
    unhealthy: { deploymentId: string; reason: string }[];
    failed: { deploymentId: string; reason: string }[];
    vaultDeleted: boolean;
  } | null;
  createdAt: string;
  finishedAt: string | null;
}

describe('GET /v1/revocations/:id', () => {
  it('follows a whole-secret revoke to done: its runs, the vault deleted, its end time; never the value', async () => {
    const org = await t.org();
    const tok = await t.token(org, ['secrets:write']);
    const value = canary();
    const secretId = await keyOf(org, value);
    const r = await t.call('POST', `/v1/secrets/${secretId}/revoke`, { token: tok.token, body: {} });
    expect(r.status).toBe(202);
    const { revocationId } = r.json as { revocationId: string };
    const answers = [r.text];
    let s: RevocationView | undefined;
    for (let i = 0; i < 150 && s?.state !== 'done'; i++) {
      const g = await t.call('GET', `/v1/revocations/${revocationId}`, { token: tok.token });
      expect(g.status).toBe(200);
      answers.push(g.text);
      s = g.json as RevocationView;
      if (s.state !== 'done') await sleep(200);
    }
    expect(s).toEqual({
      id: revocationId,
      secretId,
      deploymentId: null,
      state: 'done',
      attempts: 1,
      result: {
        revoked: [],
        unhealthy: [],
        failed: [],
        revokedCount: 0,
        unhealthyCount: 0,
        failedCount: 0,
        vaultDeleted: true,
      },
      createdAt: expect.any(String),
      finishedAt: expect.any(String),
    });
    expect(Date.parse(s!.finishedAt!)).toBeGreaterThanOrEqual(Date.parse(s!.createdAt));
    // the read scope is enough, as for rotations; an ops token sees any organisation's; the typed
    // client (the onboarding app's) reads the same answer
    const reader = await t.token(org, ['deployments:read']);
    const ops = await t.token(null, ['deployments:read']);
    for (const who of [reader, ops]) {
      const g = await t.call('GET', `/v1/revocations/${revocationId}`, { token: who.token });
      expect([g.status, (g.json as RevocationView).state]).toEqual([200, 'done']);
      answers.push(g.text);
    }
    const typed = await t.client(reader.token).GET('/v1/revocations/{id}', {
      params: { path: { id: revocationId } },
    });
    expect(typed.data?.result?.vaultDeleted).toBe(true);
    expect(typed.data?.deploymentId).toBeNull();
    for (const a of answers) expect(a).not.toContain(value);
    expect(t.logs.some((l) => l.includes(value))).toBe(false);
  });

  it("another organisation's revocation is 404 like an unknown id; a malformed id is 400 naming the field; scopes as for rotations", async () => {
    const orgA = await t.org();
    const orgB = await t.org();
    const tokA = await t.token(orgA, ['secrets:write', 'deployments:read']);
    const tokB = await t.token(orgB, ['secrets:write', 'deployments:read']);
    const value = canary();
    const secretA = await keyOf(orgA, value);
    const r = await t.call('POST', `/v1/secrets/${secretA}/revoke`, { token: tokA.token, body: {} });
    expect(r.status).toBe(202);
    const { revocationId } = r.json as { revocationId: string };
    expect((await t.call('GET', `/v1/revocations/${revocationId}`, { token: tokA.token })).status).toBe(200);
    const other = await t.call('GET', `/v1/revocations/${revocationId}`, { token: tokB.token });
    const unknown = await t.call('GET', `/v1/revocations/${randomUUID()}`, { token: tokB.token });
    expect([other.status, unknown.status]).toEqual([404, 404]);
    // the same problem, but for the id: nothing tells B that A's revocation exists
    const shape = (x: unknown) => {
      const { detail: _d, instance: _i, ...rest } = x as Record<string, unknown>;
      return rest;
    };
    expect(shape(other.json)).toEqual(shape(unknown.json));
    expect(other.text).not.toContain(secretA);
    const bad = await t.call('GET', '/v1/revocations/not-a-uuid', { token: tokA.token });
    expect(bad.status).toBe(400);
    expect(bad.json).toMatchObject({ status: 400, field: 'path.id' });
    expect((await t.call('GET', `/v1/revocations/${revocationId}`)).status).toBe(401);
    const noScope = await t.token(orgA, ['audit:read']);
    expect((await t.call('GET', `/v1/revocations/${revocationId}`, { token: noScope.token })).status).toBe(
      403,
    );
    for (const a of [other, unknown, bad]) expect(a.text).not.toContain(value);
  });

  it('a revocation left open shows open, its runs, and what still holds the key as reason codes only', async () => {
    const org = await t.org();
    const tok = await t.token(org, ['deployments:read']);
    const value = canary();
    const secretId = await keyOf(org, value);
    // opened without a job (as if its job had not run yet), then one run that a provision held
    const { revocationId } = await rot.rotations.requestRevoke(
      { secretId },
      { actor: 'api-revocation-test' },
    );
    const before = await t.call('GET', `/v1/revocations/${revocationId}`, { token: tok.token });
    expect(before.json).toMatchObject({ state: 'open', attempts: 0, result: null, finishedAt: null });
    const held = randomUUID();
    const sick = randomUUID();
    await rot.rotations.finishRevocation(revocationId, false, {
      revoked: [sick],
      unhealthy: [
        { deploymentId: sick, reason: 'the agent is not healthy without the secret: port 18123 closed' },
      ],
      failed: [
        {
          deploymentId: held,
          reason: `stack_locked: deployment ${held} is provisioning past its secrets step; revoked once ready`,
        },
      ],
      revoked_count: 1,
      unhealthy_count: 1,
      failed_count: 23,
      vault_deleted: false,
    });
    const after = await t.call('GET', `/v1/revocations/${revocationId}`, { token: tok.token });
    expect(after.json).toEqual({
      id: revocationId,
      secretId,
      deploymentId: null,
      state: 'open',
      attempts: 1,
      result: {
        revoked: [sick],
        unhealthy: [{ deploymentId: sick, reason: 'unhealthy' }],
        failed: [{ deploymentId: held, reason: 'stack_locked' }],
        revokedCount: 1,
        unhealthyCount: 1,
        failedCount: 23,
        vaultDeleted: false,
      },
      createdAt: expect.any(String),
      finishedAt: null,
    });
    // the detail (ports, step names) stays in the worker's log
    expect(after.text).not.toContain('18123');
    expect(after.text).not.toContain('provisioning past');
    for (const a of [before, after]) expect(a.text).not.toContain(value);
    // tidy: a whole-secret revocation left open blocks the key; end it (done only once the secret
    // is revoked: 20261204130000_revocation_finish_checked.sql)
    await t.pipeline.secrets.revoke(secretId, revocationId, { actor: 'api-revocation-test' });
    await rot.rotations.finishRevocation(revocationId, true, {});
  });
});

describe('cortexctl secrets revoke / revocation', () => {
  const cli = async (args: string[]): Promise<{ code: number; out: string }> => {
    let out = '';
    const code = await runCli(args, {
      // the test pipeline's queues, so its worker runs the job the CLI queues
      env: {
        ...process.env,
        DATABASE_URL: testDatabaseUrl(),
        QUEUE_PREFIX: t.pipeline.config.QUEUE_PREFIX,
        LOG_LEVEL: 'silent',
      },
      out: (x) => (out += x),
    });
    return { code, out };
  };

  it('revoke waits for its job and ends with the revocation done; revocation shows it (text and --json); never the value', async () => {
    const org = await t.org();
    const value = canary();
    const secretId = await keyOf(org, value);
    const r = await cli(['secrets', 'revoke', secretId]);
    const id = /^revocation ([0-9a-f-]{36}), job /m.exec(r.out)?.[1];
    expect(id).toBeDefined();
    expect(r.out).toContain('every version deleted from the vault');
    expect(r.out).toContain(`revocation ${id} done\n`);
    expect(r.code).toBe(0);
    const shown = await cli(['secrets', 'revocation', id!]);
    expect(shown.code).toBe(0);
    expect(shown.out).toContain(
      `revocation ${id}  done  secret ${secretId}  (every deployment and the vault)  1 run(s)`,
    );
    const j = await cli(['secrets', 'revocation', id!, '--json']);
    expect(JSON.parse(j.out)).toMatchObject({ id, secretId, state: 'done', result: { vaultDeleted: true } });
    for (const o of [r, shown, j]) expect(o.out).not.toContain(value);
  });

  it('one left open: revocation says OPEN, what holds the key and how to follow it, and exits 1', async () => {
    const org = await t.org();
    const secretId = await keyOf(org, canary());
    const { revocationId } = await rot.rotations.requestRevoke(
      { secretId },
      { actor: 'api-revocation-test' },
    );
    const held = randomUUID();
    await rot.rotations.finishRevocation(revocationId, false, {
      revoked: [],
      failed: [
        {
          deploymentId: held,
          reason: `stack_locked: deployment ${held} is provisioning past its secrets step`,
        },
      ],
      vault_deleted: false,
    });
    const shown = await cli(['secrets', 'revocation', revocationId]);
    expect(shown.code).toBe(1);
    expect(shown.out).toContain(`${held}  STILL HOLDS THE KEY: stack_locked`);
    expect(shown.out).toContain(`Follow it: cortexctl secrets revocation ${revocationId}`);
    // another id nobody opened: not found
    expect((await cli(['secrets', 'revocation', randomUUID()])).code).not.toBe(0);
    // a whole-secret revocation is done only once the secret is revoked
    await expect(rot.rotations.finishRevocation(revocationId, true, {})).rejects.toMatchObject({
      code: 'invalid_input',
    });
    await t.pipeline.secrets.revoke(secretId, revocationId, { actor: 'api-revocation-test' });
    await rot.rotations.finishRevocation(revocationId, true, {});
  });
});
