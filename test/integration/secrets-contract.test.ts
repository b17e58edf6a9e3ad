import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto';
import type { Pool } from 'pg';
import { utils } from 'ssh2';
import { makePgRpc } from '../../orchestrator/db/pg-rpc';
import type { Rpc } from '../../orchestrator/db/rpc';
import { makeSupabaseRpc } from '../../orchestrator/db/supabase-rpc';
import { Secret } from '../../orchestrator/secret';
import { makeMemoryFingerprintKey } from '../../orchestrator/secrets/fingerprint';
import { makeSecretsService, PLATFORM_AUDIT_CHAIN } from '../../orchestrator/secrets/secrets-service';
import { canary } from '../support/canary';
import { adminPool, auditRows, makeOrgWithDeployment, testDatabaseUrl } from '../support/db';
import { signJwt, startPostgrestStandIn, type PostgrestStandIn } from '../support/postgrest-rpc';
import { rejection as caught } from '../support/rejection';

/**
 * One contract, two adapters: the same secrets service runs over a direct Postgres connection and
 * over supabase-js `.rpc()` against the PostgREST stand-in, which executes the same SQL functions
 * as the role its key maps to.
 */
const jwtSecret = randomUUID() + randomUUID();
let standIn: PostgrestStandIn;
let pg: ReturnType<typeof makePgRpc>;
let admin: Pool;

beforeAll(async () => {
  pg = makePgRpc({ connectionString: testDatabaseUrl(), max: 4 });
  standIn = await startPostgrestStandIn({ databaseUrl: testDatabaseUrl(), jwtSecret });
  admin = adminPool();
});
afterAll(async () => {
  await standIn.close();
  await pg.close();
  await admin.end();
});

const supabaseWith = (role: string): Rpc =>
  makeSupabaseRpc({ url: standIn.url, serviceRoleKey: signJwt({ role, iss: 'supabase-test' }, jwtSecret) })
    .rpc;

const adapters: [string, () => Rpc][] = [
  ['postgres', () => pg.rpc],
  ['supabase-js', () => supabaseWith('cortex_orchestrator')],
];

/** The keyed fingerprint members see: HMAC-SHA256 under the orchestrator's key, which the database never sees. */
const fingerprintKeyBytes = randomBytes(32);
const fingerprintKey = makeMemoryFingerprintKey(fingerprintKeyBytes);
const fingerprint = (s: string): string => createHmac('sha256', fingerprintKeyBytes).update(s).digest('hex');
/** A well-formed fingerprint for calls that are refused before it matters. */
const anyFingerprint = 'ab'.repeat(32);

/** A real OpenSSH private key: several lines and a final line feed. Platform names are global. */
const sshKey = (): string => utils.generateKeyPairSync('ed25519').private;
const platformName = (): string => `test-ssh-${randomUUID().slice(0, 8)}`;

/** Audit rows of the platform chain, by secret or by reason (a denied name has no secret id). */
const platformAuditRows = async (where: { secretId?: string; reason?: string }) =>
  (
    await admin.query<{
      operation: string;
      outcome: string;
      version: number | null;
      org_id: string | null;
      deployment_id: string | null;
      secret_id: string | null;
      actor: string | null;
      job_id: string | null;
      request_ip: string | null;
      user_agent: string | null;
      reason: string | null;
    }>(
      `select operation, outcome, version, org_id, deployment_id, secret_id, actor, job_id,
              host(request_ip) as request_ip, user_agent, reason
         from public.secret_access_log
        where chain_id = $1 and ($2::uuid is null or secret_id = $2) and ($3::text is null or reason = $3)
        order by id`,
      [PLATFORM_AUDIT_CHAIN, where.secretId ?? null, where.reason ?? null],
    )
  ).rows;

describe.each(adapters)('secrets contract through the %s adapter', (_name, getRpc) => {
  it('creates, binds and reads a secret, auditing each step; metadata never holds the value', async () => {
    const rpc = getRpc();
    const secrets = makeSecretsService({ rpc, fingerprintKey });
    const { orgId, deploymentId } = await makeOrgWithDeployment(rpc);
    const key = canary('anthropic');
    const ctx = {
      actor: 'test:contract',
      jobId: `job-${randomUUID()}`,
      requestIp: '203.0.113.7',
      userAgent: 'jest',
    };

    const meta = await secrets.create(
      { orgId, name: 'Anthropic', provider: 'anthropic', value: new Secret(key) },
      ctx,
    );
    expect(meta.version).toBe(1);
    expect(meta.fingerprint).toBe(fingerprint(key));
    // keyed: not the SHA-256 anyone could compute from a guess
    expect(meta.fingerprint).not.toBe(createHash('sha256').update(key).digest('hex'));
    expect(meta.displayPrefix.endsWith(key.slice(-4))).toBe(true);
    expect(JSON.stringify(meta)).not.toContain(key.slice(8, -4));

    await secrets.bind(deploymentId, 'ANTHROPIC_API_KEY', meta.secretId, ctx);
    const read = await secrets.readForDeployment(deploymentId, ctx);
    expect(read.status).toBe('ok');
    if (read.status !== 'ok') return;
    expect(read.secrets.map((s) => [s.envVar, s.secretId, s.version])).toEqual([
      ['ANTHROPIC_API_KEY', meta.secretId, 1],
    ]);
    expect(read.secrets[0]?.value.reveal()).toBe(key);

    const rows = await auditRows(admin, { secretId: meta.secretId });
    expect(rows.map((r) => `${r.operation}/${r.outcome}`)).toEqual([
      'create/success',
      'bind/success',
      'read/success',
    ]);
    const readRow = rows[2];
    expect(readRow).toMatchObject({
      deployment_id: deploymentId,
      org_id: orgId,
      version: 1,
      actor: ctx.actor,
      job_id: ctx.jobId,
    });
    expect(readRow?.request_ip).toBe('203.0.113.7');
    expect(readRow?.user_agent).toBe('jest');
    expect(JSON.stringify(rows)).not.toContain(key);
  });

  it('denies and audits a read of an unbound secret and of another organisation’s secret, returning no value', async () => {
    const rpc = getRpc();
    const secrets = makeSecretsService({ rpc, fingerprintKey });
    const a = await makeOrgWithDeployment(rpc);
    const b = await makeOrgWithDeployment(rpc);
    const keyA = canary('openai');
    const keyB = canary('openai');
    const unbound = await secrets.create({
      orgId: a.orgId,
      name: 'unbound',
      provider: 'openai',
      value: new Secret(keyA),
    });
    const foreign = await secrets.create({
      orgId: b.orgId,
      name: 'foreign',
      provider: 'openai',
      value: new Secret(keyB),
    });
    await secrets.bind(b.deploymentId, 'OPENAI_API_KEY', foreign.secretId);

    for (const secretId of [unbound.secretId, foreign.secretId]) {
      const r = await secrets.readForDeployment(a.deploymentId, {
        secretIds: [secretId],
        actor: 'test:deny',
      });
      expect(r.status).toBe('denied');
      expect(JSON.stringify(r)).not.toContain(keyA);
      expect(JSON.stringify(r)).not.toContain(keyB);
      // another org's secret is not named in the requester's chain, but in its owner's
      const named = secretId === unbound.secretId ? secretId : null;
      const denied = (await auditRows(admin, { deploymentId: a.deploymentId })).filter(
        (row) => row.secret_id === named && row.operation === 'read',
      );
      expect(denied.map((row) => row.outcome)).toEqual(['denied']);
      expect(denied[0]?.actor).toBe('test:deny');
    }
    const inOwnersChain = (await auditRows(admin, { secretId: foreign.secretId })).filter(
      (row) => row.operation === 'read',
    );
    expect(inOwnersChain.map((row) => [row.org_id, row.deployment_id, row.outcome, row.reason])).toEqual([
      [b.orgId, null, 'denied', 'read refused: asked for by a deployment of another organization'],
    ]);
    await expect(
      secrets.readForDeploymentOrThrow(a.deploymentId, { secretIds: [foreign.secretId] }),
    ).rejects.toMatchObject({
      code: 'secret_denied',
    });
    // Binding another org's secret is refused outright, naming the secret, and binds nothing.
    const bindErr = await caught(secrets.bind(a.deploymentId, 'OPENAI_API_KEY', foreign.secretId));
    expect([bindErr.code, bindErr.field]).toEqual(['invalid_input', 'secret_id']);
    expect(bindErr.message).not.toContain(keyB);
    const afterBind = await secrets.readForDeployment(a.deploymentId, { actor: 'test:deny' });
    expect(JSON.stringify(afterBind)).not.toContain(keyB);
  });

  it('rotates: a new version is read next, the old one can be retired, the current one cannot', async () => {
    const rpc = getRpc();
    const secrets = makeSecretsService({ rpc, fingerprintKey });
    const { orgId, deploymentId } = await makeOrgWithDeployment(rpc);
    const v1 = canary('anthropic');
    const v2 = canary('anthropic');
    const meta = await secrets.create({ orgId, name: 'rot', provider: 'anthropic', value: new Secret(v1) });
    await secrets.bind(deploymentId, 'ANTHROPIC_API_KEY', meta.secretId);
    const next = await secrets.addVersion(meta.secretId, new Secret(v2), { actor: 'test:rotate' });
    expect(next.version).toBe(2);
    expect(next.fingerprint).toBe(fingerprint(v2));
    const read = await secrets.readForDeploymentOrThrow(deploymentId);
    expect(read.map((s) => [s.version, s.value.reveal()])).toEqual([[2, v2]]);
    await secrets.retireVersion(meta.secretId, 1);
    const refused = await caught(secrets.retireVersion(meta.secretId, 2));
    expect([refused.code, refused.field]).toEqual(['invalid_input', 'version']);
    // v2 still reads after the refusal; v1's vault row is gone, v2's is there.
    const again = await secrets.readForDeploymentOrThrow(deploymentId);
    expect(again.map((s) => [s.version, s.value.reveal()])).toEqual([[2, v2]]);
    const vaultRows = await admin.query<{ name: string }>(
      `select name from vault.secrets where name like $1 order by name`,
      [`%:secret:${meta.secretId}:v%`],
    );
    expect(vaultRows.rows.map((r) => r.name.split(':').pop())).toEqual(['v2']);
    const ops = (await auditRows(admin, { secretId: meta.secretId })).map((r) => r.operation);
    expect(ops).toEqual(expect.arrayContaining(['rotate', 'delete']));
  });

  it('rejects bad input at the SQL boundary with the field named and no value echoed', async () => {
    const rpc = getRpc();
    const { orgId, deploymentId } = await makeOrgWithDeployment(rpc);
    const key = canary();
    const calls: [Promise<unknown>, string][] = [
      [
        rpc('secrets__create', {
          p_org_id: orgId,
          p_name: 'x',
          p_provider: 'other',
          p_value: '',
          p_fingerprint: anyFingerprint,
        }),
        'value',
      ],
      // shorter than 20 characters: no real key (the SQL refuses it as well as the service)
      [
        rpc('secrets__create', {
          p_org_id: orgId,
          p_name: 'x',
          p_provider: 'other',
          p_value: key.slice(0, 19),
          p_fingerprint: anyFingerprint,
        }),
        'value',
      ],
      [
        rpc('secrets__create', {
          p_org_id: orgId,
          p_name: 'x',
          p_provider: 'other',
          p_value: `${key}\u0007`,
          p_fingerprint: anyFingerprint,
        }),
        'value',
      ],
      [
        rpc('secrets__create', {
          p_org_id: orgId,
          p_name: 'x',
          p_provider: 'other',
          p_value: key.repeat(200),
          p_fingerprint: anyFingerprint,
        }),
        'value',
      ],
    ];
    const ok = await rpc<{ secret_id: string }>('secrets__create', {
      p_org_id: orgId,
      p_name: 'ok',
      p_provider: 'other',
      p_value: key,
      p_fingerprint: fingerprint(key),
    });
    calls.push([
      rpc('deployment_secrets__bind', {
        p_deployment_id: deploymentId,
        p_env_var: 'not-valid',
        p_secret_id: ok.secret_id,
      }),
      'env_var',
    ]);
    for (const [call, field] of calls) {
      const err = await caught(call);
      expect(err.code).toBe('invalid_input');
      expect(err.field).toBe(field);
      expect(err.message).not.toContain(key);
    }
  });

  it('deletes a deployment’s secrets (audited) and then denies reads', async () => {
    const rpc = getRpc();
    const secrets = makeSecretsService({ rpc, fingerprintKey });
    const { orgId, deploymentId } = await makeOrgWithDeployment(rpc);
    const meta = await secrets.create({
      orgId,
      deploymentId,
      name: 'scoped',
      provider: 'other',
      value: new Secret(canary()),
    });
    await secrets.bind(deploymentId, 'AGENT_KEY', meta.secretId);
    expect(await secrets.deleteForDeployment(deploymentId, { actor: 'test:teardown' })).toBe(1);
    expect(await secrets.deleteForDeployment(deploymentId)).toBe(0);
    expect((await secrets.readForDeployment(deploymentId, { secretIds: [meta.secretId] })).status).toBe(
      'denied',
    );
    const del = (await auditRows(admin, { secretId: meta.secretId })).filter((r) => r.operation === 'delete');
    expect(del).toHaveLength(1);
    expect(del[0]).toMatchObject({ outcome: 'success', actor: 'test:teardown' });
    const gone = await admin.query(`select count(*)::int as n from vault.secrets where name like $1`, [
      `%${meta.secretId}%`,
    ]);
    expect(gone.rows[0]).toEqual({ n: 0 });
  });

  it('creates, reads and rotates a multi-line platform secret, auditing each step in the platform chain', async () => {
    const secrets = makeSecretsService({ rpc: getRpc(), fingerprintKey });
    const name = platformName();
    const key = sshKey();
    expect(key.split('\n').length).toBeGreaterThan(3);
    const ctx = {
      actor: 'test:platform',
      jobId: `job-${randomUUID()}`,
      requestIp: '203.0.113.9',
      userAgent: 'jest',
    };

    const meta = await secrets.createPlatformSecret(name, new Secret(key), ctx);
    expect(meta).toMatchObject({ name, version: 1, fingerprint: fingerprint(key) });
    expect(meta.displayPrefix).not.toContain('\n');
    expect(JSON.stringify(meta)).not.toContain(key.split('\n')[1]);
    // byte for byte: line feeds, the final one included
    expect((await secrets.readPlatformSecret(name, ctx)).reveal()).toBe(key);

    const key2 = sshKey();
    const next = await secrets.rotatePlatformSecret(name, new Secret(key2), { actor: 'test:rotate' });
    expect(next).toMatchObject({ secretId: meta.secretId, name, version: 2, fingerprint: fingerprint(key2) });
    expect((await secrets.readPlatformSecret(name)).reveal()).toBe(key2);
    const vault = await admin.query(`select name from vault.secrets where name like $1 order by name`, [
      `platform:${name}:%`,
    ]);
    expect(vault.rows).toEqual([{ name: `platform:${name}:v2` }]);

    const rows = await platformAuditRows({ secretId: meta.secretId });
    expect(rows.map((r) => `${r.operation}/${r.outcome}/v${r.version}`)).toEqual([
      'create/success/v1',
      'read/success/v1',
      'rotate/success/v2',
      'delete/success/v1',
      'read/success/v2',
    ]);
    expect(rows[1]).toMatchObject({
      org_id: null,
      deployment_id: null,
      actor: ctx.actor,
      job_id: ctx.jobId,
      request_ip: '203.0.113.9',
      user_agent: 'jest',
    });
    expect(rows[2]?.actor).toBe('test:rotate');
    for (const k of [key, key2])
      for (const line of k.split('\n').slice(1, -2)) expect(JSON.stringify(rows)).not.toContain(line);
    expect(await secrets.verifyAuditLog(PLATFORM_AUDIT_CHAIN)).toMatchObject({ ok: true, problem: null });
  });

  it('denies and audits a read of an unknown platform secret, returning no value', async () => {
    const secrets = makeSecretsService({ rpc: getRpc(), fingerprintKey });
    const name = platformName();
    const err = await caught(secrets.readPlatformSecret(name, { actor: 'test:deny' }));
    expect(err.code).toBe('secret_denied');
    expect(err.message).toBe(`platform secret ${name} not found`);
    const rows = await platformAuditRows({ reason: `platform secret ${name} not found` });
    expect(rows).toEqual([
      expect.objectContaining({
        operation: 'read',
        outcome: 'denied',
        secret_id: null,
        org_id: null,
        actor: 'test:deny',
      }),
    ]);
    expect((await caught(secrets.rotatePlatformSecret(name, new Secret(sshKey())))).code).toBe('not_found');
  });

  it('takes a platform value of up to 16 KiB over many lines, and nothing longer', async () => {
    const secrets = makeSecretsService({ rpc: getRpc(), fingerprintKey });
    const name = platformName();
    const big = `${canary()}\n`.repeat(16_384 / (canary().length + 1)).padEnd(16_384, 'x');
    expect(big).toHaveLength(16_384);
    await secrets.createPlatformSecret(name, new Secret(big));
    expect((await secrets.readPlatformSecret(name)).reveal()).toBe(big);
    const err = await caught(secrets.rotatePlatformSecret(name, new Secret(`${big}y`)));
    expect([err.code, err.field]).toEqual(['invalid_input', 'value']);
    expect(err.message).toBe('value: must be at most 16384 characters');
  });

  it('rejects bad platform input, in the service and at the SQL boundary, naming the field and echoing no value', async () => {
    const rpc = getRpc();
    const secrets = makeSecretsService({ rpc, fingerprintKey });
    const name = platformName();
    const key = canary();
    const calls: [Promise<unknown>, string][] = [];
    for (const bad of [`${key}\r\n`, `${key}\t`, `${key}\u0007`, `${key}\n`.repeat(1000), ' \n ', '']) {
      calls.push([secrets.createPlatformSecret(name, new Secret(bad)), 'value']);
      calls.push([
        rpc('platform_secrets__create', { p_name: name, p_value: bad, p_fingerprint: anyFingerprint }),
        'value',
      ]);
    }
    for (const bad of ['Bad-Name', 'has space', 'colon:name', '', 'x'.repeat(64)]) {
      calls.push([secrets.readPlatformSecret(bad), 'name']);
      calls.push([rpc('platform_secrets__read', { p_name: bad }), 'name']);
      calls.push([
        rpc('platform_secrets__create', { p_name: bad, p_value: key, p_fingerprint: fingerprint(key) }),
        'name',
      ]);
    }
    for (const [call, field] of calls) {
      const err = await caught(call);
      expect([err.code, err.field]).toEqual(['invalid_input', field]);
      expect(err.message).not.toContain(key);
    }
    // none of the refused creates left a secret behind: the name is still unknown
    expect(await caught(secrets.readPlatformSecret(name))).toMatchObject({ code: 'secret_denied' });
    expect(await platformAuditRows({ reason: `platform secret ${name} not found` })).toHaveLength(1);
  });

  it('verifies the audit chain', async () => {
    const secrets = makeSecretsService({ rpc: getRpc(), fingerprintKey });
    const { orgId } = await makeOrgWithDeployment(getRpc());
    await secrets.create({ orgId, name: 'chain', provider: 'other', value: new Secret(canary()) });
    const v = await secrets.verifyAuditLog(orgId);
    expect(v).toEqual({ ok: true, rowsChecked: 1, firstBadId: null, problem: null });
  });
});

describe('the supabase-js adapter under any role but cortex_orchestrator', () => {
  it.each(['anon', 'authenticated', 'service_role'])(
    'a %s key cannot read secrets or create them',
    async (role) => {
      const secrets = makeSecretsService({ rpc: supabaseWith(role), fingerprintKey });
      const { orgId, deploymentId } = await makeOrgWithDeployment(pg.rpc);
      const err = await caught(secrets.readForDeployment(deploymentId));
      expect(err.message).toMatch(/permission denied/);
      const name = `refused-${role}`;
      const created = await caught(
        secrets.create({ orgId, name, provider: 'other', value: new Secret(canary('other')) }),
      );
      expect(created.message).toMatch(/permission denied/);
      // and nothing was created under that name
      const rows = await admin.query('select 1 from public.secrets where org_id = $1 and name = $2', [
        orgId,
        name,
      ]);
      expect(rows.rowCount).toBe(0);
    },
  );

  it.each(['anon', 'authenticated', 'service_role'])(
    'a %s key cannot read platform secrets',
    async (role) => {
      const secrets = makeSecretsService({ rpc: supabaseWith(role), fingerprintKey });
      const name = platformName();
      await makeSecretsService({ rpc: pg.rpc, fingerprintKey }).createPlatformSecret(
        name,
        new Secret(sshKey()),
      );
      const err = await caught(secrets.readPlatformSecret(name));
      expect(err.message).toMatch(/permission denied/);
    },
  );

  it('a key signed with another secret is refused before any SQL runs', async () => {
    const rpc = makeSupabaseRpc({
      url: standIn.url,
      serviceRoleKey: signJwt({ role: 'service_role' }, 'not-the-secret-'.repeat(3)),
    }).rpc;
    const err = await caught(rpc('organizations__create', { p_name: 'nope' }));
    expect(err.message).toMatch(/PGRST301/);
  });
});

describe('the postgres adapter’s role', () => {
  it('acts as cortex_orchestrator by default, and as exactly the role it is given', async () => {
    // service_role can read the vault directly on Supabase: it is no longer given the contract
    for (const role of ['anon', 'service_role']) {
      const other = makePgRpc({ connectionString: testDatabaseUrl(), max: 1, role });
      try {
        expect((await caught(other.rpc('organizations__create', { p_name: 'nope' }))).message).toMatch(
          /permission denied/,
        );
      } finally {
        await other.close();
      }
    }
    const own = makePgRpc({ connectionString: testDatabaseUrl(), max: 1 });
    try {
      const { id } = await own.rpc<{ id: string }>('organizations__create', {
        p_name: `role-${randomUUID().slice(0, 8)}`,
      });
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
    } finally {
      await own.close();
    }
  });
});
