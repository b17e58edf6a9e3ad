import { randomUUID } from 'node:crypto';
import { OrchestratorError } from '../../../orchestrator/errors';
import { makeRotationJob } from '../../../orchestrator/rotation/rotation-job';
import type { RotationDeploymentState } from '../../../orchestrator/rotation/rotation-store';
import { swapAgentEnvironment, type AgentSwapOptions } from '../../../orchestrator/steps/agent-swap';
import { ACTIVE_SLOT_PATH, slotEnvFilePath } from '../../../templates/agent-slots';
import { BLUE_PORT, GREEN_PORT, makeSwapHost, swapOn, type SwapHost } from '../../support/fake-swap-host';
import { VALUES, access, fakeWorld, leases, log, run, store } from '../../support/rotation-world';

/**
 * Review R14 finding 4: a swap that finds the host ALREADY serving the new environment (a resumed
 * rotation whose cut attempt had switched it) and cannot verify it through Caddy leaves it there.
 * When the explicit swap back to the old environment is not healthy either, the host is still on
 * the NEW version; the record must say so (`switched`, reason `unhealthy_switch_unverified`, the
 * binding following the new version), not `rolled_back` pinned to an old version the host does not
 * run (which a later rebuild of the environment would put back). The rotate job runs here with the
 * real swap against the fake host of test/support/fake-swap-host.ts, which is the oracle.
 */
const setup = (
  initial: RotationDeploymentState,
  o: {
    readonly leaked?: boolean;
    readonly beforeSwap?: (n: number) => void;
    /** Its provisioning read the new version (deployment_secrets__list lists it at the new one). */
    readonly provisionedOnNew?: boolean;
    /** The SSH connect fails with this. */
    readonly connectFails?: Error;
    /** Reading the environment fails with this. */
    readonly readFails?: Error;
  } = {},
) => {
  const id = randomUUID();
  const world = fakeWorld([id], initial, {
    leaked: o.leaked ?? false,
    provisionedOnNew: o.provisionedOnNew ? [id] : [],
  });
  if (o.readFails) {
    const err = o.readFails;
    (world.store as { readVersions: unknown }).readVersions = () => Promise.reject(err);
  }
  let caddyDown = false;
  /** The fake host's options, read on every command: a test may change them between swaps. */
  const hostOptions: Parameters<typeof makeSwapHost>[0] = { caddyFails: () => caddyDown };
  const h = makeSwapHost(hostOptions);
  const swaps: { key: string; healthy: boolean; code?: string }[] = [];
  const j = makeRotationJob({
    rotations: world.store,
    store,
    leases,
    access: o.connectFails ? ({ connect: () => Promise.reject(o.connectFails) } as never) : access,
    swap: (async (_s: unknown, input: Parameters<typeof swapAgentEnvironment>[1], so: AgentSwapOptions) => {
      o.beforeSwap?.(swaps.length);
      const r = await swapAgentEnvironment(h.shell, input, {
        ...so,
        healthTimeoutMs: 2_000,
        drainSeconds: 1,
      });
      swaps.push({
        key: input.env.get('ANTHROPIC_API_KEY')?.reveal() ?? '',
        healthy: r.healthy,
        ...(r.code ? { code: r.code } : {}),
      });
      return r;
    }) as never,
    log,
    concurrency: 1,
    holder: 'test',
    healthRetryMs: [0, 0],
  });
  return { id, world, h, j, swaps, hostOptions, caddy: (down: boolean) => void (caddyDown = down) };
};
/** What the fake host serves: the port the live route leads to and the key in that slot's env file. */
const serving = (h: SwapHost): { port: number; key: string | undefined } => {
  const slot = h.route() === GREEN_PORT ? 'green' : 'blue';
  const file = h.fake.files.get(slotEnvFilePath(slot))?.content.toString() ?? '';
  return { port: h.route(), key: /^ANTHROPIC_API_KEY="([^"\n]*)"$/m.exec(file)?.[1] };
};

describe('a resumed rotation that finds the host on the new version (review R14 finding 4)', () => {
  it('the swap back to the old version not healthy either: recorded switched (unverified), as the host runs, not rolled back pinned old', async () => {
    const { id, world, h, j, swaps, caddy } = setup('switching');
    // The cut attempt: switched the host to the new version, then the worker died before recording.
    expect(await swapOn(h, VALUES[2] as string)).toMatchObject({ healthy: true, slot: 'green' });
    caddy(true);
    const out = await run(j);
    expect(swaps).toEqual([
      { key: VALUES[2], healthy: false, code: 'requested_unverified' },
      { key: VALUES[1], healthy: false, code: 'rollback_unverified' },
    ]);
    // the oracle: the host serves the new version on green, the old slot stopped, no old env file
    expect(serving(h)).toEqual({ port: GREEN_PORT, key: VALUES[2] });
    expect(h.fake.files.get(ACTIVE_SLOT_PATH)?.content.toString()).toBe('green\n');
    expect(h.active.has('cortex-agent@blue.service')).toBe(false);
    expect(h.fake.files.has(slotEnvFilePath('blue'))).toBe(false);
    // the record says the same
    expect(world.rows.get(id)).toEqual({ state: 'switched', reason: 'unhealthy_switch_unverified' });
    expect(world.pins.get(id)).toBeNull();
    expect(out.rolledBack).toEqual([]);
    // and the deployment's events and webhooks say it may not be serving: one health event,
    // switch_unverified, asked for after the switched record
    expect(world.health).toEqual([{ deploymentId: id, rotationId: 'r1', reasonCode: 'switch_unverified' }]);
    expect(world.calls.filter((c) => c.endsWith(`:${id}`)).slice(-2)).toEqual([
      `switched:${id}`,
      `health:${id}`,
    ]);
  });

  it('the swap back healthy (Caddy answers again): rolled back, pinned old, and the host on the old version', async () => {
    const { id, world, h, j, swaps, caddy } = setup('switching');
    await swapOn(h, VALUES[2] as string);
    caddy(true);
    // Caddy recovers once the first swap has answered
    const first = h.shell.exec.bind(h.shell);
    let seen = 0;
    h.shell.exec = (argv, o) => {
      if (swaps.length >= 1 && seen++ === 0) caddy(false);
      return first(argv, o);
    };
    const out = await run(j);
    expect(swaps.map((s) => [s.key, s.healthy])).toEqual([
      [VALUES[2], false],
      [VALUES[1], true],
    ]);
    expect(serving(h)).toEqual({ port: BLUE_PORT, key: VALUES[1] });
    expect(world.rows.get(id)).toEqual({ state: 'rolled_back', reason: 'unhealthy' });
    expect(world.pins.get(id)).toBe(1);
    expect(out.rolledBack).toEqual([id]);
    // verified on the old version: no health event
    expect(world.health).toEqual([]);
    expect(world.calls).not.toContain(`health:${id}`);
  });

  it('a deployment not resumed that already runs the new version (provisioned on it) is NOT put on the old one, which it never ran: switched, unverified (review R16 finding 2)', async () => {
    const { id, world, h, j, swaps, caddy } = setup('pending');
    await swapOn(h, VALUES[2] as string);
    caddy(true);
    await run(j);
    expect(swaps.map((s) => s.key)).toEqual([VALUES[2]]);
    expect(serving(h)).toEqual({ port: GREEN_PORT, key: VALUES[2] });
    // the old value was never on this host and is not now: in no file, in no running unit
    const onHost = [...h.fake.files.values()].map((f) => f.content.toString()).join('\n');
    expect(onHost).not.toContain(VALUES[1]);
    expect(h.active.has('cortex-agent@blue.service')).toBe(false);
    expect(world.rows.get(id)).toEqual({ state: 'switched', reason: 'unhealthy_switch_unverified' });
    expect(world.pins.get(id)).toBeNull();
    expect(world.health).toEqual([{ deploymentId: id, rotationId: 'r1', reasonCode: 'switch_unverified' }]);
  });

  it('a deployment provisioned on the new version whose first attempt failed before its swap (so it looks resumed) is not put on the old one either (review R17 finding 1)', async () => {
    let failFirst = true;
    const { id, world, h, j, swaps, caddy } = setup('pending', {
      provisionedOnNew: true,
      beforeSwap: () => {
        if (failFirst) {
          failFirst = false;
          throw new OrchestratorError('remote_command_failed', 'ssh: connection lost');
        }
      },
    });
    await swapOn(h, VALUES[2] as string);
    await expect(run(j)).rejects.toThrow(/not done yet/);
    expect(world.rows.get(id)?.state).toBe('switching');
    caddy(true);
    await run(j);
    expect(swaps.map((s) => s.key)).toEqual([VALUES[2]]);
    const onHost = [...h.fake.files.values()].map((f) => f.content.toString()).join('\n');
    expect(onHost).not.toContain(VALUES[1]);
    expect(world.rows.get(id)).toEqual({ state: 'switched', reason: 'unhealthy_switch_unverified' });
    expect(world.pins.get(id)).toBeNull();
  });

  it('a host found on the new version whose own env file cannot be rewritten: the last attempt records it switched but unverified, with a health event, not a clean switch (review R18 finding 3)', async () => {
    const { id, world, h, j } = setup('pending');
    await swapOn(h, VALUES[2] as string);
    const exec = h.fake.shell.exec.bind(h.fake.shell);
    h.fake.shell.exec = (argv, o) =>
      argv.includes('write-env')
        ? Promise.resolve({ code: 1, stdout: Buffer.alloc(0), stderr: Buffer.from('OSError\n') })
        : exec(argv, o);
    await expect(run(j)).rejects.toThrow(/not rewritten/);
    expect(world.rows.get(id)?.state).toBe('switching');
    await run(j, true);
    expect(world.rows.get(id)).toEqual({ state: 'switched', reason: 'unhealthy_switch_unverified' });
    expect(world.health).toEqual([{ deploymentId: id, rotationId: 'r1', reasonCode: 'switch_unverified' }]);
  });

  it('a leak response resumed on the new version is not put back on the leaked key: switched, unverified (review R16 finding 2)', async () => {
    const { id, world, h, j, swaps, caddy } = setup('switching', { leaked: true });
    await swapOn(h, VALUES[2] as string);
    caddy(true);
    await run(j);
    expect(swaps.map((s) => s.key)).toEqual([VALUES[2]]);
    const onHost = [...h.fake.files.values()].map((f) => f.content.toString()).join('\n');
    expect(onHost).not.toContain(VALUES[1]);
    expect(world.rows.get(id)).toEqual({ state: 'switched', reason: 'unhealthy_switch_unverified' });
  });

  it('a swap back whose failed slot does not stop is no record of either version: thrown and retried, never switched with the old instance still running (review R16 finding 3)', async () => {
    // from the swap back on, a stop of blue fails while it runs (its instance keeps running; a stop
    // of an inactive unit succeeds, as systemd's does)
    let armed = false;
    const { id, world, h, j, swaps, caddy, hostOptions } = setup('switching', {
      beforeSwap: (n) => void (armed = n === 1),
    });
    Object.defineProperty(hostOptions, 'stopFails', {
      get: () =>
        armed && h.active.has('cortex-agent@blue.service') ? 'cortex-agent@blue.service' : undefined,
    });
    await swapOn(h, VALUES[2] as string);
    caddy(true);
    // the swap back starts blue on the old key, switches, is not healthy through Caddy, routes back
    // to green and cannot stop blue: "not known", left `switching` for the job's retry
    await expect(run(j)).rejects.toThrow(/slot blue did not stop \(exit 1\) after the route back/);
    expect(swaps.map((s) => s.key)).toEqual([VALUES[2]]);
    expect(h.active.has('cortex-agent@blue.service')).toBe(true);
    expect(world.rows.get(id)?.state).toBe('switching');
    expect(world.calls).not.toContain(`switched:${id}`);
    // The last attempt: its first swap finds green serving the new key and blue still running, and
    // cannot stop it either (SwapCleanupError): recorded as what serves, switched, with the old
    // instance logged as an error (review R10 F2, unchanged); never rolled back onto blue.
    await run(j, true);
    expect(serving(h)).toEqual({ port: GREEN_PORT, key: VALUES[2] });
    expect(world.rows.get(id)?.state).toBe('switched');
  });

  it('a swap back that throws on the last attempt: recorded failed from switching (set_state writes the rotation_failed event), pinned old (review R16 finding 4)', async () => {
    // every second swap (the swap back) loses its connection before it answers
    let n = 0;
    const { id, world, h, j, swaps, caddy } = setup('switching', {
      beforeSwap: () => {
        if (n++ % 2 === 1) throw new OrchestratorError('ssh_connect_failed', 'host:22: connection closed');
      },
    });
    await swapOn(h, VALUES[2] as string);
    caddy(true);
    // not the last attempt: left `switching` for the retry, nothing recorded, no event
    await expect(run(j)).rejects.toThrow(/not done yet: .*connection closed/);
    expect(world.rows.get(id)?.state).toBe('switching');
    expect(world.health).toEqual([]);
    // the last: the first swap finds the new version again, the swap back throws again
    await run(j, true);
    expect(swaps).toEqual([
      { key: VALUES[2], healthy: false, code: 'requested_unverified' },
      { key: VALUES[2], healthy: false, code: 'requested_unverified' },
    ]);
    expect(world.rows.get(id)).toEqual({ state: 'failed', reason: 'ssh_connect_failed' });
    expect(world.pins.get(id)).toBe(1);
    expect(world.health).toEqual([{ deploymentId: id, rotationId: 'r1', reasonCode: 'rotation_failed' }]);
  });

  it('a swap that throws on the last attempt of a fresh deployment: switching was recorded right before it, so failed from switching (the event)', async () => {
    const { id, world, h, j } = setup('pending', {
      beforeSwap: () => {
        throw new OrchestratorError('ssh_connect_failed', 'host:22: connection closed');
      },
    });
    await swapOn(h, VALUES[1] as string);
    await run(j, true);
    expect(world.rows.get(id)).toEqual({ state: 'failed', reason: 'ssh_connect_failed' });
    expect(world.health).toEqual([{ deploymentId: id, rotationId: 'r1', reasonCode: 'rotation_failed' }]);
  });

  it.each([
    [
      'the SSH connect is refused for good',
      { connectFails: new OrchestratorError('ssh_host_key_mismatch', 'host') },
    ],
    ['the environment cannot be read', { readFails: new OrchestratorError('secret_denied', 'denied') }],
  ])(
    'a fresh deployment whose %s: failed from pending, no swap, no switching, no event (review R20 finding 1: its host is untouched)',
    async (_what, o) => {
      const { id, world, j, swaps } = setup('pending', o);
      await run(j, true);
      expect(swaps).toEqual([]);
      expect(world.calls).toEqual([`failed:${id}`]);
      expect(world.rows.get(id)?.state).toBe('failed');
      expect(world.health).toEqual([]);
    },
  );

  it('a host found on the OLD version whose swaps are not verified stays rolled back, unverified, pinned old (unchanged)', async () => {
    const { id, world, h, j, swaps, caddy } = setup('switching');
    await swapOn(h, VALUES[1] as string);
    caddy(true);
    await run(j);
    expect(swaps[0]).toMatchObject({ key: VALUES[2], healthy: false });
    expect(swaps[0]?.code).not.toBe('requested_unverified');
    expect(swaps[1]).toMatchObject({ key: VALUES[1], healthy: false, code: 'requested_unverified' });
    expect(serving(h).key).toBe(VALUES[1]);
    expect(world.rows.get(id)).toEqual({ state: 'rolled_back', reason: 'unhealthy_rollback_unverified' });
    expect(world.pins.get(id)).toBe(1);
    // the rollback's own event, as before; no switch_unverified one
    expect(world.health).toEqual([{ deploymentId: id, rotationId: 'r1', reasonCode: 'rollback_unverified' }]);
  });
});
