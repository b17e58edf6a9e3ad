import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../../orchestrator/config';
import {
  makeFileFingerprintKey,
  makeFingerprintKeyFromConfig,
  makeMemoryFingerprintKey,
} from '../../../orchestrator/secrets/fingerprint';
import { rejection } from '../../support/rejection';

const refused = async (p: Promise<unknown>): Promise<Error> => {
  const err = await rejection(p);
  expect(err.code).toBe('config_invalid');
  return err;
};

const VALUE = `sk-ant-api03-${randomBytes(12).toString('hex')}`;

describe('the fingerprint members see', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cortex-fp-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const keyFile = (hex: string, mode = 0o600): string => {
    const file = join(dir, 'fingerprint_key');
    writeFileSync(file, hex, { mode });
    chmodSync(file, mode); // the umask does not narrow what the test asks for
    return file;
  };

  it('is HMAC-SHA256 of the value under the configured key, not its plain SHA-256', async () => {
    const key = randomBytes(32);
    const fp = await makeFileFingerprintKey(keyFile(`${key.toString('hex')}\n`), {
      create: false,
    }).fingerprint(VALUE);
    expect(fp).toBe(createHmac('sha256', key).update(VALUE, 'utf8').digest('hex'));
    expect(fp).not.toBe(createHash('sha256').update(VALUE).digest('hex'));
    expect(fp).toMatch(/^[0-9a-f]{64}$/);
    // another key, another fingerprint: the key is what makes a guess uncheckable
    expect(await makeMemoryFingerprintKey(randomBytes(32)).fingerprint(VALUE)).not.toBe(fp);
  });

  it('refuses a key file with any group or other bit set, and accepts 0600 and 0400', async () => {
    const hex = randomBytes(32).toString('hex');
    for (const mode of [0o640, 0o604, 0o602, 0o620, 0o610, 0o601, 0o644, 0o660]) {
      const err = await refused(
        makeFileFingerprintKey(keyFile(hex, mode), { create: false }).fingerprint(VALUE),
      );
      expect(err.message).toBe(
        `FINGERPRINT_KEY_FILE (${join(dir, 'fingerprint_key')}) has mode ${mode.toString(8)}; it must not be readable by group or others (chmod 600)`,
      );
      rmSync(join(dir, 'fingerprint_key'));
    }
    for (const mode of [0o600, 0o400]) {
      await expect(
        makeFileFingerprintKey(keyFile(hex, mode), { create: false }).fingerprint(VALUE),
      ).resolves.toMatch(/^[0-9a-f]{64}$/);
      rmSync(join(dir, 'fingerprint_key'), { force: true });
    }
  });

  it('refuses a symbolic link, a short or malformed key, and a configured file that does not exist', async () => {
    const real = keyFile(randomBytes(32).toString('hex'));
    const link = join(dir, 'link');
    symlinkSync(real, link);
    expect(
      (await refused(makeFileFingerprintKey(link, { create: true }).fingerprint(VALUE))).message,
    ).toMatch(/is a symbolic link$/);
    for (const bad of [
      randomBytes(31).toString('hex'),
      'zz'.repeat(32),
      randomBytes(32).toString('hex').toUpperCase(),
      '',
    ]) {
      rmSync(real);
      const err = await refused(makeFileFingerprintKey(keyFile(bad), { create: false }).fingerprint(VALUE));
      expect(err.message).toMatch(/must hold at least 32 bytes as lowercase hex/);
      expect(err.message).not.toContain(bad || '\0');
    }
    expect(
      (await refused(makeFileFingerprintKey(join(dir, 'missing'), { create: false }).fingerprint(VALUE)))
        .message,
    ).toMatch(/does not exist$/);
  });

  it('creates the local default on first use, 0600, once: every process then computes the same fingerprints', async () => {
    const stateDir = join(dir, 'state');
    const config = loadConfig({ CORTEX_STATE_DIR: stateDir });
    const [a, b] = await Promise.all([
      makeFingerprintKeyFromConfig(config).fingerprint(VALUE),
      makeFingerprintKeyFromConfig(config).fingerprint(VALUE),
    ]);
    const file = join(stateDir, 'keys', 'fingerprint_key');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const key = Buffer.from(readFileSync(file, 'utf8').trim(), 'hex');
    expect(key).toHaveLength(32);
    expect(a).toBe(createHmac('sha256', key).update(VALUE, 'utf8').digest('hex'));
    expect(b).toBe(a);
    expect(await makeFingerprintKeyFromConfig(config).fingerprint(VALUE)).toBe(a);
  });

  it('is required explicitly with HOST_PROVIDER=hcloud or RPC_ADAPTER=supabase', () => {
    const supabase = loadConfig({
      RPC_ADAPTER: 'supabase',
      SUPABASE_URL: 'https://example.supabase.co',
      SUPABASE_SERVICE_ROLE_KEY: 'x'.repeat(40),
    });
    const hcloud = loadConfig({
      HOST_PROVIDER: 'hcloud',
      HCLOUD_TOKEN: 'h'.repeat(64),
      DNS_ZONE: 'agents.example.com',
      ORCHESTRATOR_SSH_CIDRS: '192.0.2.0/24',
    });
    for (const config of [supabase, hcloud])
      expect(() => makeFingerprintKeyFromConfig(config)).toThrow(
        /^FINGERPRINT_KEY_FILE: is required when HOST_PROVIDER=hcloud or RPC_ADAPTER=supabase/,
      );
    expect(() =>
      makeFingerprintKeyFromConfig({ ...hcloud, FINGERPRINT_KEY_FILE: join(dir, 'k') }),
    ).not.toThrow();
    expect(() => makeFingerprintKeyFromConfig(loadConfig({ CORTEX_STATE_DIR: dir }))).not.toThrow();
  });

  it('a configured file is never created: a key that silently changed would change every new fingerprint', async () => {
    const file = join(dir, 'configured');
    const config = loadConfig({ CORTEX_STATE_DIR: dir, FINGERPRINT_KEY_FILE: file });
    await refused(makeFingerprintKeyFromConfig(config).fingerprint(VALUE));
    expect(() => statSync(file)).toThrow(/ENOENT/);
  });
});
