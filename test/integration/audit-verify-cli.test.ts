import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool } from 'pg';
import { runCli } from '../../orchestrator/cli/cortexctl';
import { makePgRpc } from '../../orchestrator/db/pg-rpc';
import { Secret } from '../../orchestrator/secret';
import { makeMemoryFingerprintKey } from '../../orchestrator/secrets/fingerprint';
import { makeSecretsService } from '../../orchestrator/secrets/secrets-service';
import { canary } from '../support/canary';
import { makeOrgWithDeployment, testDatabaseUrl } from '../support/db';

/** The fingerprint key (kept outside the database); in memory for the test. */
const fingerprintKey = makeMemoryFingerprintKey();

/**
 * `cortexctl audit-verify` end to end. Tampering breaks a chain for good, so this runs in a scratch
 * database built with the real set-up script and dropped afterwards.
 */
const name = `cortex_cli_${randomBytes(4).toString('hex')}`;
const base = new URL(testDatabaseUrl());
const scratchUrl = (() => {
  const u = new URL(base);
  u.pathname = `/${name}`;
  return u.toString();
})();
let su: Pool;
// its own state directory: no signed checkpoint of another database is compared with this one
const stateDir = mkdtempSync(join(tmpdir(), 'cortex-cli-'));

beforeAll(async () => {
  su = new Pool({ connectionString: base.toString(), max: 1 });
  await su.query(`create database ${name}`);
  const plain = new URL(scratchUrl);
  plain.search = '';
  execFileSync('bash', [join(__dirname, '../../scripts/db-setup.sh'), plain.toString()], { stdio: 'pipe' });
}, 120_000);

afterAll(async () => {
  await su.query(`drop database if exists ${name} with (force)`);
  await su.end();
  rmSync(stateDir, { recursive: true, force: true });
});

const cli = async (args: string[]): Promise<{ code: number; out: string }> => {
  let out = '';
  const code = await runCli(args, {
    env: { DATABASE_URL: scratchUrl, LOG_LEVEL: 'silent', CORTEX_STATE_DIR: stateDir },
    out: (t) => (out += t),
  });
  return { code, out };
};

it('reports an intact chain, then names the row an attacker changed', async () => {
  const db = makePgRpc({ connectionString: scratchUrl, max: 2 });
  const secrets = makeSecretsService({ rpc: db.rpc, fingerprintKey });
  const { orgId, deploymentId } = await makeOrgWithDeployment(db.rpc);
  const meta = await secrets.create({ orgId, name: 'k', provider: 'other', value: new Secret(canary()) });
  await secrets.bind(deploymentId, 'K', meta.secretId);
  await secrets.readForDeploymentOrThrow(deploymentId);
  await db.close();

  const good = await cli(['audit-verify', '--org', orgId]);
  expect(good).toEqual({ code: 0, out: expect.stringContaining('audit log OK: 3 rows checked') as string });

  const admin = new Pool({ connectionString: scratchUrl, max: 1 });
  const c = await admin.connect();
  const { rows } = await c.query<{ id: string }>(
    `select id::text from public.secret_access_log where org_id = $1 and operation = 'bind'`,
    [orgId],
  );
  await c.query('begin');
  await c.query('set local session_replication_role = replica'); // a superuser bypassing the trigger
  await c.query(`update public.secret_access_log set actor = 'someone else' where id = $1`, [rows[0]?.id]);
  await c.query('commit');
  c.release();
  await admin.end();

  const bad = await cli(['audit-verify']);
  expect(bad.code).toBe(1);
  expect(bad.out).toContain(`first problem at row ${rows[0]?.id}: row changed`);
  expect((await cli(['audit-verify', '--org'])).code).toBe(1);
}, 60_000);
