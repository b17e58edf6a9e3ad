import { posix } from 'node:path';
import { OrchestratorError } from '../../orchestrator/errors';
import { isSecret, Secret } from '../../orchestrator/secret';
import { generateHostKeyPair, publicKeyOfPrivate } from '../../orchestrator/remote/host-keys';
import { checkRemotePath, isTempNameFor, tempNameFor } from '../../orchestrator/remote/remote-file';
import { quoteArgv } from '../../orchestrator/remote/shell-quote';
import type {
  ExecOptions,
  ExecResult,
  RemoteShell,
  WriteFileOptions,
} from '../../orchestrator/remote/ssh-shell';

/**
 * An in-memory agent server behind the RemoteShell contract: files and directories with owner
 * and mode, the atomic-write rules (0700 root:root parent, temp files beside the target and
 * removed by the next write, verification after the rename), a cut connection that leaves a temp
 * file and the old content, and a handful of commands (cat, stat, ls, rm, mv, ssh-keygen,
 * systemctl, sshd) that act on that state. Unknown commands exit 127, as a shell would.
 */
export interface FakeNode {
  content: Buffer;
  mode: number;
  uid: number;
  gid: number;
}
export interface FakeDir {
  mode: number;
  uid: number;
  gid: number;
}

type Handler = (argv: readonly string[], stdin: Buffer | undefined) => ExecResult | Promise<ExecResult>;

const ok = (stdout: string | Buffer = ''): ExecResult => ({
  code: 0,
  stdout: Buffer.isBuffer(stdout) ? stdout : Buffer.from(stdout),
  stderr: Buffer.alloc(0),
});
const fail = (code: number, stderr: string): ExecResult => ({
  code,
  stdout: Buffer.alloc(0),
  stderr: Buffer.from(stderr),
});

export const makeFakeShell = () => {
  const files = new Map<string, FakeNode>();
  const dirs = new Map<string, FakeDir>([
    ['/', { mode: 0o755, uid: 0, gid: 0 }],
    ['/etc', { mode: 0o755, uid: 0, gid: 0 }],
    ['/etc/ssh', { mode: 0o755, uid: 0, gid: 0 }],
  ]);
  const calls: string[][] = [];
  /** Every command line as the adapter would send it (proves argv quote cleanly). */
  const commandLines: string[] = [];
  const units = new Map<string, 'active' | 'inactive'>();
  const handlers = new Map<string, Handler>();
  let closed = false;
  let cutNextWriteAfter: number | undefined;
  // A booted host has a host key pair, and sshd running.
  const HOST_KEY = '/etc/ssh/ssh_host_ed25519_key';
  const bootKey = generateHostKeyPair();
  files.set(HOST_KEY, { content: Buffer.from(bootKey.privateKey.reveal()), mode: 0o600, uid: 0, gid: 0 });
  files.set(`${HOST_KEY}.pub`, {
    content: Buffer.from(`${bootKey.publicKey}\n`),
    mode: 0o644,
    uid: 0,
    gid: 0,
  });
  units.set('ssh.service', 'active');

  const assertOpen = (): void => {
    if (closed) throw new OrchestratorError('ssh_connect_failed', 'fake: connection closed');
  };

  const builtins: Record<string, Handler> = {
    cat: (argv) => {
      const p = argv[argv.length - 1] ?? '';
      const f = files.get(p);
      return f ? ok(f.content) : fail(1, `cat: ${p}: No such file or directory\n`);
    },
    stat: (argv) => {
      const p = argv[argv.length - 1] ?? '';
      const f = files.get(p);
      const d = dirs.get(p);
      if (f) return ok(`${f.uid} ${f.gid} ${f.mode.toString(8)} regular file\n`);
      if (d) return ok(`${d.uid} ${d.gid} ${d.mode.toString(8)} directory\n`);
      return fail(1, `stat: cannot statx '${p}': No such file or directory\n`);
    },
    ls: (argv) => {
      const p = argv[argv.length - 1] ?? '';
      if (!dirs.has(p)) return fail(2, `ls: cannot access '${p}': No such file or directory\n`);
      const names = [...files.keys(), ...dirs.keys()]
        .filter((k) => k !== p && posix.dirname(k) === p)
        .map((k) => posix.basename(k))
        .sort();
      return ok(names.map((n) => `${n}\n`).join(''));
    },
    rm: (argv) => {
      for (const p of argv.slice(1).filter((a) => a.startsWith('/'))) files.delete(p);
      return ok();
    },
    mv: (argv) => {
      const [src, dst] = argv.slice(-2);
      const f = src === undefined ? undefined : files.get(src);
      if (!f || dst === undefined) return fail(1, `mv: cannot stat '${src ?? ''}'`);
      files.delete(src as string);
      files.set(dst, f);
      return ok();
    },
    'ssh-keygen': (argv) => {
      const i = argv.indexOf('-f');
      const p = argv[i + 1];
      if (i < 0 || p === undefined) return fail(1, 'ssh-keygen: no -f');
      if (files.has(p)) return fail(1, `${p} already exists.`);
      const pair = generateHostKeyPair();
      files.set(p, { content: Buffer.from(pair.privateKey.reveal()), mode: 0o600, uid: 0, gid: 0 });
      files.set(`${p}.pub`, { content: Buffer.from(`${pair.publicKey}\n`), mode: 0o644, uid: 0, gid: 0 });
      return ok();
    },
    sshd: () => ok(),
    systemctl: (argv) => {
      const [verb, ...rest] = argv.slice(1).filter((a) => !a.startsWith('--'));
      const u = rest[rest.length - 1] ?? '';
      if (verb === 'is-active') return units.get(u) === 'active' ? ok('active\n') : fail(3, '');
      if (verb === 'restart' || verb === 'start' || verb === 'reload-or-restart') units.set(u, 'active');
      if (verb === 'stop') units.set(u, 'inactive');
      return ok();
    },
  };

  const exec = async (argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> => {
    assertOpen();
    if (opts.signal?.aborted) throw new OrchestratorError('aborted', 'fake: aborted');
    commandLines.push(quoteArgv(argv)); // throws on argv the real adapter would reject
    calls.push([...argv]);
    const stdin =
      opts.stdin === undefined
        ? undefined
        : isSecret(opts.stdin)
          ? Buffer.from(opts.stdin.reveal())
          : Buffer.from(opts.stdin);
    const h = handlers.get(argv[0] ?? '') ?? builtins[argv[0] ?? ''];
    return h ? h(argv, stdin) : fail(127, `sh: 1: ${argv[0] ?? ''}: not found\n`);
  };

  const writeFileAtomic = async (
    path: string,
    content: Buffer | Secret,
    opts: WriteFileOptions = {},
  ): Promise<void> => {
    assertOpen();
    const { dir, base } = checkRemotePath(path);
    const mode = opts.mode ?? 0o600;
    const dirMode = opts.dirMode ?? 0o700;
    if (!dirs.has(posix.dirname(dir)))
      throw new OrchestratorError('remote_command_failed', `fake: no parent for ${dir}`);
    dirs.set(dir, { mode: dirMode, uid: 0, gid: 0 });
    for (const k of [...files.keys()])
      if (posix.dirname(k) === dir && isTempNameFor(base, posix.basename(k))) files.delete(k);
    const bytes = isSecret(content) ? Buffer.from(content.reveal(), 'utf8') : Buffer.from(content);
    const tmp = posix.join(dir, tempNameFor(base));
    if (cutNextWriteAfter !== undefined) {
      // The connection drops mid-write: a partial temp file stays, the target is untouched.
      files.set(tmp, { content: bytes.subarray(0, cutNextWriteAfter), mode: 0o600, uid: 0, gid: 0 });
      cutNextWriteAfter = undefined;
      closed = true;
      throw new OrchestratorError('ssh_connect_failed', 'fake: connection closed mid-write');
    }
    files.set(path, { content: bytes, mode, uid: 0, gid: 0 });
  };

  const shell = {
    exec,
    writeFileAtomic,
    close: async (): Promise<void> => {
      closed = true;
    },
  } satisfies RemoteShell;

  return {
    shell,
    files,
    dirs,
    calls,
    commandLines,
    units,
    /** Replace or add a command's behaviour. */
    on: (program: string, handler: Handler): void => void handlers.set(program, handler),
    /** The next write loses its connection after `bytes` bytes of content. */
    cutNextWriteAfter: (bytes: number): void => {
      cutNextWriteAfter = bytes;
    },
    /** A new connection to the same server (the state survives, the connection does not). */
    reconnect: (): RemoteShell => {
      closed = false;
      return shell;
    },
    /**
     * The public key a new connection is served: OpenSSH before 9.8 (Debian 12: 9.2, Ubuntu 24.04:
     * 9.6) re-execs per connection and loads the private host key file each time, so this is the
     * public half of whatever the private file holds now, restart or not (never the .pub file).
     * Undefined when sshd is stopped or the file is missing or unreadable (no handshake).
     */
    servedHostKey: (): string | undefined => {
      if (units.get('ssh.service') !== 'active') return undefined;
      const f = files.get(HOST_KEY);
      if (!f) return undefined;
      try {
        return publicKeyOfPrivate(new Secret(f.content.toString('utf8')));
      } catch {
        return undefined;
      }
    },
    isClosed: (): boolean => closed,
  };
};

export type FakeShell = ReturnType<typeof makeFakeShell>;
