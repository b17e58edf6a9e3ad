import { constants } from 'node:fs';
import { mkdir, open } from 'node:fs/promises';
import { createHmac, randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import type { Config } from '../config';
import { OrchestratorError } from '../errors';

/**
 * The fingerprint org members see next to a secret: HMAC-SHA256 of the value (UTF-8) under a key
 * kept OUTSIDE the database, as 64 lowercase hex digits. Unkeyed, a fingerprint would confirm a
 * guessed short value to anyone who reads the metadata; with the key in the database, to anyone
 * who reads the database. The orchestrator computes it and hands it to secrets__create /
 * __add_version and platform_secrets__create / __rotate, which check its shape only
 * (docs/data-contract.md: what a false fingerprint can and cannot do).
 */
export interface FingerprintKey {
  /** HMAC-SHA256 of the value under the key, hex. */
  fingerprint(value: string): Promise<string>;
}

/** At least 32 random bytes, as hex (one line; a final newline is allowed). */
const KEY_FILE_SHAPE = /^(?:[0-9a-f]{2}){32,}\n?$/;

export const hmacFingerprint = (key: Buffer, value: string): string => {
  const hmac = createHmac('sha256', key);
  // Stryker disable next-line StringLiteral: equivalent, hmac.update(string, '') reads UTF-8 too
  hmac.update(value, 'utf8');
  return hmac.digest('hex');
};

const fromKey = (key: Buffer): FingerprintKey => ({
  fingerprint: async (value) => hmacFingerprint(key, value),
});

/** A key held in memory (tests; an adapter that fetches the key from a KMS would look like this). */
export const makeMemoryFingerprintKey = (key: Buffer = randomBytes(32)): FingerprintKey => {
  if (key.length < 32)
    throw new OrchestratorError('config_invalid', 'fingerprint key: must be at least 32 bytes');
  return fromKey(Buffer.from(key));
};

const errnoOf = (err: unknown): string | undefined => (err as NodeJS.ErrnoException).code;

/**
 * The file adapter: 32 random bytes as hex, in a file owned by this process's user, mode 0600 or
 * stricter (a wider mode, a symbolic link or another owner is refused, never repaired), created on
 * first use when `create` is set. Read once, then kept in memory.
 */
export const makeFileFingerprintKey = (file: string, opts: { create: boolean }): FingerprintKey => {
  const where = `FINGERPRINT_KEY_FILE (${file})`;

  const read = async (): Promise<Buffer | null> => {
    let fh;
    try {
      // O_NOFOLLOW: the mode checked is the mode of the file read, not of a link's target.
      fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (err) {
      const code = errnoOf(err);
      if (code === 'ENOENT') return null;
      const why = code === 'ELOOP' ? 'is a symbolic link' : `cannot be opened (${code})`;
      throw new OrchestratorError('config_invalid', `${where} ${why}`);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new OrchestratorError('config_invalid', `${where} is not a regular file`);
      if ((st.mode & 0o077) !== 0)
        throw new OrchestratorError(
          'config_invalid',
          `${where} has mode ${(st.mode & 0o777).toString(8)}; it must not be readable by group or others (chmod 600)`,
        );
      // Stryker disable next-line OptionalChaining: equivalent on Linux, where process.geteuid always exists
      const uid = process.geteuid?.();
      // Stryker disable next-line ConditionalExpression: equivalent on Linux, where uid is never undefined (its false is the inner if's, counted)
      if (uid !== undefined) {
        if (st.uid !== uid)
          throw new OrchestratorError(
            'config_invalid',
            `${where} is owned by uid ${st.uid}, not by this process`,
          );
      }
      const text = (await fh.readFile()).toString('utf8');
      if (!KEY_FILE_SHAPE.test(text))
        throw new OrchestratorError(
          'config_invalid',
          `${where} must hold at least 32 bytes as lowercase hex on one line (e.g. openssl rand -hex 32)`,
        );
      // Stryker disable next-line MethodExpression: equivalent, hex decoding stops at the final newline, the only white space the shape allows
      return Buffer.from(text.trim(), 'hex');
    } finally {
      await fh.close();
    }
  };

  const create = async (): Promise<void> => {
    await mkdir(dirname(file), { recursive: true, mode: 0o700 });
    let fh;
    try {
      // O_EXCL: two processes creating it at once end with one key; the loser reads the winner's.
      fh = await open(
        file,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      );
    } catch (err) {
      if (errnoOf(err) === 'EEXIST') return;
      throw new OrchestratorError('config_invalid', `${where} cannot be created (${errnoOf(err)})`);
    }
    try {
      await fh.writeFile(`${randomBytes(32).toString('hex')}\n`);
      await fh.sync();
    } finally {
      await fh.close();
    }
  };

  let loaded: Promise<FingerprintKey> | undefined;
  const load = async (): Promise<FingerprintKey> => {
    let key = await read();
    if (!key && opts.create) {
      await create();
      key = await read();
    }
    if (!key) throw new OrchestratorError('config_invalid', `${where} does not exist`);
    return fromKey(key);
  };
  return {
    fingerprint: async (value) => {
      const key = await (loaded ??= load().catch((err: unknown) => {
        loaded = undefined;
        throw err;
      }));
      return key.fingerprint(value);
    },
  };
};

/**
 * For composition roots. FINGERPRINT_KEY_FILE when set (it must exist: a key that silently changed
 * would change every new fingerprint). Unset, in local mode only: `<CORTEX_STATE_DIR>/keys/fingerprint_key`,
 * created on first use; with HOST_PROVIDER=hcloud or RPC_ADAPTER=supabase it is required (refused
 * here, when the orchestrator's services are put together): a default key per machine would give
 * each worker fingerprints of its own.
 */
export const makeFingerprintKeyFromConfig = (
  config: Pick<Config, 'CORTEX_STATE_DIR' | 'FINGERPRINT_KEY_FILE' | 'HOST_PROVIDER' | 'RPC_ADAPTER'>,
): FingerprintKey => {
  if (config.FINGERPRINT_KEY_FILE)
    // Stryker disable next-line ObjectLiteral: equivalent, an absent create is false
    return makeFileFingerprintKey(config.FINGERPRINT_KEY_FILE, { create: false });
  if (config.HOST_PROVIDER === 'hcloud' || config.RPC_ADAPTER === 'supabase')
    throw new OrchestratorError(
      'config_invalid',
      'FINGERPRINT_KEY_FILE: is required when HOST_PROVIDER=hcloud or RPC_ADAPTER=supabase (a 0600 file holding `openssl rand -hex 32`, the same on every orchestrator process)',
    );
  return makeFileFingerprintKey(join(config.CORTEX_STATE_DIR, 'keys', 'fingerprint_key'), { create: true });
};
