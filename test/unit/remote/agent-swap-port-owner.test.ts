import type { ExecResult } from '../../../orchestrator/remote/ssh-shell';
import { cgroupIsUnit, parseListenerPids, swapCommands } from '../../../orchestrator/remote/swap-commands';
import { Secret } from '../../../orchestrator/secret';
import { swapAgentEnvironment } from '../../../orchestrator/steps/agent-swap';
import { ACTIVE_SLOT_PATH, slotEnvFilePath } from '../../../templates/agent-slots';
import { makeFakeShell } from '../../support/fake-shell';

/**
 * Review finding 6: the serving agent can hold the idle slot's port. Both slots run as one dynamic
 * user, so blue's process can bind 127.0.0.1:<green port> before a swap; green then fails with
 * EADDRINUSE and a health probe on that port reaches blue's impostor. A 200 counts only when every
 * socket listening on the port belongs to the new slot's unit (ss -p → pid → /proc/<pid>/cgroup).
 */
const BLUE_PORT = 18790;
const GREEN_PORT = 18791;
const SITE = 'a.agents.example.com';
const cgroupOf = (unit: string): string => `0::/system.slice/system-cortex\\x2dagent.slice/${unit}\n`;
const ok = (s = ''): ExecResult => ({ code: 0, stdout: Buffer.from(s), stderr: Buffer.alloc(0) });
const no = (code = 1): ExecResult => ({ code, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) });

/** A host serving slot blue, modelled far enough for a whole blue/green swap over the fake shell. */
const host = (o: { reusePort?: boolean } = {}) => {
  const fake = makeFakeShell();
  const { files, dirs } = fake;
  dirs.set('/etc/cortex', { mode: 0o700, uid: 0, gid: 0 });
  files.set(ACTIVE_SLOT_PATH, { content: Buffer.from('blue\n'), mode: 0o600, uid: 0, gid: 0 });
  files.set(slotEnvFilePath('blue'), { content: Buffer.from('K=old\n'), mode: 0o600, uid: 0, gid: 0 });
  /** port → the listening sockets' holders (pid, and the unit whose cgroup it is in). */
  const listeners = new Map<number, { pid: number; unit: string }[]>();
  const mainPids = new Map<string, number>();
  const active = new Set<string>();
  let route = BLUE_PORT;
  let nextPid = 1000;
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
    const port = unitPort(u);
    if (port === undefined) return;
    // EADDRINUSE: a port someone holds stays theirs (Restart=always keeps the unit "active").
    if (!o.reusePort && (listeners.get(port) ?? []).length > 0) {
      mainPids.set(u, nextPid++);
      return;
    }
    mainPids.set(u, listen(port, u));
  };
  const stopUnit = (u: string): void => {
    active.delete(u);
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
      stopUnit(u);
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
      if (prop === '--property=NRestarts') return ok('0\n');
      return ok(active.has(u) ? 'active\nrunning\nsuccess\n0\n' : 'inactive\ndead\nsuccess\n0\n');
    }
    return ok(); // enable, disable, reset-failed
  });
  fake.on('nft', () =>
    ok(
      `table ip cortex_upstream {\n\tchain output {\n\t\tip daddr 127.0.0.1 tcp dport 18789 redirect to :${route} comment "slot x"\n\t}\n}\n`,
    ),
  );
  // No process runs the requested environment yet: the swap starts over on the idle slot.
  fake.on('python3', () => no());
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
    return (listeners.get(port) ?? []).length > 0 ? ok('200') : no(7);
  });
  return { fake, listeners, listen, active, route: () => route };
};

const swap = (h: ReturnType<typeof host>) =>
  swapAgentEnvironment(
    h.fake.shell,
    { deploymentId: 'd', runtime: 'echo', env: new Map([['ANTHROPIC_API_KEY', new Secret('sk-new')]]) },
    { healthTimeoutMs: 2_000, drainSeconds: 1 },
  );

describe('blue/green swap: the new slot must own its port (finding 6)', () => {
  it('control: on an honest host the same fake swaps to green and stops blue', async () => {
    const h = host();
    const r = await swap(h);
    expect(r).toEqual({ mode: 'blue-green', healthy: true, slot: 'green' });
    expect(h.route()).toBe(GREEN_PORT);
    expect(h.active.has('cortex-agent@blue.service')).toBe(false);
    // The owner check ran on green's port and read the holder's cgroup.
    expect(h.fake.calls.map((c) => c.join(' '))).toEqual(
      expect.arrayContaining([
        swapCommands.listenersOn(GREEN_PORT).join(' '),
        expect.stringMatching(/^cat -- \/proc\/\d+\/cgroup$/) as unknown as string,
      ]),
    );
  });

  it("blue's agent holding green's port: healthy false, traffic stays on blue, nothing of green left", async () => {
    const h = host();
    const bluePid = h.listeners.get(BLUE_PORT)?.[0]?.pid ?? 0;
    // The impostor: a process in blue's cgroup (same dynamic user) listening on green's port.
    h.listen(GREEN_PORT, 'cortex-agent@blue.service', bluePid);
    const r = await swap(h);
    expect(r).toMatchObject({
      mode: 'blue-green',
      healthy: false,
      code: 'port_held_by_foreign_process',
      slot: 'blue',
      reason: expect.stringContaining(`port ${GREEN_PORT}`) as unknown,
    });
    expect(h.route()).toBe(BLUE_PORT);
    expect(h.fake.files.get(ACTIVE_SLOT_PATH)?.content.toString()).toBe('blue\n');
    expect(h.active.has('cortex-agent@blue.service')).toBe(true);
    expect(h.active.has('cortex-agent@green.service')).toBe(false);
    expect(h.fake.files.has(slotEnvFilePath('green'))).toBe(false);
    const sent = h.fake.calls.map((c) => c.join(' '));
    expect(sent).not.toContain('systemctl enable cortex-agent@green.service');
    expect(sent).not.toContain('systemctl restart cortex-upstream.service');
  });

  it.each([
    ['a process of another unit sharing the port with green (SO_REUSEPORT, same user)', 4242],
    ['a socket ss names no holder for', 0],
  ])('%s: refused too', async (_, pid) => {
    const h = host({ reusePort: true });
    h.listen(GREEN_PORT, 'session-3.scope', pid);
    const r = await swap(h);
    expect(r).toMatchObject({ healthy: false, code: 'port_held_by_foreign_process', slot: 'blue' });
    expect(h.route()).toBe(BLUE_PORT);
  });
});

describe('listener and cgroup parsing', () => {
  it('reads the holders of each listening socket', () => {
    expect(
      parseListenerPids(
        [
          'LISTEN 0 5 127.0.0.1:18791 0.0.0.0:* users:(("python3",pid=812,fd=3))',
          'LISTEN 0 5 [::1]:18791 [::]:* users:(("a",pid=9,fd=4),("b",pid=10,fd=4))',
          'LISTEN 0 5 127.0.0.1:18791 0.0.0.0:*',
          '',
        ].join('\n'),
      ),
    ).toEqual([[812], [9, 10], []]);
    expect(parseListenerPids('')).toEqual([]);
    expect(swapCommands.listenersOn(18791)).toEqual([
      'ss',
      '-H',
      '-l',
      '-t',
      '-n',
      '-p',
      '( sport = :18791 )',
    ]);
    expect(() => swapCommands.listenersOn(70000)).toThrow(/port/);
    expect(swapCommands.processCgroup(812)).toEqual(['cat', '--', '/proc/812/cgroup']);
    for (const bad of [0, 1, 1.5, -3, Number.NaN])
      expect(() => swapCommands.processCgroup(bad)).toThrow(/pid/);
  });

  it('a process is in a unit only when the systemd hierarchy path ends in that unit', () => {
    const green = 'cortex-agent@green.service';
    expect(cgroupIsUnit(cgroupOf(green), green)).toBe(true);
    expect(cgroupIsUnit('1:name=systemd:/system.slice/cortex-agent@green.service\n0::/\n', green)).toBe(true);
    expect(cgroupIsUnit(cgroupOf('cortex-agent@blue.service'), green)).toBe(false);
    expect(cgroupIsUnit('0::/system.slice/cortex-agent@green.service/sub\n', green)).toBe(false);
    expect(cgroupIsUnit('0::/system.slice/xcortex-agent@green.service\n', green)).toBe(false);
    expect(cgroupIsUnit('4:memory:/system.slice/cortex-agent@green.service\n0::/\n', green)).toBe(false);
    expect(cgroupIsUnit('', green)).toBe(false);
  });
});
