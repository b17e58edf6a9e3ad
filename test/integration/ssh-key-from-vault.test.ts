import { randomBytes } from 'node:crypto';
import type { Pool } from 'pg';
import { makePgRpc } from '../../orchestrator/db/pg-rpc';
import { generateHostKeyPair } from '../../orchestrator/remote/host-keys';
import { loadConfig } from '../../orchestrator/config';
import { makeSshKeySourceFromConfig } from '../../orchestrator/remote/ssh-key-from-config';
import { makeSshKeySource } from '../../orchestrator/remote/ssh-key-source';
import { makeMemoryFingerprintKey } from '../../orchestrator/secrets/fingerprint';
import { makeSecretsService, PLATFORM_AUDIT_CHAIN } from '../../orchestrator/secrets/secrets-service';
import { adminPool, testDatabaseUrl } from '../support/db';

/** The fingerprint key (kept outside the database); in memory for the test. */
const fingerprintKey = makeMemoryFingerprintKey();

/**
 * SSH_KEY_SOURCE=vault: the orchestrator's private key is a platform-scoped vault secret, read
 * through the audited platform read; a missing name is a denial, audited too.
 */
let db: ReturnType<typeof makePgRpc>;
let admin: Pool;
beforeAll(() => {
  db = makePgRpc({ connectionString: testDatabaseUrl(), max: 2 });
  admin = adminPool();
});
afterAll(async () => {
  await db.close();
  await admin.end();
});

/**
 * This test's own rows of the platform chain (which every test and worker shares): those naming its
 * secret, and the denial naming its missing name (a denied name has no secret id).
 */
const platformRows = async (secretId: string, deniedName: string) =>
  (
    await admin.query<{ operation: string; outcome: string; actor: string | null }>(
      `select operation, outcome, actor from public.secret_access_log
        where chain_id = $1 and (secret_id = $2 or (secret_id is null and reason = $3)) order by id`,
      [PLATFORM_AUDIT_CHAIN, secretId, `platform secret ${deniedName} not found`],
    )
  ).rows;

it('loads the orchestrator key from the vault, multi-line and intact, and audits the read', async () => {
  const secrets = makeSecretsService({ rpc: db.rpc, fingerprintKey });
  const name = `test-ssh-${randomBytes(4).toString('hex')}`;
  const key = generateHostKeyPair(); // any OpenSSH ed25519 private key will do
  const created = await secrets.createPlatformSecret(name, key.privateKey, { actor: 'test:setup' });

  // As a composition root wires it: SSH_KEY_SOURCE=vault, SSH_PRIVATE_KEY_SECRET=<name>.
  const config = loadConfig({ SSH_KEY_SOURCE: 'vault', SSH_PRIVATE_KEY_SECRET: name });
  const source = makeSshKeySourceFromConfig(config, {
    readPlatformSecret: secrets.readPlatformSecret,
    actor: 'orchestrator:ssh',
  });
  const loaded = await source.load();
  expect(loaded.reveal()).toBe(key.privateKey.reveal());
  expect(loaded.reveal()).toContain('\n');
  expect(String(loaded)).toBe('[REDACTED]');

  const missing = makeSshKeySource({
    source: 'vault',
    secretName: `${name}-missing`,
    readPlatformSecret: (n) => secrets.readPlatformSecret(n, { actor: 'orchestrator:ssh' }),
  });
  await expect(missing.load()).rejects.toMatchObject({ code: 'secret_denied' });

  const audit = await platformRows(created.secretId, `${name}-missing`);
  expect(audit.map((r) => `${r.operation}/${r.outcome}/${r.actor}`)).toEqual([
    'create/success/test:setup',
    'read/success/orchestrator:ssh',
    'read/denied/orchestrator:ssh',
  ]);
  expect(JSON.stringify(audit)).not.toContain(key.privateKey.reveal().slice(40, 80));
});
