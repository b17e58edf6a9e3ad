import { invalidInput } from '../../orchestrator/errors';
import type { Argv } from '../../orchestrator/remote/agent-commands';

/**
 * Test-only commands that read back what production code must never read: a file's bytes (the
 * env file included) and a process's environment. They live here, not in
 * orchestrator/remote/agent-commands.ts, so the orchestrator has no reader of the env file's
 * plaintext.
 */
const ABS = /^\/[^\0]*$/;

export const agentProbes = {
  /** The bytes of a file, read as root. */
  readFile: (p: string): Argv => {
    if (!ABS.test(p) || p.split('/').includes('..'))
      throw invalidInput('path', 'must be an absolute path without ..');
    return ['cat', '--', p];
  },
  /**
   * A TCP connect to the metadata service (169.254.169.254:80) as `user`, with a 2 s timeout:
   * prints `<outcome> <seconds>`, the outcome being `connected`, `timeout` or an errno name.
   */
  metadataConnect: (user: 'root' | 'nobody'): Argv => [
    'runuser',
    '-u',
    user,
    '--',
    'python3',
    '-I',
    '-c',
    [
      'import errno, socket, time',
      's = socket.socket(); s.settimeout(2); t = time.time()',
      'try:',
      '    s.connect(("169.254.169.254", 80)); r = "connected"',
      'except socket.timeout:',
      '    r = "timeout"',
      'except OSError as e:',
      '    r = errno.errorcode.get(e.errno, str(e.errno))',
      'print(r, round(time.time() - t, 3))',
    ].join('\n'),
  ],
  /**
   * A connect to the unix socket `path` as `user`: prints `connected` or the errno name (`EACCES`
   * when the socket's mode refuses the user).
   */
  unixConnect: (user: 'root' | 'nobody', path: string): Argv => {
    if (!ABS.test(path) || path.split('/').includes('..'))
      throw invalidInput('path', 'must be an absolute path without ..');
    return [
      'runuser',
      '-u',
      user,
      '--',
      'python3',
      '-I',
      '-c',
      [
        'import errno, socket, sys',
        's = socket.socket(socket.AF_UNIX)',
        'try:',
        '    s.connect(sys.argv[1]); r = "connected"',
        'except OSError as e:',
        '    r = errno.errorcode.get(e.errno, str(e.errno))',
        'print(r)',
      ].join('\n'),
      path,
    ];
  },
  /** NUL-separated `NAME=value` entries of a running process, read as root. */
  processEnviron: (pid: number): Argv => {
    if (!Number.isInteger(pid) || pid < 2) throw invalidInput('pid', 'must be a process id');
    return ['cat', `/proc/${pid}/environ`];
  },
} as const;

/** Split /proc/<pid>/environ bytes into name → value bytes (exact, no decoding). */
export const parseEnviron = (raw: Buffer): Map<string, Buffer> => {
  const out = new Map<string, Buffer>();
  let start = 0;
  for (let i = 0; i <= raw.length; i++) {
    if (i === raw.length || raw[i] === 0) {
      if (i > start) {
        const entry = raw.subarray(start, i);
        const eq = entry.indexOf(0x3d);
        if (eq > 0) out.set(entry.subarray(0, eq).toString('utf8'), Buffer.from(entry.subarray(eq + 1)));
      }
      start = i + 1;
    }
  }
  return out;
};
