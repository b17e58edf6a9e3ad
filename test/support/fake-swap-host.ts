import { createHmac } from 'node:crypto';
import type { ExecResult, LineSession } from '../../orchestrator/remote/ssh-shell';
import { SESSION_END_LINE, decodeBatch, swapCommands } from '../../orchestrator/remote/swap-commands';
import { Secret } from '../../orchestrator/secret';
import { swapAgentEnvironment, type AgentSwapOptions } from '../../orchestrator/steps/agent-swap';
import { ACTIVE_SLOT_PATH, slotEnvFilePath } from '../../templates/agent-slots';
import { makeFakeShell } from './fake-shell';

/**
 * A host serving the echo agent on slot blue, modelled far enough for a whole blue/green swap over
 * the fake shell: units with main pids, sockets listening per port with their holders' cgroups,
 * the nft route the upstream unit applies from the record, Caddy's admin config, health probes
 * that reach whoever listens, and the swap's host helper (swapCommands.batch and its modes): a
 * batch runs its steps through the fake shell one by one (each lands in `fake.calls`), while the
 * round trips a swap costs are the commands sent to the shell itself (`sent`).
 */
export const BLUE_PORT = 18790;
export const GREEN_PORT = 18791;
export const SITE = 'a.agents.example.com';
export const cgroupOf = (unit: string): string => `0::/system.slice/system-cortex\\x2dagent.slice/${unit}\n`;
const ok = (s = ''): ExecResult => ({ code: 0, stdout: Buffer.from(s), stderr: Buffer.alloc(0) });
const no = (code = 1, s = ''): ExecResult => ({ code, stdout: Buffer.from(s), stderr: Buffer.alloc(0) });

export const makeSwapHost = (
  o: {
    reusePort?: boolean;
    /** A unit that starts but never listens (its health check times out). */
    deaf?: string;
    /** A unit that answers its first health checks, then stops answering (its soak fails). */
    fallsOver?: string;
    /**
     * A unit that crashes right after its health wait passed and is restarted by systemd
     * (Restart=always) before its soak starts: NRestarts and its main process's start change.
     */
    restartsAfterHealthy?: string;
    /** While this says so, HTTPS through Caddy answers 502 (Caddy up, its upstream not answering). */
    caddyFails?: () => boolean;
    /** `systemctl stop` of this unit fails and leaves it running (a stop job that failed). */
    stopFails?: string;
    /** The shell can hold the helper's session (`openLines`), as the SSH adapter can. */
    session?: boolean;
    /** The session's helper is gone after this many requests (later ones end with no answer). */
    sessionDiesAfter?: number;
  } = {},
) => {
  const fake = makeFakeShell();
  const { files, dirs } = fake;
  dirs.set('/etc/cortex', { mode: 0o700, uid: 0, gid: 0 });
  files.set(ACTIVE_SLOT_PATH, { content: Buffer.from('blue\n'), mode: 0o600, uid: 0, gid: 0 });
  files.set(slotEnvFilePath('blue'), { content: Buffer.from('K=old\n'), mode: 0o600, uid: 0, gid: 0 });
  /** port → the listening sockets' holders (pid, and the unit whose cgroup it is in). */
  const listeners = new Map<number, { pid: number; unit: string }[]>();
  const mainPids = new Map<string, number>();
  /** The environment each running unit was started with (read from its slot's env file). */
  const unitEnv = new Map<string, Map<string, string>>();
  const active = new Set<string>();
  /** What identifies a unit's running instance: its restarts and its main process's start. */
  const restarts = new Map<string, number>();
  const mainStart = new Map<string, number>();
  let clock = 1_000_000;
  const instance = (u: string): string => `${restarts.get(u) ?? 0}:${mainStart.get(u) ?? 0}`;
  /**
   * What the helper's health wait judged healthy, per unit (/run/cortex-swap.healthy-<slot> on a
   * host): forgotten by a helper-run systemctl that may start the unit again, and once a soak of it
   * has answered; a soak given no baseline compares with it (review R19 finding 4, R28).
   */
  const remembered = new Map<string, string>();
  /** As the helper's may_start: a verb that may start the unit again (enable/disable with --now). */
  const mayStart = (argv: readonly string[]): boolean =>
    !READ_ONLY_VERBS.has(argv[1] ?? '') &&
    !(['enable', 'disable', 'reenable'].includes(argv[1] ?? '') && !argv.slice(2).includes('--now'));
  const READ_ONLY_VERBS = new Set([
    'show',
    'status',
    'is-active',
    'is-failed',
    'is-enabled',
    'cat',
    'list-units',
  ]);
  let route = BLUE_PORT;
  let nextPid = 1000;
  /** What the outer shell was sent: one entry per SSH round trip (`write <path>` for an SFTP write). */
  const sent: string[][] = [];
  const setProc = (pid: number, unit: string): void =>
    void files.set(`/proc/${pid}/cgroup`, {
      content: Buffer.from(cgroupOf(unit)),
      mode: 0o444,
      uid: 0,
      gid: 0,
    });
  const listen = (port: number, unit: string, pid = nextPid++): number => {
    if (pid > 0) setProc(pid, unit);
    listeners.set(port, [...(listeners.get(port) ?? []), { pid, unit }]);
    return pid;
  };
  const unitPort = (u: string): number | undefined =>
    u === 'cortex-agent@blue.service'
      ? BLUE_PORT
      : u === 'cortex-agent@green.service'
        ? GREEN_PORT
        : undefined;
  const startUnit = (u: string): void => {
    active.add(u);
    restarts.set(u, 0);
    mainStart.set(u, (clock += 1_000));
    const port = unitPort(u);
    if (port === undefined) return;
    const file = files.get(slotEnvFilePath(u.includes('@green') ? 'green' : 'blue'));
    unitEnv.set(
      u,
      new Map(
        (file?.content.toString() ?? '')
          .split('\n')
          .flatMap((l) =>
            [...l.matchAll(/^([A-Z_][A-Z0-9_]*)="?([^"]*)"?$/g)].map((m) => [m[1], m[2]] as [string, string]),
          ),
      ),
    );
    // EADDRINUSE: a port someone holds stays theirs (Restart=always keeps the unit "active").
    if (u === o.deaf || (!o.reusePort && (listeners.get(port) ?? []).length > 0)) {
      mainPids.set(u, nextPid++);
      return;
    }
    mainPids.set(u, listen(port, u));
  };
  const stopUnit = (u: string): void => {
    active.delete(u);
    unitEnv.delete(u);
    mainPids.delete(u);
    for (const [p, ls] of listeners)
      listeners.set(
        p,
        ls.filter((l) => l.unit !== u),
      );
  };
  startUnit('cortex-agent@blue.service');
  active.add('cortex-upstream.service');

  fake.on('systemctl', (argv) => {
    const words = argv.slice(1).filter((a) => !a.startsWith('--'));
    const [verb] = words;
    const u = words[words.length - 1] ?? '';
    if (verb === 'is-active') return active.has(u) ? ok() : no(3);
    if (verb === 'start') {
      startUnit(u);
      return ok();
    }
    if (verb === 'stop') {
      if (u === o.stopFails) return no(1);
      stopUnit(u);
      return ok();
    }
    if (verb === 'restart' && u !== 'cortex-upstream.service') {
      stopUnit(u);
      startUnit(u);
      return ok();
    }
    if (verb === 'restart' && u === 'cortex-upstream.service') {
      const slot = fake.files.get(ACTIVE_SLOT_PATH)?.content.toString().trim();
      route = slot === 'green' ? GREEN_PORT : BLUE_PORT;
      return ok();
    }
    if (verb === 'show') {
      const prop = argv.find((a) => a.startsWith('--property=')) ?? '';
      if (prop === '--property=MainPID') return ok(`${mainPids.get(u) ?? 0}\n`);
      if (prop === '--property=NRestarts') return ok(`${restarts.get(u) ?? 0}\n`);
      return ok(active.has(u) ? 'active\nrunning\nsuccess\n0\n' : 'inactive\ndead\nsuccess\n0\n');
    }
    return ok(); // enable, disable, reset-failed
  });
  // ln -f -- <from> <to>: a second name for the same file (the held restart keeps the previous one)
  fake.on('ln', (argv) => {
    const [from = '', to = ''] = argv.slice(-2);
    const f = files.get(from);
    if (!f) return no(1);
    files.set(to, f);
    return ok();
  });
  fake.on('nft', () =>
    ok(
      `table ip cortex_upstream {\n\tchain output {\n\t\tip daddr 127.0.0.1 tcp dport 18789 redirect to :${route} comment "slot x"\n\t}\n}\n`,
    ),
  );
  fake.on('ss', (argv) => {
    const filter = argv[argv.length - 1] ?? '';
    const port = Number(/:(\d+)/.exec(filter)?.[1]);
    if (argv.includes('-l'))
      return ok(
        (listeners.get(port) ?? [])
          .map(
            (l) =>
              `LISTEN 0 5 127.0.0.1:${port} 0.0.0.0:*${l.pid > 0 ? ` users:(("python3",pid=${l.pid},fd=3))` : ''}\n`,
          )
          .join(''),
      );
    return ok(''); // no established connection: nothing to drain
  });
  fake.on('curl', (argv) => {
    if (argv.includes('--unix-socket'))
      return ok(
        JSON.stringify({
          apps: {
            http: {
              servers: {
                srv0: {
                  listen: [':443'],
                  routes: [
                    {
                      match: [{ host: [SITE] }],
                      handle: [{ handler: 'reverse_proxy', upstreams: [{ dial: '127.0.0.1:18789' }] }],
                    },
                  ],
                },
              },
            },
          },
        }),
      );
    const url = argv[argv.length - 1] ?? '';
    // Through Caddy: whatever listens where the route leads answers; straight: whatever listens there.
    const port = url.startsWith('https://') ? route : Number(/127\.0\.0\.1:(\d+)\//.exec(url)?.[1]);
    if (url.startsWith('https://') && o.caddyFails?.()) return ok('502');
    return (listeners.get(port) ?? []).length > 0 ? ok('200') : no(7);
  });

  /** The host helper's modes (orchestrator/remote/swap-host-script.ts), on this model. */
  const helper = async (argv: readonly string[], stdin: Buffer | undefined): Promise<ExecResult> => {
    const steps = decodeBatch(argv);
    if (steps) {
      const lines: string[] = [];
      for (const step of steps) {
        let r: ExecResult;
        let met: boolean;
        // A poll is tried a few times (the model answers at once; nothing changes between tries).
        if (step.argv[0] === 'systemctl' && mayStart(step.argv))
          for (const u of step.argv.slice(2)) remembered.delete(u);
        for (let attempt = 0; ; attempt++) {
          r = await fake.shell.exec(step.argv, step.stdin && stdin ? { stdin } : {});
          met =
            r.code === 0 && (step.match === undefined || new RegExp(step.match).test(r.stdout.toString()));
          if (met || !step.poll || attempt >= 2) break;
        }
        lines.push(
          `${JSON.stringify({ code: r.code, out: r.stdout.toString('base64'), err: r.stderr.toString('base64') })}\n`,
        );
        if (step.required && !met) break;
      }
      return ok(lines.join(''));
    }
    const [mode, ...args] = argv.slice(4);
    if (mode === 'digests') {
      const env = unitEnv.get(args[0] ?? '');
      if (!active.has(args[0] ?? '') || !env) return no(3);
      const key = Buffer.from((stdin?.toString() ?? '').trim(), 'hex');
      return ok(
        [...env].map(([n, v]) => `${n} ${createHmac('sha256', key).update(v).digest('hex')}\n`).join(''),
      );
    }
    if (mode === 'wait-healthy') {
      const [u = '', port = ''] = args;
      if ((listeners.get(Number(port)) ?? []).length === 0) return no(2, 'timeout active/running\n');
      const healthy = ok(`healthy ${instance(u)}\n`);
      remembered.set(u, instance(u));
      if (u === o.restartsAfterHealthy) {
        restarts.set(u, (restarts.get(u) ?? 0) + 1);
        mainStart.set(u, (clock += 1_000));
      }
      return healthy;
    }
    if (mode === 'soak') {
      // [unit, port, path, soakMs, oldPort, drainMs, baseline?]: healthy while something listens on
      // its port and the unit is not the one that falls over, and it is still the instance of its
      // baseline (none given: the one remembered, if any); the old port has nothing left to drain.
      // Once answered, the remembered answer is forgotten.
      const [u = '', p = '', , , oldPort = '0', , given] = args;
      const baseline = given ?? remembered.get(u);
      remembered.delete(u);
      if (u === o.fallsOver || !active.has(u) || (listeners.get(Number(p)) ?? []).length === 0)
        return no(1, 'unhealthy probes 3 active/running\n');
      if (baseline !== undefined && baseline !== instance(u))
        return no(1, 'unhealthy restarts 1 active/running\n');
      return ok(oldPort === '0' ? 'soaked\n' : 'drained\n');
    }
    if (mode === 'port-holders') {
      const port = Number(args[0]);
      const ss = (
        await fake.shell.exec(['ss', '-H', '-l', '-t', '-n', '-p', `( sport = :${port} )`])
      ).stdout.toString();
      const cgroups: Record<string, string> = {};
      for (const m of ss.matchAll(/\bpid=(\d+)\b/g))
        cgroups[m[1] as string] = files.get(`/proc/${m[1] as string}/cgroup`)?.content.toString() ?? '';
      return ok(JSON.stringify({ ss, cgroups }));
    }
    if (mode === 'write-env') {
      files.set(slotEnvFilePath(args[0] === 'green' ? 'green' : 'blue'), {
        content: Buffer.from(stdin ?? Buffer.alloc(0)),
        mode: 0o600,
        uid: 0,
        gid: 0,
      });
      return ok();
    }
    if (mode === 'write-record') {
      files.set(ACTIVE_SLOT_PATH, {
        content: Buffer.from(`${args[0] ?? ''}\n`),
        mode: 0o600,
        uid: 0,
        gid: 0,
      });
      return ok();
    }
    return no(127);
  };
  fake.on('python3', helper);

  /** The shell a swap is given: every command and write counted as it is sent (a round trip). */
  const shell = {
    exec: (argv: readonly string[], opts?: Parameters<typeof fake.shell.exec>[1]) => {
      const steps = decodeBatch(argv);
      sent.push(
        steps ? ['batch', ...steps.map((s) => s.argv.slice(0, 4).join(' ').slice(0, 60))] : [...argv],
      );
      return fake.shell.exec(argv, opts);
    },
    writeFileAtomic: (...a: Parameters<typeof fake.shell.writeFileAtomic>) => {
      sent.push(['write', a[0]]);
      return fake.shell.writeFileAtomic(...a);
    },
    close: () => fake.shell.close(),
  };
  /** Sessions opened and still open (`end` not yet sent). */
  let openSessions = 0;
  /**
   * The helper's session mode on this model: `session` when it is started (one python3), `ask`
   * for each request line (a round trip); each request runs as the batch it carries.
   */
  const openLines = (argv: readonly string[]): Promise<LineSession> => {
    if (argv.join('\0') !== swapCommands.session().join('\0'))
      return Promise.reject(new Error('not the session'));
    sent.push(['session']);
    openSessions++;
    let closed = false;
    let asked = 0;
    return Promise.resolve({
      ask: async (request: Buffer, last: (l: string) => boolean) => {
        if (o.sessionDiesAfter !== undefined && asked++ >= o.sessionDiesAfter) {
          sent.push(['ask (helper gone)']);
          if (!closed) openSessions--;
          closed = true;
        }
        if (closed) return { lines: [], ended: true, exit: { code: 137, stderrTail: '' } };
        const req = JSON.parse(request.toString('utf8')) as { program: string; data: string };
        const batchArgv = [...swapCommands.session().slice(0, -1), 'batch', req.program];
        const steps = decodeBatch(batchArgv) ?? [];
        sent.push(['ask', ...steps.map((st) => st.argv.slice(0, 4).join(' ').slice(0, 60))]);
        const data = Buffer.from(req.data, 'base64');
        const r = await fake.shell.exec(batchArgv, data.length > 0 ? { stdin: data } : {});
        const lines = [
          ...r.stdout
            .toString()
            .split('\n')
            .filter((l) => l !== ''),
          SESSION_END_LINE,
        ];
        expect(lines.filter(last)).toEqual([SESSION_END_LINE]);
        return { lines, ended: false };
      },
      close: () => {
        if (!closed) openSessions--;
        closed = true;
      },
    });
  };
  return {
    fake,
    shell: o.session ? { ...shell, openLines } : shell,
    sent,
    listeners,
    listen,
    active,
    route: () => route,
    /** A unit's running instance as `systemctl show` would tell it: `<NRestarts>:<main start>`. */
    instance,
    /** What the host remembers its health wait judged healthy, per unit (read only). */
    remembered: (): ReadonlyMap<string, string> => new Map(remembered),
    openSessions: () => openSessions,
  };
};

export type SwapHost = ReturnType<typeof makeSwapHost>;

/** One bound key: the environment a swap writes in these tests. */
export const keyEnv = (v: string): Map<string, Secret> => new Map([['ANTHROPIC_API_KEY', new Secret(v)]]);

/** Swap the fake host's echo agent onto `keyEnv(v)`, with the fake's short bounds (2 s health, 1 s drain). */
export const swapOn = (h: SwapHost, v: string, o: AgentSwapOptions = {}) =>
  swapAgentEnvironment(
    h.shell,
    { deploymentId: 'd', runtime: 'echo', env: keyEnv(v) },
    { healthTimeoutMs: 2_000, drainSeconds: 1, ...o },
  );
