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

const platformRows = async (since: number) =>
  (
    await admin.query<{ operation: string; outcome: string; actor: string | null }>(
      `select operation, outcome, actor from public.secret_access_log
        where chain_id = $1 and id > $2 order by id`,
      [PLATFORM_AUDIT_CHAIN, since],
    )
  ).rows;

it('loads the orchestrator key from the vault, multi-line and intact, and audits the read', async () => {
  const secrets = makeSecretsService({ rpc: db.rpc, fingerprintKey });
  const name = `test-ssh-${randomBytes(4).toString('hex')}`;
  const key = generateHostKeyPair(); // any OpenSSH ed25519 private key will do
  const { rows } = await admin.query<{ max: string | null }>(
    'select max(id)::text as max from public.secret_access_log',
  );
  const since = Number(rows[0]?.max ?? 0);
  await secrets.createPlatformSecret(name, key.privateKey, { actor: 'test:setup' });

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

  const audit = await platformRows(since);
  expect(audit.map((r) => `${r.operation}/${r.outcome}/${r.actor}`)).toEqual(
    expect.arrayContaining([
      'create/success/test:setup',
      'read/success/orchestrator:ssh',
      'read/denied/orchestrator:ssh',
    ]),
  );
  expect(JSON.stringify(audit)).not.toContain(key.privateKey.reveal().slice(40, 80));
});
