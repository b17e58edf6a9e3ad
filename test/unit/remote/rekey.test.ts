import { isOrchestratorError } from '../../../orchestrator/errors';
import { parsePublicKey, publicKeyOfPrivate } from '../../../orchestrator/remote/host-keys';
import { rekeyCommands, rekeyHost } from '../../../orchestrator/remote/rekey';
import { Secret } from '../../../orchestrator/secret';
import { makeFakeShell } from '../../support/fake-shell';

describe('re-keying a host', () => {
  it('generates the key on the server, reads it back, records it, then installs it and restarts sshd', async () => {
    const fake = makeFakeShell();
    const recorded: string[] = [];
    const bootKey = fake.servedHostKey();
    expect(bootKey).toMatch(/^ssh-ed25519 /);
    const servedWhenRecorded: (string | undefined)[] = [];
    const newKey = await rekeyHost(fake.shell, {
      onNewKey: async (k) => {
        recorded.push(k);
        // Recorded before it goes live: a connection now is still served the old key.
        servedWhenRecorded.push(fake.servedHostKey());
        expect(fake.calls.some((c) => c[0] === 'systemctl')).toBe(false);
      },
    });
    expect(servedWhenRecorded).toEqual([bootKey]);
    expect(newKey).not.toBe(bootKey);
    expect(() => parsePublicKey(newKey)).not.toThrow();
    expect(recorded).toEqual([newKey]);
    expect(fake.files.get('/etc/ssh/ssh_host_ed25519_key.pub')?.content.toString().trim()).toBe(newKey);
    // The private key now in place is the new key's other half (the code moved the right file).
    const installed = fake.files.get('/etc/ssh/ssh_host_ed25519_key')?.content.toString() ?? '';
    expect(publicKeyOfPrivate(new Secret(installed))).toBe(newKey);
    expect(fake.files.has('/etc/ssh/ssh_host_ed25519_key.rekey')).toBe(false);
    expect(fake.servedHostKey()).toBe(newKey);
    // The exact commands, in order: public half before private half, config checked before restart.
    const side = '/etc/ssh/ssh_host_ed25519_key.rekey';
    expect(fake.calls).toEqual([
      ['rm', '-f', '--', side, `${side}.pub`],
      ['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', '', '-f', side],
      ['cat', '--', `${side}.pub`],
      ['mv', '-f', '--', `${side}.pub`, '/etc/ssh/ssh_host_ed25519_key.pub'],
      ['mv', '-f', '--', side, '/etc/ssh/ssh_host_ed25519_key'],
      ['sshd', '-t', '-f', '/etc/ssh/sshd_config'],
      ['systemctl', 'restart', 'ssh.service'],
    ]);
  });

  it('generates with ssh-keygen, no passphrase, no comment, at a side path', () => {
    expect(rekeyCommands().generate).toEqual([
      'ssh-keygen',
      '-q',
      '-t',
      'ed25519',
      '-N',
      '',
      '-C',
      '',
      '-f',
      '/etc/ssh/ssh_host_ed25519_key.rekey',
    ]);
  });

  it('each re-key yields a different key', async () => {
    const fake = makeFakeShell();
    const a = await rekeyHost(fake.shell);
    const b = await rekeyHost(fake.shell);
    expect(a).not.toBe(b);
  });

  it('does not restart sshd if the key cannot be recorded', async () => {
    const fake = makeFakeShell();
    await expect(
      rekeyHost(fake.shell, { onNewKey: () => Promise.reject(new Error('db down')) }),
    ).rejects.toThrow('db down');
    expect(fake.calls.some((c) => c[0] === 'systemctl' || c[0] === 'mv')).toBe(false);
  });

  it('fails with remote_command_failed when the server produces no ed25519 key', async () => {
    const fake = makeFakeShell();
    fake.on('cat', () => ({ code: 0, stdout: Buffer.from('ssh-rsa AAAA\n'), stderr: Buffer.alloc(0) }));
    const err = await rekeyHost(fake.shell).catch((e: unknown) => e);
    expect(isOrchestratorError(err) && err.code).toBe('remote_command_failed');
    expect(fake.calls.some((c) => c[0] === 'systemctl')).toBe(false);
  });

  it('stops before restarting when sshd -t rejects the configuration', async () => {
    const fake = makeFakeShell();
    fake.on('sshd', () => ({ code: 255, stdout: Buffer.alloc(0), stderr: Buffer.from('bad config') }));
    const err = await rekeyHost(fake.shell).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'remote_command_failed',
      message: 'sshd -t -f /etc/ssh/sshd_config exited 255',
    });
    expect((err as { stderrTail?: string }).stderrTail).toBe('bad config');
    expect(fake.calls.some((c) => c[0] === 'systemctl')).toBe(false);
  });

  it('uses the configured key path, config and restart command', async () => {
    const fake = makeFakeShell();
    fake.dirs.set('/tmp', { mode: 0o1777, uid: 0, gid: 0 });
    fake.on('kill', () => ({ code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) }));
    await rekeyHost(fake.shell, {
      hostKeyPath: '/tmp/hk',
      sshdConfigPath: '/tmp/sshd_config',
      restartSshd: ['kill', '-HUP', '1234'],
    });
    expect(fake.files.has('/tmp/hk')).toBe(true);
    expect(fake.calls).toContainEqual(['sshd', '-t', '-f', '/tmp/sshd_config']);
    expect(fake.calls[fake.calls.length - 1]).toEqual(['kill', '-HUP', '1234']);
  });
});
