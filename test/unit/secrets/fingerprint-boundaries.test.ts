import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createHmac, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  hmacFingerprint,
  makeFileFingerprintKey,
  makeFingerprintKeyFromConfig,
  makeMemoryFingerprintKey,
} from '../../../orchestrator/secrets/fingerprint';
import { rejection } from '../../support/rejection';

// The module object itself (an `import * as` namespace is a copy whose properties cannot be spied on).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const fsp = require('node:fs/promises') as typeof import('node:fs/promises');

/**
 * The fingerprint key's exact boundaries and messages (written for mutation testing: each test
 * fails on a mutant that survived the behavioural tests in fingerprint.test.ts).
 */
const VALUE = `sk-ant-api03-${randomBytes(12).toString('hex')}`;
const hmac = (key: Buffer): string => createHmac('sha256', key).update(VALUE, 'utf8').digest('hex');
const SHAPE = 'must hold at least 32 bytes as lowercase hex on one line (e.g. openssl rand -hex 32)';

describe('fingerprint key boundaries, exactly', () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cortex-fpb-'));
    file = join(dir, 'fingerprint_key');
  });
  afterEach(() => {
    jest.restoreAllMocks();
    rmSync(dir, { recursive: true, force: true });
  });

  const write = (text: string, mode = 0o600): string => {
    rmSync(file, { force: true });
    writeFileSync(file, text, { mode });
    chmodSync(file, mode);
    return file;
  };
  const refusal = async (f: string, create = false): Promise<[string, string]> => {
    const err = await rejection(makeFileFingerprintKey(f, { create }).fingerprint(VALUE));
    return [err.code, err.message];
  };
  const where = (f: string): string => `FINGERPRINT_KEY_FILE (${f})`;

  it('the memory key: 32 bytes taken, 31 refused with its message; the value is read as UTF-8', async () => {
    const key = randomBytes(32);
    expect(await makeMemoryFingerprintKey(key).fingerprint(VALUE)).toBe(hmac(key));
    expect(() => makeMemoryFingerprintKey(randomBytes(31))).toThrow(
      'fingerprint key: must be at least 32 bytes',
    );
    try {
      makeMemoryFingerprintKey(randomBytes(31));
    } catch (err) {
      expect((err as { code?: string }).code).toBe('config_invalid');
    }
    // a non-ASCII value: UTF-8 bytes, not Latin-1 or UTF-16
    const text = 'clé-ß-密钥';
    expect(hmacFingerprint(key, text)).toBe(
      createHmac('sha256', key).update(Buffer.from(text, 'utf8')).digest('hex'),
    );
  });

  it('the key file: more than 32 bytes is taken; one line only, nothing before or after, at most one final newline', async () => {
    const long = randomBytes(48);
    expect(
      await makeFileFingerprintKey(write(long.toString('hex')), { create: false }).fingerprint(VALUE),
    ).toBe(hmac(long));
    const key = randomBytes(32);
    const hex = key.toString('hex');
    expect(await makeFileFingerprintKey(write(`${hex}\n`), { create: false }).fingerprint(VALUE)).toBe(
      hmac(key),
    );
    for (const bad of [`x${hex}`, `${hex}x`, `${hex}\n\n`, `${hex}\nab`, ` ${hex}`, `${hex.slice(1)}`])
      expect(await refusal(write(bad))).toEqual(['config_invalid', `${where(file)} ${SHAPE}`]);
  });

  it('names a directory, another open failure and a missing configured file exactly', async () => {
    const d = join(dir, 'd');
    mkdirSync(d, { mode: 0o700 });
    expect(await refusal(d)).toEqual(['config_invalid', `${where(d)} is not a regular file`]);
    const deep = join(write(randomBytes(32).toString('hex')), 'below');
    expect(await refusal(deep)).toEqual(['config_invalid', `${where(deep)} cannot be opened (ENOTDIR)`]);
    expect(await refusal(join(dir, 'missing'))).toEqual([
      'config_invalid',
      `${where(join(dir, 'missing'))} does not exist`,
    ]);
  });

  // chown needs root (CI runs as root); the owner check compares with the process's own uid.
  (process.geteuid?.() === 0 ? it : it.skip)('refuses a 0600 key file another user owns', async () => {
    const f = write(randomBytes(32).toString('hex'));
    await expect(makeFileFingerprintKey(f, { create: false }).fingerprint(VALUE)).resolves.toMatch(
      /^[0-9a-f]{64}$/,
    );
    chownSync(f, 65534, 65534);
    expect(await refusal(f)).toEqual([
      'config_invalid',
      `${where(f)} is owned by uid 65534, not by this process`,
    ]);
  });

  it('is read once and kept: a key file changed later does not change the fingerprints', async () => {
    const first = randomBytes(32);
    const fk = makeFileFingerprintKey(write(first.toString('hex')), { create: false });
    expect(await fk.fingerprint(VALUE)).toBe(hmac(first));
    write(randomBytes(32).toString('hex'));
    expect(await fk.fingerprint(VALUE)).toBe(hmac(first));
  });

  it('a failed load is not kept: the next use reads the file again', async () => {
    const fk = makeFileFingerprintKey(file, { create: false });
    expect((await rejection(fk.fingerprint(VALUE))).message).toBe(`${where(file)} does not exist`);
    const key = randomBytes(32);
    write(key.toString('hex'));
    expect(await fk.fingerprint(VALUE)).toBe(hmac(key));
  });

  it('an existing key file is opened once, read-only, even when it may be created', async () => {
    const key = randomBytes(32);
    write(key.toString('hex'));
    const open = jest.spyOn(fsp, 'open');
    expect(await makeFileFingerprintKey(file, { create: true }).fingerprint(VALUE)).toBe(hmac(key));
    expect(open.mock.calls.filter((c) => c[0] === file).map((c) => c[1])).toEqual([
      fsp.constants.O_RDONLY | fsp.constants.O_NOFOLLOW,
    ]);
  });

  it('losing the creation race reads the winner key; any other creation failure is named', async () => {
    const real = fsp.open;
    const winner = randomBytes(32);
    // another process creates the key between this one's read (ENOENT) and its create (EEXIST)
    jest.spyOn(fsp, 'open').mockImplementationOnce(async (...args: Parameters<typeof fsp.open>) => {
      const fh = await real(...args).catch((err: unknown) => {
        writeFileSync(file, `${winner.toString('hex')}\n`, { mode: 0o600 });
        throw err;
      });
      return fh;
    });
    expect(await makeFileFingerprintKey(file, { create: true }).fingerprint(VALUE)).toBe(hmac(winner));

    rmSync(file);
    const open = jest.spyOn(fsp, 'open');
    open.mockImplementation(async (...args: Parameters<typeof fsp.open>) => {
      if (typeof args[1] === 'number' && (args[1] & fsp.constants.O_CREAT) !== 0)
        throw Object.assign(new Error('no space'), { code: 'ENOSPC' });
      return real(...args);
    });
    expect(await refusal(file, true)).toEqual([
      'config_invalid',
      `${where(file)} cannot be created (ENOSPC)`,
    ]);
  });

  it('a missing key file with hcloud or supabase is config_invalid, naming each', () => {
    for (const [HOST_PROVIDER, RPC_ADAPTER] of [
      ['hcloud', 'postgres'],
      ['local', 'supabase'],
    ] as const) {
      let err: unknown;
      try {
        makeFingerprintKeyFromConfig({ CORTEX_STATE_DIR: dir, HOST_PROVIDER, RPC_ADAPTER });
      } catch (e) {
        err = e;
      }
      expect(err).toMatchObject({
        code: 'config_invalid',
        message:
          'FINGERPRINT_KEY_FILE: is required when HOST_PROVIDER=hcloud or RPC_ADAPTER=supabase (a 0600 file holding `openssl rand -hex 32`, the same on every orchestrator process)',
      });
    }
  });

  it('leaves no file descriptor open, whether it reads, creates or refuses', async () => {
    const fds = (): number => readdirSync('/proc/self/fd').length;
    const before = fds();
    await makeFileFingerprintKey(join(dir, 'new', 'k'), { create: true }).fingerprint(VALUE);
    await makeFileFingerprintKey(write(randomBytes(32).toString('hex')), { create: false }).fingerprint(
      VALUE,
    );
    await refusal(write('short'));
    await refusal(write(randomBytes(32).toString('hex'), 0o640));
    expect(fds()).toBe(before);
  });
});
