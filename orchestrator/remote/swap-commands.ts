import { invalidInput } from '../errors';
import {
  ACTIVE_SLOT_PATH,
  ENV_DIR,
  UPSTREAM_NFT_TABLE,
  isAgentSlot,
  type AgentSlot,
} from '../../templates/agent-slots';
import { caddyLocalRootCaPath } from '../../templates/caddyfile';
import type { Argv } from './agent-commands';
import type { ExecResult } from './ssh-shell';
import { SWAP_HOST_SCRIPT } from './swap-host-script';

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
/** What identifies a unit's running instance: `<NRestarts>:<ExecMainStartTimestampMonotonic>`. */
const BASELINE = /^\d{1,10}:\d{0,20}$/;
const slotUnit = (u: string): string => {
  if (!/^cortex-agent@(blue|green)\.service$/.test(u))
    throw invalidInput('unit', 'must be an agent slot unit');
  return u;
};

/** `python3 -I -c <swap-host-script.ts> <mode> …`: the host helper, in one of its modes. */
const HELPER: Argv = ['python3', '-I', '-c', SWAP_HOST_SCRIPT];
type HelperMode =
  'batch' | 'session' | 'digests' | 'wait-healthy' | 'port-holders' | 'soak' | 'write-record' | 'write-env';
const HELPER_MODES: readonly string[] = [
  'digests',
  'wait-healthy',
  'port-holders',
  'soak',
  'write-record',
  'write-env',
];
const helper = (mode: HelperMode, ...args: string[]): Argv => [...HELPER, mode, ...args];
const helperArgs = (argv: Argv): string[] | undefined =>
  argv.length > HELPER.length && HELPER.every((a, i) => argv[i] === a)
    ? argv.slice(HELPER.length)
    : undefined;

/**
 * One step of a batch (`swapCommands.batch`): a command as data, run on the host in order.
 */
export interface BatchStep {
  readonly argv: Argv;
  /** The batch's standard input is handed to this step (the digests' nonce). */
  readonly stdin?: boolean;
  /** The step is done only when it exits 0 and its standard output matches (a regex, searched). */
  readonly match?: string;
  /** Run again every `everyMs` until done or `forMs` have passed; the last answer is returned. */
  readonly poll?: { readonly everyMs: number; readonly forMs: number };
  /** Stop the batch after this step when it is not done. */
  readonly required?: boolean;
}

/**
 * The programs a batch may run: the swap's own commands. `cat` only for the active-slot record;
 * the helper only in its modes; no shell, no reader of a file the caller names.
 */
const BATCH_PROGRAMS = new Set(['systemctl', 'nft', 'ss', 'curl', 'rm', 'ls', 'ln', 'mv', 'stat']);
const checkStep = (s: BatchStep, i: number): object => {
  const field = `steps[${i}]`;
  const h = helperArgs(s.argv);
  if (h) {
    if (!HELPER_MODES.includes(h[0] ?? '')) throw invalidInput(field, 'names no helper mode');
  } else if (
    s.argv.join('\0') !== ['cat', '--', ACTIVE_SLOT_PATH].join('\0') &&
    !BATCH_PROGRAMS.has(s.argv[0] ?? '')
  )
    throw invalidInput(field, 'is not one of the swap commands');
  if (s.match !== undefined && (s.match.length > 200 || !/^[\w\s:^$\\.|()*+?-]*$/.test(s.match)))
    throw invalidInput(`${field}.match`, 'must be a short pattern');
  const ms = (n: number, max: number): number => {
    if (!Number.isInteger(n) || n < 0 || n > max) throw invalidInput(`${field}.poll`, `must be 0-${max} ms`);
    return n;
  };
  return {
    ...(h ? { helper: h } : { argv: [...s.argv] }),
    ...(s.stdin ? { stdin: true } : {}),
    ...(s.match !== undefined ? { match: s.match } : {}),
    ...(s.poll ? { poll: { everyMs: ms(s.poll.everyMs, 10_000), forMs: ms(s.poll.forMs, 3_600_000) } } : {}),
    ...(s.required ? { required: true } : {}),
  };
};

/** The program of a batch command (`swapCommands.batch`, validated there), or undefined for another. */
export const batchProgram = (argv: Argv): string | undefined => {
  const h = helperArgs(argv);
  return h?.[0] === 'batch' && h.length === 2 ? h[1] : undefined;
};

/**
 * A session's request line for a batch: its program and its standard input (base64). The caller
 * zeroes the buffer once it is written when the input is secret (an env file's content).
 */
export const sessionRequest = (program: string, stdin?: Buffer): Buffer =>
  Buffer.from(
    `{"program": ${JSON.stringify(program)}, "data": "${stdin ? stdin.toString('base64') : ''}"}\n`,
    'utf8',
  );

/** The line that ends a session's answer to one request. */
export const SESSION_END_LINE = '{"end": true}';

/** A batch's steps (each helper step back as its full argv), or undefined for another command. */
export const decodeBatch = (argv: Argv): BatchStep[] | undefined => {
  const program = batchProgram(argv);
  if (program === undefined) return undefined;
  const { steps } = JSON.parse(program) as {
    steps: (Omit<BatchStep, 'argv'> & { argv?: string[]; helper?: string[] })[];
  };
  return steps.map(({ argv: a, helper: hp, ...rest }) => ({
    ...rest,
    argv: hp ? [...HELPER, ...hp] : (a ?? []),
  }));
};

/** The answers of a batch, one per step that ran (fewer when a required step stopped it). */
export const parseBatchOutput = (stdout: string): ExecResult[] =>
  stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .flatMap((l) => {
      try {
        const v = JSON.parse(l) as { code?: unknown; out?: unknown; err?: unknown };
        if (typeof v.code !== 'number' || typeof v.out !== 'string' || typeof v.err !== 'string') return [];
        return [{ code: v.code, stdout: Buffer.from(v.out, 'base64'), stderr: Buffer.from(v.err, 'base64') }];
      } catch {
        return [];
      }
    });

export const swapCommands = {
  /**
   * Several of these commands in ONE remote command (one SSH round trip): the host helper runs
   * them in order, polls where asked, stops at a required step that is not done, and prints each
   * answer (exit code, output) as it comes. Standard input, if any, goes to the steps marked
   * `stdin` only. Only the swap's own programs are accepted.
   */
  batch: (steps: readonly BatchStep[]): Argv => {
    if (steps.length === 0 || steps.length > 64) throw invalidInput('steps', 'must be 1-64 steps');
    return helper('batch', JSON.stringify({ steps: steps.map(checkStep) }));
  },
  /**
   * The helper kept running for a whole swap: batches are sent to it as request lines
   * (`sessionRequest`), so a swap starts one python3 on the host instead of one per phase.
   */
  session: (): Argv => helper('session'),
  /**
   * For each variable of the unit's running process: its name and HMAC-SHA256(nonce, value), the
   * nonce (hex) read from standard input (see agentCommands.environDigests). Exit 3: no process.
   */
  unitDigests: (u: string): Argv => helper('digests', slotUnit(u)),
  /**
   * Poll http://127.0.0.1:<port><path> from the host (every 100 ms, after 2 s every 250 ms) until
   * 200 (exit 0, `healthy <baseline>`: the instance that answered, see parseHealthyBaseline), the unit crash-looping (exit 1, `crashloop <restarts> <state>`) or `timeoutMs`
   * (exit 2, `timeout <state>`).
   */
  waitHealthyLoopback: (u: string, agentPort: number, path: string, timeoutMs: number): Argv => {
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 3_600_000)
      throw invalidInput('timeoutMs', 'must be 0-3600000');
    return helper('wait-healthy', slotUnit(u), port(agentPort), httpPath(path), String(timeoutMs));
  },
  /**
   * The TCP sockets listening on a local port, any address, with the processes holding them, and
   * each holder's `/proc/<pid>/cgroup` (JSON `{ss, cgroups}`): who answers on a slot's port.
   */
  portHolders: (agentPort: number): Argv => helper('port-holders', port(agentPort)),
  /**
   * After traffic moved to `u` (on `agentPort`): poll its health there every 250 ms for at least
   * `soakMs`, and until no TCP connection is left to the old instance's port (`oldPort`; 0: none)
   * or `drainMs` have passed. Exit 1, `unhealthy probes|restarts|state <n> <state>`: 3 failed
   * probes in a row, a restart of the unit since `baseline` (`parseHealthyBaseline` of the health
   * wait's answer: the instance judged healthy; none: the soak's own start, a re-run's only choice),
   * or the unit not active/running at the end (the old instance still runs: route back to it).
   * Exit 0: `drained`, `drain-timeout <left>` or `soaked`.
   */
  soak: (
    u: string,
    agentPort: number,
    path: string,
    soakMs: number,
    oldPort: number,
    drainMs: number,
    baseline?: string,
  ): Argv => {
    if (!Number.isInteger(soakMs) || soakMs < 0 || soakMs > 600_000)
      throw invalidInput('soakMs', 'must be 0-600000');
    if (!Number.isInteger(drainMs) || drainMs < 0 || drainMs > 3_600_000)
      throw invalidInput('drainMs', 'must be 0-3600000');
    if (oldPort !== 0 && port(oldPort) === port(agentPort))
      throw invalidInput('oldPort', "must not be the new instance's port");
    if (baseline !== undefined && !BASELINE.test(baseline))
      throw invalidInput('baseline', 'must be <restarts>:<main start> as the health wait printed it');
    return helper(
      'soak',
      slotUnit(u),
      port(agentPort),
      httpPath(path),
      String(soakMs),
      oldPort === 0 ? '0' : port(oldPort),
      String(drainMs),
      ...(baseline === undefined ? [] : [baseline]),
    );
  },
  /** The active-slot record, written atomically on the host (root:root 0600 in a 0700 directory). */
  writeActiveSlot: (slot: AgentSlot): Argv => {
    if (!isAgentSlot(slot)) throw invalidInput('slot', 'must be blue or green');
    return helper('write-record', slot);
  },
  /**
   * The slot's env file, written atomically on the host like `writeActiveSlot`, its content read
   * from standard input (in a batch: mark the step `stdin`; the value is on no command line).
   */
  writeEnvFile: (slot: AgentSlot): Argv => {
    if (!isAgentSlot(slot)) throw invalidInput('slot', 'must be blue or green');
    return helper('write-env', slot);
  },
  start: (u: string): Argv => ['systemctl', 'start', unit(u)],
  stop: (u: string): Argv => ['systemctl', 'stop', unit(u)],
  /**
   * Boot enablement without a reload of the service manager (750 ms each on a loaded host, twice
   * per swap): enablement is the `[Install]` symlinks, read at boot and by `is-enabled` from disk;
   * the running manager needs no reload to start, stop or route the slots.
   */
  enable: (u: string): Argv => ['systemctl', 'enable', '--no-reload', unit(u)],
  disable: (u: string): Argv => ['systemctl', 'disable', '--no-reload', unit(u)],
  /** The live redirect of the service port (`… redirect to :<slot port> comment "slot <slot>"`). */
  upstreamRoute: (): Argv => ['nft', 'list', 'table', 'ip', UPSTREAM_NFT_TABLE],
  /** How often systemd restarted the unit's process since it was last started (a crash loop shows here). */
  restarts: (u: string): Argv => ['systemctl', 'show', '--property=NRestarts', '--value', unit(u)],
  /** The active-slot record: one word (`blue`/`green`), or nothing when there is none. */
  activeSlot: (): Argv => ['cat', '--', ACTIVE_SLOT_PATH],
  /** Keep the current env file under a second name (a hard link: no copy of its content is made). */
  linkEnvFile: (from: string, to: string): Argv => ['ln', '-f', '--', envFile(from), envFile(to)],
  /** Remove slot env files (and kept previous ones) in one command; a missing one is no error. */
  removeEnvFiles: (...paths: string[]): Argv => {
    if (paths.length === 0) throw invalidInput('path', 'must name a slot env file');
    return ['rm', '-f', '--', ...paths.map(envFile)];
  },
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

/**
 * The instance a health wait (`waitHealthyLoopback`) judged healthy, as it printed it
 * (`healthy <NRestarts>:<ExecMainStartTimestampMonotonic>`): the soak's baseline. Undefined when
 * the answer names none (then the soak takes its own start as the baseline).
 */
export const parseHealthyBaseline = (r: ExecResult): string | undefined => {
  if (r.code !== 0) return undefined;
  const [word, baseline = ''] = r.stdout.toString('utf8').trim().split(' ');
  return word === 'healthy' && BASELINE.test(baseline) ? baseline : undefined;
};

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

/**
 * The listening sockets on a port and the cgroup of each holder (`portHolders`' JSON), or undefined
 * when the answer is not that.
 */
export const parsePortHolders = (
  stdout: string,
): { sockets: number[][]; cgroups: ReadonlyMap<number, string> } | undefined => {
  try {
    const v = JSON.parse(stdout) as { ss?: unknown; cgroups?: unknown };
    if (typeof v.ss !== 'string' || typeof v.cgroups !== 'object' || v.cgroups === null) return undefined;
    const cgroups = new Map<number, string>();
    for (const [pid, c] of Object.entries(v.cgroups as Record<string, unknown>))
      if (/^\d{1,10}$/.test(pid) && typeof c === 'string') cgroups.set(Number(pid), c);
    return { sockets: parseListenerPids(v.ss), cgroups };
  } catch {
    return undefined;
  }
};
