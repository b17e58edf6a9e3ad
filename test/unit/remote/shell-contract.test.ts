import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { isOrchestratorError } from '../../../orchestrator/errors';
import { agentCommands } from '../../../orchestrator/remote/agent-commands';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { connectSsh, type RemoteShell } from '../../../orchestrator/remote/ssh-shell';
import { Secret } from '../../../orchestrator/secret';
import { makeFakeShell } from '../../support/fake-shell';
import { SFTP_SERVER, startTestSshServer, type TestSshServer } from '../../support/ssh-test-server';

/**
 * One contract, two implementations: the fake shell the unit tests lean on, and the real adapter
 * (ssh2 client, SFTP) against the in-process SSH server, whose commands run with /bin/sh and whose
 * SFTP is OpenSSH's sftp-server, on real files under a temporary directory. Whatever the fake says
 * about files, owners, modes, temp files and command exits must hold for the real thing too.
 */
interface Subject {
  readonly shell: RemoteShell;
  /** A directory that exists, root:root 0755, under which each test works. */
  readonly root: string;
  plantFile(path: string, content: string, mode: number, uid: number): void;
  plantDir(path: string, mode: number, uid: number): void;
  exists(path: string): boolean;
  close(): Promise<void>;
}

const fakeSubject = async (): Promise<Subject> => {
  const fake = makeFakeShell();
  const root = '/srv/contract';
  fake.dirs.set('/srv', { mode: 0o755, uid: 0, gid: 0 });
  fake.dirs.set(root, { mode: 0o755, uid: 0, gid: 0 });
  return {
    shell: fake.shell,
    root,
    plantFile: (p, content, mode, uid) =>
      void fake.files.set(p, { content: Buffer.from(content), mode, uid, gid: uid }),
    plantDir: (p, mode, uid) => void fake.dirs.set(p, { mode, uid, gid: uid }),
    exists: (p) => fake.files.has(p) || fake.dirs.has(p),
    close: () => fake.shell.close(),
  };
};

let ssh: TestSshServer | undefined;
const hostKey = generateHostKeyPair();
const clientKey = generateHostKeyPair();
afterAll(async () => ssh?.close());

const realSubject = async (): Promise<Subject> => {
  ssh ??= await startTestSshServer({
    hostPrivateKey: hostKey.privateKey.reveal(),
    clientPublicKey: clientKey.publicKey,
  });
  const root = mkdtempSync(join(tmpdir(), 'shell-contract-'));
  chmodSync(root, 0o755);
  const shell = await connectSsh(
    { host: '127.0.0.1', port: ssh.port, hostPublicKey: hostKey.publicKey },
    { privateKey: clientKey.privateKey, connectTimeoutMs: 5_000, commandTimeoutMs: 10_000 },
  );
  return {
    shell,
    root,
    plantFile: (p, content, mode, uid) => {
      writeFileSync(p, content);
      chownSync(p, uid, uid);
      chmodSync(p, mode);
    },
    plantDir: (p, mode, uid) => {
      mkdirSync(p);
      chownSync(p, uid, uid);
      chmodSync(p, mode);
    },
    exists: (p) => existsSync(p),
    close: async () => {
      await shell.close();
      rmSync(root, { recursive: true, force: true });
    },
  };
};

// The real subject writes files as root:root over SFTP, as the orchestrator does on a host: the
// test process must be root (CI is) and OpenSSH's sftp-server installed (`npm run deps`).
const canRunReal = process.getuid?.() === 0 && existsSync(SFTP_SERVER);
const subjects: [string, () => Promise<Subject>][] = [
  ['fake shell', fakeSubject],
  ...(canRunReal
    ? [['ssh2 adapter + OpenSSH sftp-server', realSubject] as [string, () => Promise<Subject>]]
    : []),
];

describe.each(subjects)('RemoteShell contract: %s', (_name, make) => {
  let s: Subject;
  beforeEach(async () => {
    s = await make();
  });
  afterEach(async () => s.close());

  const stat = async (p: string) => (await s.shell.exec(agentCommands.stat(p))).stdout.toString().trim();
  const cat = async (p: string) => (await s.shell.exec(['cat', '--', p])).stdout.toString();
  const list = async (p: string) =>
    (await s.shell.exec(agentCommands.listDir(p))).stdout.toString().split('\n').filter(Boolean).sort();

  it('writes a root:root 0600 file in a root:root 0700 directory it creates', async () => {
    const p = posix.join(s.root, 'cortex/agent.env');
    await s.shell.writeFileAtomic(p, new Secret('A=1\n'));
    expect(await stat(p)).toBe('0 0 600 regular file');
    expect(await stat(posix.dirname(p))).toBe('0 0 700 directory');
    expect(await cat(p)).toBe('A=1\n');
    expect(await list(posix.dirname(p))).toEqual(['agent.env']);
  });

  it('honours the file and directory modes it is given', async () => {
    const p = posix.join(s.root, 'www/index.html');
    await s.shell.writeFileAtomic(p, Buffer.from('<p>hi</p>'), { mode: 0o644, dirMode: 0o755 });
    expect(await stat(p)).toBe('0 0 644 regular file');
    expect(await stat(posix.dirname(p))).toBe('0 0 755 directory');
  });

  it('replaces a file that had another owner and a wider mode with a root:root 0600 one', async () => {
    const dir = posix.join(s.root, 'cortex');
    const p = posix.join(dir, 'agent.env');
    s.plantDir(dir, 0o700, 0);
    s.plantFile(p, 'OLD=1\n', 0o666, 1000);
    await s.shell.writeFileAtomic(p, Buffer.from('NEW=1\n'));
    expect(await stat(p)).toBe('0 0 600 regular file');
    expect(await cat(p)).toBe('NEW=1\n');
  });

  it('takes over a directory with another owner and a wider mode', async () => {
    const dir = posix.join(s.root, 'cortex');
    s.plantDir(dir, 0o777, 1000);
    await s.shell.writeFileAtomic(posix.join(dir, 'agent.env'), Buffer.from('A=1\n'));
    expect(await stat(dir)).toBe('0 0 700 directory');
  });

  it('removes the temp files of an interrupted write to the same file, and nothing else', async () => {
    const dir = posix.join(s.root, 'cortex');
    s.plantDir(dir, 0o700, 0);
    s.plantFile(posix.join(dir, '.agent.env.tmp-0123456789abcdef'), 'A=', 0o600, 0);
    s.plantFile(posix.join(dir, '.other.env.tmp-0123456789abcdef'), 'B=', 0o600, 0);
    s.plantFile(posix.join(dir, '.agent.env.tmp-not-ours'), 'C=', 0o600, 0);
    await s.shell.writeFileAtomic(posix.join(dir, 'agent.env'), Buffer.from('A=1\n'));
    expect(await list(dir)).toEqual([
      '.agent.env.tmp-not-ours',
      '.other.env.tmp-0123456789abcdef',
      'agent.env',
    ]);
  });

  it('refuses a file whose directory’s parent does not exist, and creates nothing', async () => {
    const p = posix.join(s.root, 'missing/cortex/agent.env');
    const err = await s.shell.writeFileAtomic(p, Buffer.from('A=1\n')).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect(s.exists(posix.join(s.root, 'missing'))).toBe(false);
  });

  // Drift the contract found (fixed): the real adapter let ssh2's raw SFTP error ({code: 2}, "No
  // such file") escape, where the fake raises an OrchestratorError that classify() understands.
  it('a refused write is an OrchestratorError (remote_command_failed)', async () => {
    const p = posix.join(s.root, 'missing/cortex/agent.env');
    const err = await s.shell.writeFileAtomic(p, Buffer.from('A=1\n')).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isOrchestratorError(err) && err.code).toBe('remote_command_failed');
  });

  it('exits as a shell does: 127 for an unknown program, 1 and the path for cat of a missing file', async () => {
    const unknown = await s.shell.exec(['no-such-tool-here']);
    expect([unknown.code, unknown.stderr.toString()]).toEqual([127, 'sh: 1: no-such-tool-here: not found\n']);
    const missing = posix.join(s.root, 'nope');
    const c = await s.shell.exec(['cat', '--', missing]);
    expect([c.code, c.stderr.toString()]).toEqual([1, `cat: ${missing}: No such file or directory\n`]);
    const st = await s.shell.exec(agentCommands.stat(missing));
    expect([st.code, st.stderr.toString()]).toEqual([
      1,
      `stat: cannot statx '${missing}': No such file or directory\n`,
    ]);
  });
});
