import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { utils } from 'ssh2';
import { OrchestratorError } from '../errors';
import { Secret } from '../secret';

/**
 * Where the orchestrator's own SSH private key comes from. It is a platform credential: read
 * from a file only this process's user can read, or from a platform-scoped vault secret through
 * an injected (audited) reader — never from the repo, never logged, never put on an agent server.
 */
export type ReadPlatformSecret = (name: string) => Promise<Secret>;

export type SshKeySourceConfig =
  | { readonly source: 'file'; readonly file: string }
  | {
      readonly source: 'vault';
      readonly secretName: string;
      readonly readPlatformSecret: ReadPlatformSecret;
    };

export interface SshKeySource {
  /** The unencrypted OpenSSH private key; throws `config_invalid` without quoting the file. */
  load(): Promise<Secret>;
}

const checkKey = (key: Secret, where: string): Secret => {
  // ssh2 (1.17) returns one key or an Error, but undefined for an openssh-key-v1 file that holds
  // no key (found while mutation testing: it threw a TypeError here instead of config_invalid).
  const parsed = utils.parseKey(key.reveal()) as ReturnType<typeof utils.parseKey> | undefined;
  if (parsed === undefined || parsed instanceof Error)
    throw new OrchestratorError(
      'config_invalid',
      `${where} does not hold an unencrypted OpenSSH private key`,
    );
  if (!parsed.isPrivateKey())
    throw new OrchestratorError('config_invalid', `${where} holds a public key; the private key is needed`);
  return key;
};

const loadFile = async (file: string): Promise<Secret> => {
  const where = `SSH_PRIVATE_KEY_FILE (${file})`;
  let fh;
  try {
    // O_NOFOLLOW: the mode we check must be the mode of the file we read, not of a link's target.
    fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'does not exist'
        : code === 'ELOOP'
          ? 'is a symbolic link'
          : `cannot be opened (${code})`;
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
          `${where} is owned by uid ${st.uid}, not by this process (uid ${uid})`,
        );
    }
    const buf = await fh.readFile();
    const key = new Secret(buf.toString('utf8'));
    buf.fill(0);
    return checkKey(key, where);
  } finally {
    await fh.close();
  }
};

export const makeSshKeySource = (cfg: SshKeySourceConfig): SshKeySource => ({
  load: async () => {
    if (cfg.source === 'file') return loadFile(cfg.file);
    const key = await cfg.readPlatformSecret(cfg.secretName);
    return checkKey(key, `vault secret ${cfg.secretName}`);
  },
});
