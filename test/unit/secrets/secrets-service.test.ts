import { randomUUID } from 'node:crypto';
import type { Rpc } from '../../../orchestrator/db/rpc';
import type { OrchestratorError } from '../../../orchestrator/errors';
import { Secret } from '../../../orchestrator/secret';
import { hmacFingerprint, makeMemoryFingerprintKey } from '../../../orchestrator/secrets/fingerprint';
import { makeSecretsService, PLATFORM_AUDIT_CHAIN } from '../../../orchestrator/secrets/secrets-service';
import { canary } from '../../support/canary';
import { rejection } from '../../support/rejection';

/**
 * The service over a recording rpc: the exact function and arguments each method sends, and what
 * it makes of each answer (the SQL side is the integration test secrets-contract). Written for
 * mutation testing: every mapping, branch and message is checked exactly.
 */
const KEY = Buffer.alloc(32, 9);
const meta = { secret_id: randomUUID(), version: 3, display_prefix: 'sk-…abcd', fingerprint: 'f'.repeat(64) };

const fakeRpc = (answers: Record<string, unknown> = {}) => {
  const calls: [string, Record<string, unknown>][] = [];
  const rpc = (async (fn: string, args: object) => {
    calls.push([fn, { ...(args as Record<string, unknown>) }]);
    const a = answers[fn];
    return typeof a === 'function' ? (a as () => unknown)() : a;
  }) as Rpc;
  return { rpc, calls };
};
const service = (answers: Record<string, unknown> = {}) => {
  const f = fakeRpc(answers);
  return { ...f, s: makeSecretsService({ rpc: f.rpc, fingerprintKey: makeMemoryFingerprintKey(KEY) }) };
};
const noAudit = { p_actor: undefined, p_job_id: undefined, p_request_ip: undefined, p_user_agent: undefined };
const ctx = { actor: 'test:a', jobId: 'j1', requestIp: '203.0.113.5', userAgent: 'ua' };
const withCtx = { p_actor: 'test:a', p_job_id: 'j1', p_request_ip: '203.0.113.5', p_user_agent: 'ua' };
const ORG = randomUUID();
const DEP = randomUUID();
const SID = randomUUID();
const REV = randomUUID();

describe('secrets service: what it sends', () => {
  it('create: parsed input, the checked value and its keyed fingerprint, the audit context', async () => {
    const { s, calls } = service({ secrets__create: meta });
    const value = canary();
    const out = await s.create(
      { orgId: ORG, name: '  My key ', provider: 'openai', value: new Secret(value), deploymentId: DEP },
      ctx,
    );
    expect(out).toEqual({
      secretId: meta.secret_id,
      version: 3,
      displayPrefix: 'sk-…abcd',
      fingerprint: 'f'.repeat(64),
    });
    expect(calls).toEqual([
      [
        'secrets__create',
        {
          p_org_id: ORG,
          p_name: 'My key',
          p_provider: 'openai',
          p_value: value,
          p_fingerprint: hmacFingerprint(KEY, value),
          p_deployment_id: DEP,
          ...withCtx,
        },
      ],
    ]);
    expect(await s.fingerprint(new Secret(value))).toBe(hmacFingerprint(KEY, value));
  });

  it('create refuses bad input before any call, naming the field', async () => {
    const { s, calls } = service();
    const v = new Secret(canary());
    expect((await rejection(s.create({ orgId: 'x', name: 'n', provider: 'openai', value: v }))).field).toBe(
      'orgId',
    );
    expect((await rejection(s.create({ orgId: ORG, name: '', provider: 'openai', value: v }))).field).toBe(
      'name',
    );
    expect((await rejection(s.create({ orgId: ORG, name: 'n', provider: 'x', value: v }))).field).toBe(
      'provider',
    );
    expect(
      (await rejection(s.create({ orgId: ORG, name: 'n', provider: 'openai', value: v, deploymentId: 'x' })))
        .field,
    ).toBe('deploymentId');
    expect(
      (await rejection(s.create({ orgId: ORG, name: 'n', provider: 'openai', value: new Secret('short') })))
        .field,
    ).toBe('value');
    expect(calls).toEqual([]);
  });

  it('addVersion, retireVersion, revoke, bind, unbind, deleteForDeployment', async () => {
    const { s, calls } = service({
      secrets__add_version: meta,
      secrets__delete_for_deployment: { deleted: 2 },
    });
    const value = canary();
    expect((await s.addVersion(SID, new Secret(value), ctx)).version).toBe(3);
    await s.retireVersion(SID, 1);
    await s.revoke(SID, REV, ctx);
    await s.bind(DEP, 'OPENAI_API_KEY', SID);
    await s.unbind(DEP, 'OPENAI_API_KEY', ctx);
    expect(await s.deleteForDeployment(DEP)).toBe(2);
    expect(calls).toEqual([
      [
        'secrets__add_version',
        { p_secret_id: SID, p_value: value, p_fingerprint: hmacFingerprint(KEY, value), ...withCtx },
      ],
      ['secret_versions__retire', { p_secret_id: SID, p_version: 1, ...noAudit }],
      ['secrets__revoke', { p_secret_id: SID, p_revocation_id: REV, ...withCtx }],
      [
        'deployment_secrets__bind',
        { p_deployment_id: DEP, p_env_var: 'OPENAI_API_KEY', p_secret_id: SID, ...noAudit },
      ],
      ['deployment_secrets__unbind', { p_deployment_id: DEP, p_env_var: 'OPENAI_API_KEY', ...withCtx }],
      ['secrets__delete_for_deployment', { p_deployment_id: DEP, ...noAudit }],
    ]);
  });

  it('names each bad argument exactly, and sends nothing', async () => {
    const { s, calls } = service();
    const fields = async (p: Promise<unknown>) => (await rejection(p)).field;
    expect(await fields(s.addVersion('x', new Secret(canary())))).toBe('secret_id');
    expect(await fields(s.addVersion(SID, new Secret('')))).toBe('value');
    expect(await fields(s.retireVersion('x', 1))).toBe('secret_id');
    for (const v of [0, 1.5, -1]) expect(await fields(s.retireVersion(SID, v))).toBe('version');
    expect(await fields(s.revoke('x', REV))).toBe('secret_id');
    expect(await fields(s.revoke(SID, 'x'))).toBe('revocation_id');
    expect(await fields(s.bind('x', 'A', SID))).toBe('deployment_id');
    expect(await fields(s.bind(DEP, 'PATH', SID))).toBe('env_var');
    expect(await fields(s.bind(DEP, 'A', 'x'))).toBe('secret_id');
    expect(await fields(s.unbind('x', 'A'))).toBe('deployment_id');
    expect(await fields(s.unbind(DEP, 'a'))).toBe('env_var');
    expect(await fields(s.deleteForDeployment('x'))).toBe('deployment_id');
    expect(await fields(s.readForDeployment('x'))).toBe('deployment_id');
    expect(await fields(s.readForDeployment(DEP, { secretIds: ['x'] }))).toBe('secret_ids.0');
    expect(await fields(s.readForDeployment(DEP, { requestIp: 'x' }))).toBe('audit.requestIp');
    expect(await fields(s.verifyAuditLog('x'))).toBe('org_id');
    expect(await fields(s.readPlatformSecret('Bad'))).toBe('name');
    expect(await fields(s.createPlatformSecret('Bad', new Secret(canary())))).toBe('name');
    expect(await fields(s.rotatePlatformSecret('ok', new Secret('\r'.repeat(30))))).toBe('value');
    expect(calls).toEqual([]);
  });
});

describe('secrets service: reads', () => {
  const okRead = {
    status: 'ok',
    secrets: [
      { env_var: 'A', secret_id: SID, version: 2, value: 'value-a' },
      { env_var: 'B', secret_id: ORG, version: 1, value: 'value-b' },
    ],
  };

  it('commits the intent first, then reads naming it; values come back as Secrets', async () => {
    const { s, calls } = service({
      deployment_secrets__intend_read: { intent_id: 'intent-1' },
      deployment_secrets__read: okRead,
    });
    const r = await s.readForDeployment(DEP, { secretIds: [SID], ...ctx });
    const args = { p_deployment_id: DEP, p_secret_ids: [SID], ...withCtx };
    expect(calls).toEqual([
      ['deployment_secrets__intend_read', args],
      ['deployment_secrets__read', { ...args, p_intent_id: 'intent-1' }],
    ]);
    expect(r.status).toBe('ok');
    if (r.status !== 'ok') return;
    expect(r.secrets.map((x) => [x.envVar, x.secretId, x.version, x.value.reveal()])).toEqual([
      ['A', SID, 2, 'value-a'],
      ['B', ORG, 1, 'value-b'],
    ]);
    expect(r.secrets.every((x) => x.value instanceof Secret)).toBe(true);
    expect(JSON.stringify(r)).not.toContain('value-a');
    // no ids: all bound secrets
    const all = service({
      deployment_secrets__intend_read: { intent_id: 'i' },
      deployment_secrets__read: okRead,
    });
    await all.s.readForDeployment(DEP);
    expect(all.calls[0]).toEqual([
      'deployment_secrets__intend_read',
      { p_deployment_id: DEP, p_secret_ids: undefined, ...noAudit },
    ]);
    expect((await all.s.readForDeploymentOrThrow(DEP)).map((x) => x.envVar)).toEqual(['A', 'B']);
  });

  it('a denial and an error are values; OrThrow makes them secret_denied and db_error', async () => {
    for (const status of ['denied', 'error'] as const) {
      const { s } = service({
        deployment_secrets__intend_read: { intent_id: 'i' },
        deployment_secrets__read: { status, reason: 'why' },
      });
      expect(await s.readForDeployment(DEP)).toEqual({ status, reason: 'why' });
      const err = await rejection(s.readForDeploymentOrThrow(DEP));
      expect([err.code, err.message]).toEqual([
        status === 'denied' ? 'secret_denied' : 'db_error',
        `deployment ${DEP}: why`,
      ]);
    }
  });

  it('an answer of another shape is internal, and says which function', async () => {
    const { s } = service({
      deployment_secrets__intend_read: { intent_id: 'i' },
      deployment_secrets__read: { status: 'maybe' },
    });
    const err = await rejection(s.readForDeployment(DEP));
    expect([err.code, err.message]).toEqual([
      'internal',
      'deployment_secrets__read: unexpected result shape',
    ]);
  });
});

describe('secrets service: platform secrets and the audit log', () => {
  it('create and rotate send the name, the value and its fingerprint, and return the name', async () => {
    const { s, calls } = service({ platform_secrets__create: meta, platform_secrets__rotate: meta });
    const value = `${canary()}\n${canary()}\n`;
    expect(await s.createPlatformSecret('ssh-key', new Secret(value), ctx)).toEqual({
      secretId: meta.secret_id,
      version: 3,
      displayPrefix: 'sk-…abcd',
      fingerprint: 'f'.repeat(64),
      name: 'ssh-key',
    });
    await s.rotatePlatformSecret('ssh-key', new Secret(value));
    const sent = { p_name: 'ssh-key', p_value: value, p_fingerprint: hmacFingerprint(KEY, value) };
    expect(calls).toEqual([
      ['platform_secrets__create', { ...sent, ...withCtx }],
      ['platform_secrets__rotate', { ...sent, ...noAudit }],
    ]);
  });

  it('reads a platform secret after committing its intent; each other answer is its own error', async () => {
    const ok = service({
      platform_secrets__intend_read: { intent_id: 'pi' },
      platform_secrets__read: { status: 'ok', value: 'v\n', version: 1 },
    });
    expect((await ok.s.readPlatformSecret('ssh-key', ctx)).reveal()).toBe('v\n');
    expect(ok.calls).toEqual([
      ['platform_secrets__intend_read', { p_name: 'ssh-key', ...withCtx }],
      ['platform_secrets__read', { p_name: 'ssh-key', ...withCtx, p_intent_id: 'pi' }],
    ]);
    const cases: [unknown, string, string][] = [
      [
        { status: 'denied', reason: 'platform secret x not found' },
        'secret_denied',
        'platform secret x not found',
      ],
      [{ status: 'error', reason: 'vault row missing' }, 'db_error', 'vault row missing'],
      [{ status: 'ok', value: 42 }, 'internal', 'platform_secrets__read: unexpected result shape'],
      [{ status: 'other' }, 'internal', 'platform_secrets__read: unexpected result shape'],
    ];
    for (const [answer, code, message] of cases) {
      const { s } = service({
        platform_secrets__intend_read: { intent_id: 'pi' },
        platform_secrets__read: answer,
      });
      const err: OrchestratorError = await rejection(s.readPlatformSecret('ssh-key'));
      expect([err.code, err.message]).toEqual([code, message]);
    }
  });

  it('verifies one chain or all, mapping the answer', async () => {
    const { s, calls } = service({
      secret_access_log__verify: { ok: false, rows_checked: 7, first_bad_id: '12', problem: 'changed' },
    });
    expect(await s.verifyAuditLog(ORG)).toEqual({
      ok: false,
      rowsChecked: 7,
      firstBadId: 12,
      problem: 'changed',
    });
    await s.verifyAuditLog();
    await s.verifyAuditLog(PLATFORM_AUDIT_CHAIN);
    expect(calls).toEqual([
      ['secret_access_log__verify', { p_org_id: ORG }],
      ['secret_access_log__verify', { p_org_id: undefined }],
      ['secret_access_log__verify', { p_org_id: PLATFORM_AUDIT_CHAIN }],
    ]);
    const clean = service({
      secret_access_log__verify: { ok: true, rows_checked: 0, first_bad_id: null, problem: null },
    });
    expect(await clean.s.verifyAuditLog()).toEqual({
      ok: true,
      rowsChecked: 0,
      firstBadId: null,
      problem: null,
    });
  });
});
