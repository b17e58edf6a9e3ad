import { OrchestratorError } from '../../../orchestrator/errors';
import { decodeBatch } from '../../../orchestrator/remote/swap-commands';
import { DEFAULT_SOAK_SECONDS, swapAgentEnvironment } from '../../../orchestrator/steps/agent-swap';
import { ACTIVE_SLOT_PATH, slotEnvFilePath } from '../../../templates/agent-slots';
import {
  BLUE_PORT,
  GREEN_PORT,
  keyEnv,
  makeSwapHost,
  swapOn,
  type SwapHost,
} from '../../support/fake-swap-host';

/**
 * Health after the switch (issue 11): a new instance that answers its first health checks and
 * then falls over must not be reported switched. It is watched for `soakSeconds` after traffic
 * moved to it (the helper's `soak` mode, on the host), while the old instance still runs
 * (blue/green) or its previous env file is still kept (held restart); failing meanwhile puts the
 * old environment back and the swap says `healthy: false`, so the rotation rolls back.
 */
const swap = swapOn;
/** The helper's mode and arguments of every helper step run on the host (not the script itself). */
const helperCalls = (h: SwapHost, mode: string): string[][] =>
  h.fake.calls.filter((c) => c[0] === 'python3' && c[4] === mode).map((c) => c.slice(5));
/**
 * The instance of `unit` now (`<restarts>:<main start>`), as its health wait printed it when it
 * judged it healthy (the fake's unit has not restarted since).
 */
const healthyAnswer = (h: SwapHost, unit: string): string => {
  expect(h.instance(unit)).toMatch(/^\d+:\d+$/);
  return h.instance(unit);
};
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
    // unit, its port, the health path, the soak, the old slot's port to drain, the drain bound,
    // and the instance its health wait judged healthy (restarts:main start, as the wait printed it)
    expect(helperCalls(h, 'soak')).toEqual([
      [
        'cortex-agent@green.service',
        String(GREEN_PORT),
        '/health',
        '7000',
        String(BLUE_PORT),
        '1000',
        healthyAnswer(h, 'cortex-agent@green.service'),
      ],
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
      [
        'cortex-agent@blue.service',
        String(BLUE_PORT),
        '/health',
        '3000',
        '0',
        '0',
        healthyAnswer(ok, 'cortex-agent@blue.service'),
      ],
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
    const input = { deploymentId: 'd', runtime: 'echo' as const, env: keyEnv('sk-new') };
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

  // Review R5 #7: the restart baseline is the instance the health wait judged healthy, not the one
  // the soak finds when it starts (a crash and restart during the route switch was in that baseline).
  it('blue/green: a new slot restarted by systemd between its health wait and its soak (during the switch) fails the soak: routed back, not healthy', async () => {
    const h = makeSwapHost({ restartsAfterHealthy: 'cortex-agent@green.service' });
    const r = await swap(h, 'sk-new');
    expect(r).toEqual({
      mode: 'blue-green',
      healthy: false,
      reason: 'cortex-agent@green.service restarted after the switch (active/running)',
      slot: 'blue',
    });
    // the soak was given the instance judged healthy, which is no longer the one running
    const [soakArgs] = helperCalls(h, 'soak');
    expect(soakArgs?.[6]).toMatch(/^0:\d+$/);
    expect(soakArgs?.[6]).not.toBe(h.instance('cortex-agent@green.service'));
    expect(h.route()).toBe(BLUE_PORT);
    expect(h.active.has('cortex-agent@blue.service')).toBe(true);
    expect(h.active.has('cortex-agent@green.service')).toBe(false);
    expect(h.fake.files.has(slotEnvFilePath('green'))).toBe(false);
  });

  it('held restart: an agent restarted by systemd between its health wait and its soak gets its previous env file back', async () => {
    const h = makeSwapHost({ restartsAfterHealthy: 'cortex-agent@blue.service' });
    const r = await swap(h, 'sk-held', { mode: 'held-restart' });
    expect(r).toEqual({
      mode: 'held-restart',
      healthy: false,
      reason: 'cortex-agent@blue.service restarted after the switch (active/running)',
      slot: 'blue',
    });
    expect(h.fake.files.get(slotEnvFilePath('blue'))?.content.toString()).toBe('K=old\n');
    expect(h.fake.files.has(`${slotEnvFilePath('blue')}.previous`)).toBe(false);
  });

  it("a re-run after a cut has no health wait's answer of its own: its soak is given no baseline (no seventh argument; the host compares with what it remembers)", async () => {
    const h = makeSwapHost();
    await cutThenRerun(h);
    expect(h.remembered().size).toBe(0); // the re-run's soak answered: forgotten
    expect(helperCalls(h, 'soak')).toEqual([
      [
        'cortex-agent@green.service',
        String(GREEN_PORT),
        '/health',
        String(DEFAULT_SOAK_SECONDS * 1000),
        String(BLUE_PORT),
        '1000',
      ],
    ]);
  });

  // Review R5 #5: a route back is checked end to end like the forward switch, through Caddy.
  const throughCaddy = (h: SwapHost): number[] =>
    inner(h).flatMap((l, i) => (l.startsWith('curl ') && l.includes(' https://') ? [i] : []));

  it('blue/green: after a route back the old slot is probed through Caddy once the new one is discarded; a 200 is a clean rollback (no code)', async () => {
    const h = makeSwapHost({ fallsOver: 'cortex-agent@green.service' });
    const r = await swap(h, 'sk-new');
    expect(r).toMatchObject({ mode: 'blue-green', healthy: false, slot: 'blue' });
    expect(r.code).toBeUndefined();
    const lines = inner(h);
    const routedBack = lines.lastIndexOf('systemctl restart cortex-upstream.service');
    const stopped = lines.lastIndexOf('systemctl stop cortex-agent@green.service');
    expect(stopped).toBeGreaterThan(routedBack);
    expect(throughCaddy(h).filter((i) => i > stopped)).toHaveLength(1);
  });

  it.each([
    ['a fresh run', false],
    ['a re-run after a cut before the soak', true],
  ])(
    'blue/green, %s: an old slot that does not answer through Caddy after the route back is no clean rollback (rollback_unverified), bounded',
    async (_, cut) => {
      let h: SwapHost | undefined = undefined;
      const soaked = () => (h ? helperCalls(h, 'soak').length > 0 : false);
      h = makeSwapHost({ fallsOver: 'cortex-agent@green.service', caddyFails: soaked });
      const bounds: number[] = [];
      const exec = h.shell.exec;
      h.shell.exec = (argv, opts) => {
        const steps = decodeBatch(argv);
        if (steps?.some((st) => st.argv.join(' ').startsWith('systemctl stop cortex-agent@green')))
          bounds.push(...steps.flatMap((st) => (st.argv[0] === 'curl' ? [st.poll?.forMs ?? -1] : [])));
        return exec(argv, opts);
      };
      const r = cut ? (await cutThenRerun(h)).r : await swap(h, 'sk-new');
      expect(r).toEqual({
        mode: 'blue-green',
        healthy: false,
        reason:
          'cortex-agent@green.service stopped answering its health check after the switch (3 failed probes in a row; active/running); routed back to cortex-agent@blue.service, which was not healthy through Caddy within 10 s (last: HTTP 502)',
        code: 'rollback_unverified',
        slot: 'blue',
      });
      // the route is back all the same, and the new slot is gone
      expect(h.route()).toBe(BLUE_PORT);
      expect(h.active.has('cortex-agent@blue.service')).toBe(true);
      expect(h.active.has('cortex-agent@green.service')).toBe(false);
      expect(h.fake.files.has(slotEnvFilePath('green'))).toBe(false);
      // one probe step after the route back, polled for 10 s at most
      expect(bounds).toEqual([10_000]);
    },
  );

  it('blue/green, a switch not healthy through Caddy: routed back and the old slot probed through Caddy too; clean when it answers, rollback_unverified when it does not', async () => {
    let clean: SwapHost | undefined = undefined;
    clean = makeSwapHost({ caddyFails: () => clean?.route() === GREEN_PORT });
    expect(await swap(clean, 'sk-new')).toEqual({
      mode: 'blue-green',
      healthy: false,
      reason: 'not healthy through Caddy within 20 s (last: HTTP 502)',
      slot: 'blue',
    });
    expect(clean.route()).toBe(BLUE_PORT);
    const routedBack = inner(clean).lastIndexOf('systemctl restart cortex-upstream.service');
    expect(throughCaddy(clean).filter((i) => i > routedBack).length).toBeGreaterThan(0);

    const down = makeSwapHost({ caddyFails: () => true });
    expect(await swap(down, 'sk-new')).toEqual({
      mode: 'blue-green',
      healthy: false,
      reason:
        'not healthy through Caddy within 20 s (last: HTTP 502); routed back to cortex-agent@blue.service, which was not healthy through Caddy within 10 s (last: HTTP 502)',
      code: 'rollback_unverified',
      slot: 'blue',
    });
    expect(down.route()).toBe(BLUE_PORT);
    expect(down.active.has('cortex-agent@green.service')).toBe(false);
    expect(down.fake.files.has(slotEnvFilePath('green'))).toBe(false);
  });

  it('held restart: the agent restarted on its previous env file is proven again (its own port, then through Caddy); clean when it answers', async () => {
    const h = makeSwapHost({ fallsOver: 'cortex-agent@blue.service' });
    const r = await swap(h, 'sk-held', { mode: 'held-restart' });
    expect(r).toMatchObject({ mode: 'held-restart', healthy: false, slot: 'blue' });
    expect(r.code).toBeUndefined();
    const lines = inner(h);
    const moved = lines.indexOf(`mv -f -- ${slotEnvFilePath('blue')}.previous ${slotEnvFilePath('blue')}`);
    const restarted = lines.lastIndexOf('systemctl restart cortex-agent@blue.service');
    const waited = lines.findIndex((l, i) => i > restarted && l.startsWith('python3 wait-healthy '));
    expect(restarted).toBeGreaterThan(moved);
    expect(waited).toBeGreaterThan(restarted);
    expect(throughCaddy(h).filter((i) => i > waited)).toHaveLength(1);
  });

  it('held restart: an agent that does not answer through Caddy after its previous env file is put back is no clean rollback (rollback_unverified)', async () => {
    let h: SwapHost | undefined = undefined;
    h = makeSwapHost({
      fallsOver: 'cortex-agent@blue.service',
      caddyFails: () => (h ? helperCalls(h, 'soak').length > 0 : false),
    });
    expect(await swap(h, 'sk-held', { mode: 'held-restart' })).toEqual({
      mode: 'held-restart',
      healthy: false,
      reason:
        'cortex-agent@blue.service stopped answering its health check after the switch (3 failed probes in a row; active/running); after its previous env file was put back, cortex-agent@blue.service was not healthy through Caddy within 10 s (last: HTTP 502)',
      code: 'rollback_unverified',
      slot: 'blue',
    });
    // the old environment is what the host has, all the same
    expect(h.fake.files.get(slotEnvFilePath('blue'))?.content.toString()).toBe('K=old\n');
    expect(h.fake.files.has(`${slotEnvFilePath('blue')}.previous`)).toBe(false);
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

  // Review R19 finding 4, modelled (R28 finding 4): the cut run's health answer is remembered on
  // the host, and the re-run's soak (given no baseline) compares with it.
  it("blue/green, a run cut before its soak and the new slot restarted by systemd meanwhile: the re-run soaks against the cut run's health answer and routes back; not healthy", async () => {
    const h = makeSwapHost({ restartsAfterHealthy: 'cortex-agent@green.service' });
    const { r, soaks } = await cutThenRerun(h);
    expect(soaks).toBe(1);
    expect(helperCalls(h, 'soak').at(-1)).toHaveLength(6); // no baseline from the orchestrator
    expect(r).toEqual({
      mode: 'blue-green',
      healthy: false,
      reason: 'cortex-agent@green.service restarted after the switch (active/running)',
      slot: 'blue',
    });
    expect(h.route()).toBe(BLUE_PORT);
    expect(h.active.has('cortex-agent@blue.service')).toBe(true);
    expect(h.active.has('cortex-agent@green.service')).toBe(false);
    expect(h.remembered().size).toBe(0);
  });

  it('a complete swap leaves nothing remembered (the answered soak forgot it), and a later swap is soaked against its own answer', async () => {
    const h = makeSwapHost();
    expect(await swap(h, 'sk-1')).toEqual({ mode: 'blue-green', healthy: true, slot: 'green' });
    expect(h.remembered().size).toBe(0);
    expect(await swap(h, 'sk-2')).toEqual({ mode: 'blue-green', healthy: true, slot: 'blue' });
    expect(h.remembered().size).toBe(0);
    const soaks = helperCalls(h, 'soak');
    expect(soaks).toHaveLength(2);
    expect(soaks.map((a) => a[0])).toEqual(['cortex-agent@green.service', 'cortex-agent@blue.service']);
    for (const a of soaks) expect(a[6]).toMatch(/^\d+:\d+$/);
  });
});
