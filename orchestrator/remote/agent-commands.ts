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

export const agentCommands = {
  /** Blocks until cloud-init's first boot has finished (exit 0 = done, 1 = error, 2 = recoverable). */
  cloudInitWait: (): Argv => ['cloud-init', 'status', '--wait'],
  daemonReload: (): Argv => ['systemctl', 'daemon-reload'],
  enable: (u: string): Argv => ['systemctl', 'enable', unit(u)],
  restart: (u: string): Argv => ['systemctl', 'restart', unit(u)],
  /** Picks up a new Caddyfile without dropping connections (Caddy's admin socket). */
  reloadOrRestart: (u: string): Argv => ['systemctl', 'reload-or-restart', unit(u)],
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
