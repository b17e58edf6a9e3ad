import { posix } from 'node:path';
import { CADDY_ADMIN_SOCKET } from '../../templates/caddyfile';
import { invalidInput } from '../errors';

/**
 * Remote commands as data (argv arrays): the steps compose them, RemoteShell quotes and runs them,
 * unit tests assert on them without SSH. Nothing here ever carries a secret, and nothing here reads
 * one back: there is no builder for reading a file's content or a process's environment, so
 * production code has no way to fetch the env file's plaintext (the tests' probes for that live in
 * test/support/agent-probes.ts).
 */
export type Argv = readonly string[];

const UNIT = /^[a-zA-Z0-9@._-]+\.(service|socket|target|timer)$/;
const ABS = /^\/[^\0]*$/;

const unit = (name: string): string => {
  if (!UNIT.test(name)) throw invalidInput('unit', 'must be a systemd unit name like cortex-agent.service');
  return name;
};
const absPath = (p: string): string => {
  if (!ABS.test(p) || p.split('/').includes('..'))
    throw invalidInput('path', 'must be an absolute path without ..');
  return p;
};

const tcpPort = (p: number): number => {
  if (!Number.isInteger(p) || p < 1 || p > 65535) throw invalidInput('port', 'must be a port number 1-65535');
  return p;
};

/** Where Caddy's package config (and any Caddyfile without an `admin` option) puts the admin API. */
export const CADDY_STOCK_ADMIN_PORT = 2019;

export const agentCommands = {
  /** Blocks until cloud-init's first boot has finished (exit 0 = done, 1 = error, 2 = recoverable). */
  cloudInitWait: (): Argv => ['cloud-init', 'status', '--wait'],
  daemonReload: (): Argv => ['systemctl', 'daemon-reload'],
  enable: (u: string): Argv => ['systemctl', 'enable', unit(u)],
  restart: (u: string): Argv => ['systemctl', 'restart', unit(u)],
  /**
   * Picks up a new Caddyfile without dropping connections, through the admin endpoint the NEW file
   * names. So it cannot move the admin API: on a fresh server Caddy runs the package's stock config
   * (admin on TCP 127.0.0.1:2019), and `caddy reload` dials the socket that does not exist yet and
   * fails, leaving the stock admin up. The first Caddyfile needs `restart('caddy.service')`, then
   * `tcpListeners(CADDY_STOCK_ADMIN_PORT)` (must print nothing) and `caddyAdminProbe()` (exit 0).
   */
  reloadOrRestart: (u: string): Argv => ['systemctl', 'reload-or-restart', unit(u)],
  /** The TCP sockets listening on `port`, one per line (`parseListeners`); empty when none. */
  tcpListeners: (port: number): Argv => ['ss', '-H', '-l', '-t', '-n', `sport = :${tcpPort(port)}`],
  /**
   * GET /config/ from Caddy's admin API over its unix socket, as root (exit 0 when it answers 2xx).
   * The empty Host header is what Caddy accepts on a unix socket; the config holds no secret. The
   * socket path is fixed: this is no general-purpose reader.
   */
  caddyAdminProbe: (): Argv => [
    'curl',
    '--silent',
    '--show-error',
    '--fail',
    '--max-time',
    '5',
    '--header',
    'Host;',
    '--unix-socket',
    CADDY_ADMIN_SOCKET,
    'http://localhost/config/',
  ],
  isActive: (u: string): Argv => ['systemctl', 'is-active', '--quiet', unit(u)],
  mainPid: (u: string): Argv => ['systemctl', 'show', '--property=MainPID', '--value', unit(u)],
  /** NUL-separated argv of a running process (to tell an exec'd agent from the fork before exec). */
  processCmdline: (pid: number): Argv => {
    if (!Number.isInteger(pid) || pid < 2) throw invalidInput('pid', 'must be a process id');
    return ['cat', `/proc/${pid}/cmdline`];
  },
  /** `uid gid octal-mode type`, e.g. `0 0 600 regular file`. */
  stat: (p: string): Argv => ['stat', '--format=%u %g %a %F', '--', absPath(p)],
  /** One name per line, hidden files included. */
  listDir: (p: string): Argv => ['ls', '-A1', '--', absPath(p)],
  removeFile: (p: string): Argv => ['rm', '-f', '--', absPath(p)],
  /**
   * The public root certificate of Caddy's local CA (local mode), for the health check to verify
   * against. Only a path of that exact shape: this is not a general file reader.
   */
  /** Enable several units in one command. */
  enableUnits: (...units: string[]): Argv => ['systemctl', 'enable', ...units.map(unit)],
  /** Forget a unit's failed state and start-rate counter, so that a new start is tried. */
  resetFailed: (u: string): Argv => ['systemctl', 'reset-failed', unit(u)],
  /** `ActiveState`, `SubState`, `Result` and the main process's exit status, one per line (systemd's words). */
  unitState: (u: string): Argv => [
    'systemctl',
    'show',
    '--property=ActiveState,SubState,Result,ExecMainStatus',
    '--value',
    unit(u),
  ],
  /** Restart several units in one command (in the order given, as one systemd job each). */
  restartUnits: (...units: string[]): Argv => ['systemctl', 'restart', ...units.map(unit)],
  /**
   * `sha256  path` lines of non-secret files (the configure step's check that what cloud-init
   * placed is what it would write). The env file's directory is refused: it stays write-only.
   */
  fileDigests: (paths: readonly string[]): Argv => {
    for (const p of paths) {
      // Every spelling of the directory (`/etc//cortex`, `/etc/./cortex`, `//etc/cortex`) is one.
      const n = posix.normalize(absPath(p)).replace(/^\/+/, '/');
      if (n === '/etc/cortex' || n.startsWith('/etc/cortex/'))
        throw invalidInput('path', 'the env file directory is write-only for the orchestrator');
      if (n !== p) throw invalidInput('path', 'must be a normalised absolute path');
    }
    return ['sha256sum', '--', ...paths];
  },
  /** `uid gid octal-mode path` lines. */
  statModes: (paths: readonly string[]): Argv => [
    'stat',
    '--format=%u %g %a %n',
    '--',
    ...paths.map(absPath),
  ],
  /**
   * For each variable of a running process's environment: its name and HMAC-SHA256(nonce, value),
   * the nonce (hex, fresh per check) read from standard input. Nothing derived from a value without
   * that one-time key leaves the host, so the orchestrator can check a value it holds without ever
   * reading one back (and the output confirms no guess).
   */
  environDigests: (pid: number): Argv => {
    if (!Number.isInteger(pid) || pid < 2) throw invalidInput('pid', 'must be a process id');
    return [
      'python3',
      '-I',
      '-c',
      [
        'import hashlib, hmac, sys',
        'key = bytes.fromhex(sys.stdin.readline().strip())',
        'assert len(key) >= 16',
        `raw = open("/proc/${pid}/environ", "rb").read()`,
        'for e in raw.split(b"\\0"):',
        '    n, s, v = e.partition(b"=")',
        '    if s: print(n.decode("ascii", "replace"), hmac.new(key, v, hashlib.sha256).hexdigest())',
      ].join('\n'),
    ];
  },
  caddyRootCertificate: (p: string): Argv => {
    if (!/^\/[A-Za-z0-9._/-]+\/pki\/authorities\/local\/root\.crt$/.test(p) || p.split('/').includes('..'))
      throw invalidInput('path', "must be a Caddy local CA's pki/authorities/local/root.crt");
    return ['cat', '--', p];
  },
} as const;

/** Parse `systemctl show --value MainPID` output; 0 means "not running". */
export const parseMainPid = (stdout: string): number => {
  const n = Number(stdout.trim());
  return Number.isInteger(n) && n >= 0 ? n : 0;
};

/** Local addresses (`127.0.0.1:2019`, `[::1]:2019`, `*:80`) from `ss -H -l -t -n` output. */
export const parseListeners = (stdout: string): string[] =>
  stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[3])
    .filter((a): a is string => a !== undefined && a !== '');
