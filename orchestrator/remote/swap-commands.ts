import { invalidInput } from '../errors';
import { ACTIVE_SLOT_PATH, ENV_DIR, UPSTREAM_NFT_TABLE, isAgentSlot } from '../../templates/agent-slots';
import { caddyLocalRootCaPath } from '../../templates/caddyfile';
import type { Argv } from './agent-commands';

/**
 * Remote commands of the agent swap (orchestrator/steps/agent-swap.ts), as data like
 * agent-commands.ts. None of them can read an env file back: the previous env file is kept by a
 * hard link and restored by a rename on the host, never fetched; the one reader (`activeSlot`)
 * has a fixed path and no argument; the HTTP probes print a status code and discard the body.
 */
const UNIT = /^cortex-agent@(blue|green)\.service$|^cortex-upstream\.service$/;
const ENV_FILE_NAME = /^agent-(blue|green)\.env(\.previous)?$/;
const HOST = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/;
const HTTP_PATH = /^\/[A-Za-z0-9._~/-]{0,200}$/;
/** The only certificate a probe may name: Caddy's local CA root (templates/caddyfile.ts). */
const LOCAL_CA = caddyLocalRootCaPath();

const unit = (u: string): string => {
  if (!UNIT.test(u)) throw invalidInput('unit', 'must be an agent slot unit or cortex-upstream.service');
  return u;
};
/** `/etc/cortex/agent-<slot>.env[.previous]` only. */
const envFile = (p: string): string => {
  const name = p.startsWith(`${ENV_DIR}/`) ? p.slice(ENV_DIR.length + 1) : '';
  if (!ENV_FILE_NAME.test(name)) throw invalidInput('path', 'must be a slot env file in /etc/cortex');
  return p;
};
const port = (p: number): string => {
  if (!Number.isInteger(p) || p < 1 || p > 65535) throw invalidInput('port', 'must be a port number 1-65535');
  return String(p);
};
const httpPath = (p: string): string => {
  if (!HTTP_PATH.test(p)) throw invalidInput('path', 'must be a plain absolute URL path');
  return p;
};

export const swapCommands = {
  start: (u: string): Argv => ['systemctl', 'start', unit(u)],
  stop: (u: string): Argv => ['systemctl', 'stop', unit(u)],
  disable: (u: string): Argv => ['systemctl', 'disable', unit(u)],
  /** The live redirect of the service port (`… redirect to :<slot port> comment "slot <slot>"`). */
  upstreamRoute: (): Argv => ['nft', 'list', 'table', 'ip', UPSTREAM_NFT_TABLE],
  /** How often systemd restarted the unit's process since it was last started (a crash loop shows here). */
  restarts: (u: string): Argv => ['systemctl', 'show', '--property=NRestarts', '--value', unit(u)],
  /** The active-slot record: one word (`blue`/`green`), or nothing when there is none. */
  activeSlot: (): Argv => ['cat', '--', ACTIVE_SLOT_PATH],
  /** Keep the current env file under a second name (a hard link: no copy of its content is made). */
  linkEnvFile: (from: string, to: string): Argv => ['ln', '-f', '--', envFile(from), envFile(to)],
  /** Rename one env file over another (atomic, same directory). */
  moveEnvFile: (from: string, to: string): Argv => ['mv', '-f', '--', envFile(from), envFile(to)],
  /** TCP connections established to a local port, one per line (requests in flight to an instance). */
  establishedTo: (agentPort: number): Argv => [
    'ss',
    '-H',
    '-t',
    '-n',
    'state',
    'established',
    `( sport = :${port(agentPort)} )`,
  ],
  /**
   * The TCP sockets listening on a local port, any address, with the processes holding them
   * (`users:(("python3",pid=812,fd=3))`): who answers on a slot's port.
   */
  listenersOn: (agentPort: number): Argv => [
    'ss',
    '-H',
    '-l',
    '-t',
    '-n',
    '-p',
    `( sport = :${port(agentPort)} )`,
  ],
  /** A process's cgroup membership (`0::/system.slice/…/cortex-agent@green.service`): which unit runs it. */
  processCgroup: (pid: number): Argv => {
    if (!Number.isInteger(pid) || pid < 2) throw invalidInput('pid', 'must be a process id');
    return ['cat', '--', `/proc/${pid}/cgroup`];
  },
  /**
   * GET https://<site>:<port><path> through Caddy on this host (the name resolved to 127.0.0.1),
   * the certificate verified against Caddy's local CA root (`localCa`) or the system's store.
   * Prints the HTTP status only; the body is discarded.
   */
  httpsProbeThroughCaddy: (o: {
    siteName: string;
    httpsPort: number;
    path: string;
    localCa: boolean;
  }): Argv => {
    if (!HOST.test(o.siteName)) throw invalidInput('siteName', 'must be a DNS name');
    const p = port(o.httpsPort);
    return [
      'curl',
      '--silent',
      '--max-time',
      '5',
      '--output',
      '/dev/null',
      '--write-out',
      '%{http_code}',
      '--resolve',
      `${o.siteName}:${p}:127.0.0.1`,
      ...(o.localCa ? ['--cacert', LOCAL_CA] : []),
      `https://${o.siteName}:${p}${httpPath(o.path)}`,
    ];
  },
  /** GET http://127.0.0.1:<port><path> on the host, straight to one agent instance (not through Caddy). */
  httpProbeLoopback: (agentPort: number, path: string): Argv => [
    'curl',
    '--silent',
    '--max-time',
    '3',
    '--output',
    '/dev/null',
    '--write-out',
    '%{http_code}',
    `http://127.0.0.1:${port(agentPort)}${httpPath(path)}`,
  ],
} as const;

export const parseActiveSlot = (stdout: string): 'blue' | 'green' | undefined => {
  const s = stdout.trim();
  return isAgentSlot(s) ? s : undefined;
};

/** The slot port the live nft redirect sends the service port to, if there is one. */
export const parseUpstreamRoute = (stdout: string, servicePort: number): number | undefined => {
  const m = new RegExp(`tcp dport ${servicePort} redirect to :(\\d{1,5})`).exec(stdout);
  return m?.[1] ? Number(m[1]) : undefined;
};

/**
 * The listening sockets of `ss -H -l -t -n -p` output, each with the process ids holding it (an
 * empty list when ss names none: a socket whose holder cannot be told, e.g. a closed process's).
 */
export const parseListenerPids = (stdout: string): number[][] =>
  stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => [...l.matchAll(/\bpid=(\d{1,10})\b/g)].map((m) => Number(m[1])));

/**
 * Is the process (its `/proc/<pid>/cgroup`) in `unit`'s cgroup? The systemd hierarchy's line
 * (`0::` on cgroup v2, `name=systemd` on v1) must end in `/<unit>`; a process of another unit, of a
 * user session or of a sub-cgroup is not.
 */
export const cgroupIsUnit = (cgroupFile: string, unit: string): boolean =>
  cgroupFile
    .split('\n')
    .map((l) => /^\d+:(?:name=systemd)?:(\/.*)$/.exec(l.trim())?.[1])
    .some((path) => path !== undefined && path.endsWith(`/${unit}`));
