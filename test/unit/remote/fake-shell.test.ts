import { isOrchestratorError } from '../../../orchestrator/errors';
import { ENV_FILE_PATH, renderEnvFile } from '../../../orchestrator/remote/env-file';
import { agentCommands } from '../../../orchestrator/remote/agent-commands';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { Secret } from '../../../orchestrator/secret';
import { makeFakeShell } from '../../support/fake-shell';

/** The fake keeps the RemoteShell contract that the integration tests prove on a real host. */
describe('fake RemoteShell', () => {
  it('writes 0600 root:root files in a 0700 directory and reports them through stat', async () => {
    const fake = makeFakeShell();
    await fake.shell.writeFileAtomic(ENV_FILE_PATH, renderEnvFile([{ name: 'A', value: new Secret('1') }]));
    const st = await fake.shell.exec(agentCommands.stat(ENV_FILE_PATH));
    expect(st.stdout.toString().trim()).toBe('0 0 600 regular file');
    expect(fake.dirs.get('/etc/cortex')).toEqual({ mode: 0o700, uid: 0, gid: 0 });
  });

  it('a cut mid-write keeps the old file, leaves a temp file and closes; the next write cleans up', async () => {
    const fake = makeFakeShell();
    await fake.shell.writeFileAtomic(ENV_FILE_PATH, Buffer.from('old'));
    fake.cutNextWriteAfter(2);
    const err = await fake.shell.writeFileAtomic(ENV_FILE_PATH, Buffer.from('new')).catch((e: unknown) => e);
    expect(isOrchestratorError(err) && err.code).toBe('ssh_connect_failed');
    expect(fake.files.get(ENV_FILE_PATH)?.content.toString()).toBe('old');
    expect((await fake.reconnect().exec(agentCommands.listDir('/etc/cortex'))).stdout.toString()).toMatch(
      /^\.agent-blue\.env\.tmp-[0-9a-f]{16}\nagent-blue\.env\n$/,
    );
    await fake.shell.writeFileAtomic(ENV_FILE_PATH, Buffer.from('new'));
    expect((await fake.shell.exec(agentCommands.listDir('/etc/cortex'))).stdout.toString()).toBe(
      'agent-blue.env\n',
    );
  });

  it('rejects what the real adapter rejects: bad paths, NUL in argv, use after close', async () => {
    const fake = makeFakeShell();
    await expect(fake.shell.writeFileAtomic('relative', Buffer.from('x'))).rejects.toThrow(/path/);
    await expect(fake.shell.exec(['echo', 'a\0b'])).rejects.toThrow(/NUL/);
    await fake.shell.close();
    await expect(fake.shell.exec(['true'])).rejects.toThrow(/closed/);
  });

  it('sshd serves the key in the private host key file, on each connection, without a restart (OpenSSH < 9.8)', async () => {
    const fake = makeFakeShell();
    const before = fake.servedHostKey();
    const next = generateHostKeyPair();
    // Only the private file counts: a .pub that disagrees changes nothing.
    fake.files.set('/etc/ssh/ssh_host_ed25519_key.pub', {
      content: Buffer.from(`${next.publicKey}\n`),
      mode: 0o644,
      uid: 0,
      gid: 0,
    });
    expect(fake.servedHostKey()).toBe(before);
    await fake.shell.exec(['mv', '-f', '--', '/etc/ssh/ssh_host_ed25519_key', '/etc/ssh/old']);
    expect(fake.servedHostKey()).toBeUndefined();
    fake.files.set('/etc/ssh/ssh_host_ed25519_key', {
      content: Buffer.from(next.privateKey.reveal()),
      mode: 0o600,
      uid: 0,
      gid: 0,
    });
    expect(fake.servedHostKey()).toBe(next.publicKey);
    await fake.shell.exec(['systemctl', 'stop', 'ssh.service']);
    expect(fake.servedHostKey()).toBeUndefined();
  });

  it('unknown programs exit 127 like a shell', async () => {
    expect((await makeFakeShell().shell.exec(['no-such-tool'])).code).toBe(127);
  });
});
