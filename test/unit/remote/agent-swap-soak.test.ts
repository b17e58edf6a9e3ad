import { OrchestratorError } from '../../../orchestrator/errors';
import { decodeBatch } from '../../../orchestrator/remote/swap-commands';
import { Secret } from '../../../orchestrator/secret';
import {
  DEFAULT_SOAK_SECONDS,
  swapAgentEnvironment,
  type AgentSwapOptions,
} from '../../../orchestrator/steps/agent-swap';
import { ACTIVE_SLOT_PATH, slotEnvFilePath } from '../../../templates/agent-slots';
import { BLUE_PORT, GREEN_PORT, makeSwapHost, type SwapHost } from '../../support/fake-swap-host';

/**
 * Health after the switch (issue 11): a new instance that answers its first health checks and
 * then falls over must not be reported switched. It is watched for `soakSeconds` after traffic
 * moved to it (the helper's `soak` mode, on the host), while the old instance still runs
 * (blue/green) or its previous env file is still kept (held restart); failing meanwhile puts the
 * old environment back and the swap says `healthy: false`, so the rotation rolls back.
 */
const envOf = (v: string) => new Map([['ANTHROPIC_API_KEY', new Secret(v)]]);
const swap = (h: SwapHost, v: string, o: AgentSwapOptions = {}) =>
  swapAgentEnvironment(
    h.shell,
    { deploymentId: 'd', runtime: 'echo', env: envOf(v) },
    { healthTimeoutMs: 2_000, drainSeconds: 1, ...o },
  );
/** The helper's mode and arguments of every helper step run on the host (not the script itself). */
const helperCalls = (h: SwapHost, mode: string): string[][] =>
  h.fake.calls.filter((c) => c[0] === 'python3' && c[4] === mode).map((c) => c.slice(5));
const inner = (h: SwapHost): string[] =>
  h.fake.calls.map((c) => (c[0] === 'python3' ? ['python3', ...c.slice(4)] : c).join(' '));

describe('the soak after the switch', () => {
  it('blue/green: the new slot is watched on its own port while the old one drains, before the old one is disabled and stopped', async () => {
    const h = makeSwapHost();
    expect(await swap(h, 'sk-new', { soakSeconds: 7 })).toEqual({
      mode: 'blue-green',
      healthy: true,
      slot: 'green',
    });
    // unit, its port, the health path, the soak, the old slot's port to drain, the drain bound
    expect(helperCalls(h, 'soak')).toEqual([
      ['cortex-agent@green.service', String(GREEN_PORT), '/health', '7000', String(BLUE_PORT), '1000'],
    ]);
    const lines = inner(h);
    const soakAt = lines.findIndex((l) => l.startsWith('python3 soak '));
    const routedAt = lines.indexOf('systemctl restart cortex-upstream.service');
    const disableOld = lines.indexOf('systemctl disable --no-reload cortex-agent@blue.service');
    const stopOld = lines.indexOf('systemctl stop cortex-agent@blue.service');
    expect(routedAt).toBeGreaterThanOrEqual(0);
    expect(soakAt).toBeGreaterThan(routedAt);
    expect(disableOld).toBeGreaterThan(soakAt);
    expect(stopOld).toBeGreaterThan(soakAt);
    // the soak's own drain replaces the ss poll of the old port
    expect(lines.filter((l) => l.startsWith('ss -H -t -n state established'))).toEqual([]);
  });

  it(`defaults to ${DEFAULT_SOAK_SECONDS} s`, async () => {
    const h = makeSwapHost();
    await swap(h, 'sk-new');
    expect(helperCalls(h, 'soak')[0]?.[3]).toBe(String(DEFAULT_SOAK_SECONDS * 1000));
  });

  it('blue/green: a new slot that falls over after the switch is routed away from, back to the old one, which still runs the old environment; not healthy', async () => {
    const h = makeSwapHost({ fallsOver: 'cortex-agent@green.service' });
    const r = await swap(h, 'sk-new');
    expect(r).toMatchObject({ mode: 'blue-green', healthy: false, slot: 'blue' });
    expect(r.reason).toBe(
      'cortex-agent@green.service stopped answering its health check after the switch (3 failed probes in a row; active/running)',
    );
    // traffic is back on blue, the record says blue, blue still runs and keeps its file
    expect(h.route()).toBe(BLUE_PORT);
    expect(h.fake.files.get(ACTIVE_SLOT_PATH)?.content.toString()).toBe('blue\n');
    expect(h.active.has('cortex-agent@blue.service')).toBe(true);
    expect(h.fake.files.get(slotEnvFilePath('blue'))?.content.toString()).toBe('K=old\n');
    // the new slot is stopped and its env file (the new value) is gone
    expect(h.active.has('cortex-agent@green.service')).toBe(false);
    expect(h.fake.files.has(slotEnvFilePath('green'))).toBe(false);
    const lines = inner(h);
    // the old slot was never disabled nor stopped
    expect(lines).not.toContain('systemctl disable --no-reload cortex-agent@blue.service');
    expect(lines).not.toContain('systemctl stop cortex-agent@blue.service');
    expect(lines).toContain('systemctl disable --no-reload cortex-agent@green.service');
    // the route back was applied after the soak
    const soakAt = lines.findIndex((l) => l.startsWith('python3 soak '));
    expect(lines.lastIndexOf('systemctl restart cortex-upstream.service')).toBeGreaterThan(soakAt);
  });

  it('held restart: watched with no old port; one that falls over gets its previous env file back and is restarted on it', async () => {
    const ok = makeSwapHost();
    expect(await swap(ok, 'sk-held', { mode: 'held-restart', soakSeconds: 3 })).toEqual({
      mode: 'held-restart',
      healthy: true,
      slot: 'blue',
    });
    expect(helperCalls(ok, 'soak')).toEqual([
      ['cortex-agent@blue.service', String(BLUE_PORT), '/health', '3000', '0', '0'],
    ]);
    expect(ok.fake.files.has(`${slotEnvFilePath('blue')}.previous`)).toBe(false);

    const h = makeSwapHost({ fallsOver: 'cortex-agent@blue.service' });
    const r = await swap(h, 'sk-held', { mode: 'held-restart' });
    expect(r).toMatchObject({ mode: 'held-restart', healthy: false, slot: 'blue' });
    expect(r.reason).toMatch(
      /^cortex-agent@blue\.service stopped answering its health check after the switch/,
    );
    expect(h.fake.files.get(slotEnvFilePath('blue'))?.content.toString()).toBe('K=old\n');
    expect(h.fake.files.has(`${slotEnvFilePath('blue')}.previous`)).toBe(false);
    const lines = inner(h);
    const soakAt = lines.findIndex((l) => l.startsWith('python3 soak '));
    const moved = lines.findIndex(
      (l) => l === `mv -f -- ${slotEnvFilePath('blue')}.previous ${slotEnvFilePath('blue')}`,
    );
    expect(moved).toBeGreaterThan(soakAt);
    expect(lines.lastIndexOf('systemctl restart cortex-agent@blue.service')).toBeGreaterThan(moved);
  });

  it("the soak's batch is given time for the longer of the soak and the drain (a long drain does not time it out)", async () => {
    const h = makeSwapHost();
    const timeouts: number[] = [];
    const exec = h.shell.exec;
    h.shell.exec = (argv, opts) => {
      if (decodeBatch(argv)?.some((st) => st.argv[4] === 'soak')) timeouts.push(opts?.timeoutMs ?? 0);
      return exec(argv, opts);
    };
    await swap(h, 'sk-new', { drainSeconds: 600, soakSeconds: 5 });
    expect(timeouts).toHaveLength(1);
    expect(timeouts[0]).toBeGreaterThanOrEqual(600_000 + 3_000);
  });

  /** The swap's shell, cut (an SSH error) when it is sent the batch holding the soak step. */
  const cutAtSoak = (h: SwapHost) => {
    const exec = h.shell.exec;
    return {
      ...h.shell,
      exec: (argv: readonly string[], opts?: Parameters<typeof exec>[1]) =>
        decodeBatch(argv)?.some((st) => st.argv[4] === 'soak')
          ? Promise.reject(new OrchestratorError('ssh_connect_failed', 'cut'))
          : exec(argv, opts),
    };
  };
  const cutThenRerun = async (h: SwapHost, mode?: 'held-restart') => {
    const input = { deploymentId: 'd', runtime: 'echo' as const, env: envOf('sk-new') };
    const o = { healthTimeoutMs: 2_000, drainSeconds: 1, ...(mode ? { mode } : {}) };
    await expect(swapAgentEnvironment(cutAtSoak(h), input, o)).rejects.toThrow('cut');
    const before = helperCalls(h, 'soak').length;
    const r = await swapAgentEnvironment(h.shell, input, o);
    return { r, soaks: helperCalls(h, 'soak').length - before };
  };

  it('blue/green, a run cut before its soak: the re-run soaks the new slot, the old one still there to go back to', async () => {
    const h = makeSwapHost();
    const { r, soaks } = await cutThenRerun(h);
    expect(r).toEqual({ mode: 'blue-green', healthy: true, slot: 'green' });
    expect(soaks).toBe(1);
    expect(h.active.has('cortex-agent@blue.service')).toBe(false);
    expect(h.fake.files.has(slotEnvFilePath('blue'))).toBe(false);
  });

  it('blue/green, a run cut before its soak and the new slot falls over: the re-run routes back to the old one and discards the new one; not healthy', async () => {
    const h = makeSwapHost({ fallsOver: 'cortex-agent@green.service' });
    const { r, soaks } = await cutThenRerun(h);
    expect(soaks).toBe(1);
    expect(r).toMatchObject({ mode: 'blue-green', healthy: false, slot: 'blue' });
    expect(r.reason).toMatch(
      /^cortex-agent@green\.service stopped answering its health check after the switch/,
    );
    expect(h.route()).toBe(BLUE_PORT);
    expect(h.fake.files.get(ACTIVE_SLOT_PATH)?.content.toString()).toBe('blue\n');
    expect(h.active.has('cortex-agent@blue.service')).toBe(true);
    expect(h.fake.files.get(slotEnvFilePath('blue'))?.content.toString()).toBe('K=old\n');
    expect(h.active.has('cortex-agent@green.service')).toBe(false);
    expect(h.fake.files.has(slotEnvFilePath('green'))).toBe(false);
  });

  it('a re-run that finds the old slot stopped (the swap was done) soaks nothing: nothing to go back to', async () => {
    const h = makeSwapHost();
    await swap(h, 'sk-new');
    const before = helperCalls(h, 'soak').length;
    expect(await swap(h, 'sk-new')).toEqual({ mode: 'blue-green', healthy: true, slot: 'green' });
    expect(helperCalls(h, 'soak').length).toBe(before);
  });

  it('held restart, a run cut before its soak and the agent falls over: the re-run finds the previous file kept, soaks, and puts it back', async () => {
    const h = makeSwapHost({ fallsOver: 'cortex-agent@blue.service' });
    const { r, soaks } = await cutThenRerun(h, 'held-restart');
    expect(soaks).toBe(1);
    expect(r).toMatchObject({ mode: 'held-restart', healthy: false, slot: 'blue' });
    expect(h.fake.files.get(slotEnvFilePath('blue'))?.content.toString()).toBe('K=old\n');
    expect(h.fake.files.has(`${slotEnvFilePath('blue')}.previous`)).toBe(false);

    const ok = makeSwapHost();
    const again = await cutThenRerun(ok, 'held-restart');
    expect(again.soaks).toBe(1);
    expect(again.r).toEqual({ mode: 'held-restart', healthy: true, slot: 'blue' });
    expect(ok.fake.files.has(`${slotEnvFilePath('blue')}.previous`)).toBe(false);
  });

  it('blue/green: after a failed soak the new slot finishes what it serves (drained) before it is stopped', async () => {
    const h = makeSwapHost({ fallsOver: 'cortex-agent@green.service' });
    await swap(h, 'sk-new');
    const lines = inner(h);
    const soakAt = lines.findIndex((l) => l.startsWith('python3 soak '));
    const drained = lines.findIndex(
      (l, i) => i > soakAt && l === `ss -H -t -n state established ( sport = :${GREEN_PORT} )`,
    );
    const stopped = lines.lastIndexOf('systemctl stop cortex-agent@green.service');
    expect(drained).toBeGreaterThan(soakAt);
    expect(stopped).toBeGreaterThan(drained);
  });

  it.each([
    [{ soakSeconds: -1 }, 'soakSeconds'],
    [{ soakSeconds: 601 }, 'soakSeconds'],
    [{ soakSeconds: 1.5 }, 'soakSeconds'],
    [{ drainSeconds: -2 }, 'drainSeconds'],
    [{ drainSeconds: Number.NaN }, 'drainSeconds'],
  ] as const)('%j is refused naming the field, before anything is sent to the host', async (o, field) => {
    const h = makeSwapHost();
    const err = await swap(h, 'sk-new', o).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrchestratorError);
    expect((err as Error).message).toMatch(new RegExp(`^${field}: `));
    expect(h.sent).toEqual([]);
  });
});
