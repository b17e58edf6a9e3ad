import { OrchestratorError } from '../errors';
import { parsePublicKey, formatPublicKey } from './host-keys';
import type { Argv } from './agent-commands';
import { type RemoteShell, run } from './ssh-shell';

/**
 * Re-key a host after the first login (invariant 5): the key that travelled in user data (which
 * the metadata service keeps serving) stops mattering. The new key is generated on the server,
 * its public half read back over the already-authenticated connection, handed to `onNewKey`
 * (record it before it becomes live, so a crash after the restart cannot lock us out), then
 * moved into place, and sshd restarted. The caller pins the returned key from then on.
 */
export interface RekeyOptions {
  /** Private host key path sshd uses. */
  readonly hostKeyPath?: string;
  /** How to make sshd load the new key; default `systemctl restart ssh.service`. */
  readonly restartSshd?: Argv;
  /** sshd's configuration, checked with `sshd -t` before the restart. */
  readonly sshdConfigPath?: string;
  /** Called with the new public key before it goes live. */
  readonly onNewKey?: (publicKey: string) => Promise<void>;
  readonly signal?: AbortSignal;
}

export const DEFAULT_HOST_KEY_PATH = '/etc/ssh/ssh_host_ed25519_key';

const PLAIN_PATH = /^\/[A-Za-z0-9._/-]+$/;

export const rekeyCommands = (
  hostKeyPath: string = DEFAULT_HOST_KEY_PATH,
  sshdConfigPath = '/etc/ssh/sshd_config',
) => {
  if (!PLAIN_PATH.test(hostKeyPath) || !PLAIN_PATH.test(sshdConfigPath))
    throw new Error('paths must be plain absolute paths');
  const next = `${hostKeyPath}.rekey`;
  return {
    clean: ['rm', '-f', '--', next, `${next}.pub`] as Argv,
    generate: ['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', '', '-f', next] as Argv,
    readPublic: ['cat', '--', `${next}.pub`] as Argv,
    // Public half first: sshd only reads the private file, so until the second rename it keeps
    // serving the old key consistently.
    installPublic: ['mv', '-f', '--', `${next}.pub`, `${hostKeyPath}.pub`] as Argv,
    installPrivate: ['mv', '-f', '--', next, hostKeyPath] as Argv,
    checkConfig: ['sshd', '-t', '-f', sshdConfigPath] as Argv,
  };
};

export const rekeyHost = async (shell: RemoteShell, opts: RekeyOptions = {}): Promise<string> => {
  const cmd = rekeyCommands(opts.hostKeyPath, opts.sshdConfigPath);
  const o = opts.signal ? { signal: opts.signal } : {};
  await run(shell, cmd.clean, o);
  await run(shell, cmd.generate, o);
  const pub = (await run(shell, cmd.readPublic, o)).stdout.toString('utf8');
  let publicKey: string;
  try {
    publicKey = formatPublicKey(parsePublicKey(pub, 'rekey').blob);
  } catch (err) {
    throw new OrchestratorError(
      'remote_command_failed',
      'the re-keyed host did not produce an ed25519 public key',
      { cause: err },
    );
  }
  await opts.onNewKey?.(publicKey);
  await run(shell, cmd.installPublic, o);
  await run(shell, cmd.installPrivate, o);
  await run(shell, cmd.checkConfig, o);
  await run(shell, opts.restartSshd ?? ['systemctl', 'restart', 'ssh.service'], o);
  return publicKey;
};
