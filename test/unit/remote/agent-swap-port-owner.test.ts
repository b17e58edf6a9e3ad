import {
  cgroupIsUnit,
  parseListenerPids,
  parsePortHolders,
  swapCommands,
} from '../../../orchestrator/remote/swap-commands';
import { Secret } from '../../../orchestrator/secret';
import { swapAgentEnvironment } from '../../../orchestrator/steps/agent-swap';
import { ACTIVE_SLOT_PATH, slotEnvFilePath } from '../../../templates/agent-slots';
import { BLUE_PORT, GREEN_PORT, cgroupOf, makeSwapHost, type SwapHost } from '../../support/fake-swap-host';

/**
 * Review finding 6: the serving agent can hold the idle slot's port. Both slots run as one dynamic
 * user, so blue's process can bind 127.0.0.1:<green port> before a swap; green then fails with
 * EADDRINUSE and a health probe on that port reaches blue's impostor. A 200 counts only when every
 * socket listening on the port belongs to the new slot's unit (ss -p → pid → /proc/<pid>/cgroup).
 */
const host = makeSwapHost;
const swap = (h: SwapHost) =>
  swapAgentEnvironment(
    h.shell,
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
    // The owner check ran on green's port (the host helper reads the holders' cgroups there).
    expect(h.fake.calls.map((c) => c.join(' '))).toEqual(
      expect.arrayContaining([
        swapCommands.portHolders(GREEN_PORT).join(' '),
        `ss -H -l -t -n -p ( sport = :${GREEN_PORT} )`,
      ]),
    );
  });

  it("blue's agent holding green's port: healthy false, traffic stays on blue, nothing of green left", async () => {
    const h = host();
    const bluePid = h.listeners.get(BLUE_PORT)?.[0]?.pid ?? 0;
    // The impostor: a process in blue's cgroup (any user may bind a free loopback port) listening on green's port.
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
    expect(sent).not.toContain('systemctl enable --no-reload cortex-agent@green.service');
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
    expect(swapCommands.portHolders(18791).slice(0, 3)).toEqual(['python3', '-I', '-c']);
    expect(swapCommands.portHolders(18791).slice(4)).toEqual(['port-holders', '18791']);
    for (const bad of [0, 70000, 1.5, Number.NaN])
      expect(() => swapCommands.portHolders(bad)).toThrow(/port/);
    const held = parsePortHolders(
      JSON.stringify({
        ss: 'LISTEN 0 5 127.0.0.1:18791 0.0.0.0:* users:(("python3",pid=812,fd=3))\n',
        cgroups: { '812': cgroupOf('cortex-agent@green.service'), x: 'ignored' },
      }),
    );
    expect(held?.sockets).toEqual([[812]]);
    expect([...(held?.cgroups ?? new Map<number, string>())]).toEqual([
      [812, cgroupOf('cortex-agent@green.service')],
    ]);
    for (const bad of ['', 'not json', '{"ss":1,"cgroups":{}}', '{"ss":"","cgroups":null}'])
      expect(parsePortHolders(bad)).toBeUndefined();
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
