import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { OrchestratorError } from '../../../orchestrator/errors';
import { makeLogger } from '../../../orchestrator/log';
import { parsePayload } from '../../../orchestrator/queues/job-payloads';
import { makeHttpKeyValidator } from '../../../orchestrator/rotation/key-validator';
import { mapLimit, reasonCodeOf, rotationReasonCode } from '../../../orchestrator/rotation/rotation-common';
import { makeRotationJob } from '../../../orchestrator/rotation/rotation-job';
import { makeRotationService, rotationIdFor } from '../../../orchestrator/rotation/rotation-service';
import type { RotationDeploymentState, RotationStore } from '../../../orchestrator/rotation/rotation-store';
import { Secret } from '../../../orchestrator/secret';
import { SwapCleanupError } from '../../../orchestrator/steps/agent-swap';
import {
  SECRET,
  VALUES,
  access,
  fakeWorld,
  job,
  leases,
  log,
  run,
  store,
  type Swap,
} from '../../support/rotation-world';

/**
 * The rotate job against the fake contract of test/support/rotation-world.ts and a fake swap whose
 * outcome each test chooses. The real thing runs in test/integration/rotation.test.ts.
 */
describe('rotate job', () => {
  it('switches every deployment at most `concurrency` at a time, rolls back the unhealthy one and reports it', async () => {
    const ids = Array.from({ length: 10 }, () => randomUUID());
    const world = fakeWorld(ids);
    let inFlight = 0;
    let maxInFlight = 0;
    const seen = new Map<string, string>();
    const swap: Swap = async (_s, input) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      seen.set(input.deploymentId, input.env.get('ANTHROPIC_API_KEY')?.reveal() ?? '');
      await new Promise((r) => setTimeout(r, 5));
      inFlight--;
      return input.deploymentId === ids[3]
        ? { mode: 'held-restart', healthy: false, reason: 'health check timed out' }
        : { mode: 'held-restart', healthy: true };
    };
    const out = await run(job(world, swap, 3));
    expect(maxInFlight).toBe(3);
    expect([...seen.values()].every((v) => v === VALUES[2])).toBe(true);
    expect(out.state).toBe('completed');
    expect(out.rolledBack).toEqual([ids[3]]);
    expect(out.switched).toHaveLength(9);
    expect(world.pins.get(ids[3] as string)).toBe(1);
    expect(JSON.stringify(out)).not.toContain('value-');
  });

  it('a row that ended while this attempt waited for its lease is left as it is: no secret read, no SSH, no swap (review R23 finding 1)', async () => {
    const id = randomUUID();
    const world = fakeWorld([id]);
    let reads = 0;
    const readVersions = world.store.readVersions.bind(world.store);
    world.store.readVersions = (...a: Parameters<typeof readVersions>) => {
      reads++;
      return readVersions(...a);
    };
    let connects = 0;
    let swaps = 0;
    const j = makeRotationJob({
      rotations: world.store,
      store,
      // another run of this rotation (BullMQ ran a stalled job twice) switched the deployment
      // while this one waited for the lease
      leases: {
        acquire: (dep: string) => {
          const row = world.rows.get(dep);
          if (row) row.state = 'switched';
          return Promise.resolve({ deploymentId: dep, held: () => true, release: () => Promise.resolve() });
        },
      } as never,
      access: {
        connect: () => {
          connects++;
          return Promise.resolve({ shell: { close: () => Promise.resolve() }, key: 'current' });
        },
      } as never,
      swap: (() => {
        swaps++;
        return Promise.resolve({ mode: 'held-restart', healthy: true });
      }) as never,
      log,
      concurrency: 1,
      holder: 'test',
    });
    const out = await run(j, true);
    expect({ reads, connects, swaps }).toEqual({ reads: 0, connects: 0, swaps: 0 });
    expect(world.calls).toEqual([]);
    expect(world.rows.get(id)?.state).toBe('switched');
    expect(out.state).toBe('completed');
  });

  it('reads the whole rotation a fixed number of times, whatever the number of deployments: each re-reads its own row (migration 20261208090000)', async () => {
    const count = async (n: number) => {
      const world = fakeWorld(Array.from({ length: n }, () => randomUUID()));
      const calls = { get: 0, getDeployment: [] as string[] };
      const get = world.store.get.bind(world.store);
      world.store.get = (...a: Parameters<typeof get>) => {
        calls.get++;
        return get(...a);
      };
      const getDeployment = world.store.getDeployment.bind(world.store);
      world.store.getDeployment = (r: string, dep: string) => {
        calls.getDeployment.push(dep);
        return getDeployment(r, dep);
      };
      const out = await run(job(world, () => Promise.resolve({ mode: 'held-restart', healthy: true })));
      expect(out.state).toBe('completed');
      expect([...calls.getDeployment].sort()).toEqual([...world.rows.keys()].sort());
      return calls.get;
    };
    const [one, forty] = [await count(1), await count(40)];
    expect(one).toBeGreaterThan(0);
    expect(forty).toBe(one);
  });

  it('a deployment no longer in the rotation (its row gone) is left alone: no read, no SSH, no record', async () => {
    const [gone, kept] = [randomUUID(), randomUUID()];
    const world = fakeWorld([gone, kept]);
    // removed after the fan-out read the rotation: its row went with it (on delete cascade)
    const getDeployment = world.store.getDeployment.bind(world.store);
    world.store.getDeployment = (r: string, dep: string) => {
      if (dep === gone) world.rows.delete(gone);
      return getDeployment(r, dep);
    };
    const read: string[] = [];
    const readVersions = world.store.readVersions.bind(world.store);
    world.store.readVersions = (...a: Parameters<typeof readVersions>) => {
      read.push(a[0]);
      return readVersions(...a);
    };
    const connected: string[] = [];
    const swapped: string[] = [];
    const out = await run(
      makeRotationJob({
        rotations: world.store,
        store,
        leases,
        access: {
          connect: (dep: { id: string }) => {
            connected.push(dep.id);
            return Promise.resolve({ shell: { close: () => Promise.resolve() }, key: 'current' });
          },
        } as never,
        swap: ((_s: unknown, input: { deploymentId: string }) => {
          swapped.push(input.deploymentId);
          return Promise.resolve({ mode: 'held-restart', healthy: true });
        }) as never,
        log,
        concurrency: 1,
        holder: 'test',
      }),
      true,
    );
    // (review R26 finding B: the name's "no read, no SSH" is what is counted)
    expect({ read, connected, swapped }).toEqual({ read: [kept], connected: [kept], swapped: [kept] });
    expect(world.calls.filter((c) => c.endsWith(gone))).toEqual([]);
    expect(out.state).toBe('completed');
    expect(world.rows.get(kept)?.state).toBe('switched');
  });

  it('a lease lost before the swap: nothing recorded, no swap, left for the retry (review R25 finding 4)', async () => {
    const id = randomUUID();
    const world = fakeWorld([id]);
    let swaps = 0;
    const j = makeRotationJob({
      rotations: world.store,
      store,
      leases: {
        acquire: (dep: string) =>
          Promise.resolve({ deploymentId: dep, held: () => false, release: () => Promise.resolve() }),
      } as never,
      access,
      swap: (() => {
        swaps++;
        return Promise.resolve({ mode: 'held-restart', healthy: true });
      }) as never,
      log,
      concurrency: 1,
      holder: 'test',
    });
    await expect(run(j)).rejects.toThrow(/lease was lost/);
    expect(swaps).toBe(0);
    expect(world.calls).toEqual([]);
    expect(world.rows.get(id)?.state).toBe('pending');
  });

  it('a lease lost during the first swap of a resumed row: no swap back without it, left for the retry (review R27 finding 5)', async () => {
    const id = randomUUID();
    const world = fakeWorld([id], 'switching');
    let checks = 0;
    let swaps = 0;
    const j = makeRotationJob({
      rotations: world.store,
      store,
      leases: {
        // held for the first swap's fence, lost by the time the swap back would run
        acquire: (dep: string) =>
          Promise.resolve({ deploymentId: dep, held: () => ++checks <= 1, release: () => Promise.resolve() }),
      } as never,
      access,
      swap: (() => {
        swaps++;
        return Promise.resolve({ mode: 'held-restart', healthy: false });
      }) as never,
      log,
      concurrency: 1,
      holder: 'test',
    });
    await expect(run(j)).rejects.toThrow(/lease was lost/);
    expect(swaps).toBe(1);
    expect(world.rows.get(id)?.state).toBe('switching');
  });

  it('resumes a deployment left `switching` by a crash; when the new version is unhealthy it puts the host back on the old one', async () => {
    const ids = [randomUUID()];
    const world = fakeWorld(ids, 'switching');
    const envs: string[] = [];
    const swap: Swap = (_s, input) => {
      envs.push(input.env.get('ANTHROPIC_API_KEY')?.reveal() ?? '');
      return Promise.resolve(
        envs.length === 1
          ? { mode: 'held-restart', healthy: false }
          : { mode: 'held-restart', healthy: true },
      );
    };
    const out = await run(job(world, swap));
    expect(envs).toEqual([VALUES[2], VALUES[1]]);
    expect(out.rolledBack).toEqual(ids);
    expect(world.rows.get(ids[0] as string)?.reason).toBe('unhealthy');
  });

  it('a resumed deployment put back on an old environment that is not healthy either is no clean rollback (review R8 #7)', async () => {
    const ids = [randomUUID()];
    const world = fakeWorld(ids, 'switching');
    const swap: Swap = () => Promise.resolve({ mode: 'held-restart', healthy: false });
    const out = await run(job(world, swap));
    expect(out.rolledBack).toEqual(ids);
    expect(world.rows.get(ids[0] as string)?.reason).toBe('unhealthy_rollback_unverified');
  });

  it('skips what a crash left finished and finishes the rest', async () => {
    const ids = [randomUUID(), randomUUID()];
    const world = fakeWorld(ids);
    (world.rows.get(ids[0] as string) as { state: RotationDeploymentState }).state = 'switched';
    const swapped: string[] = [];
    const out = await run(
      job(world, (_s, input) => {
        swapped.push(input.deploymentId);
        return Promise.resolve({ mode: 'held-restart', healthy: true });
      }),
    );
    expect(swapped).toEqual([ids[1]]);
    expect(out.switched.sort()).toEqual([...ids].sort());
  });

  it('a transient failure leaves the deployment for the retry; the last attempt records it failed (old version)', async () => {
    const ids = [randomUUID()];
    const world = fakeWorld(ids);
    const broken: Swap = () =>
      Promise.reject(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }));
    await expect(run(job(world, broken))).rejects.toThrow('not done yet');
    expect(world.rows.get(ids[0] as string)?.state).toBe('switching');
    const out = await run(job(world, broken), true);
    expect(out.failed).toEqual(ids);
    expect(world.pins.get(ids[0] as string)).toBe(1);
  });

  it('a resumed deployment put back on the OLD version whose clean-up is not verified is no switch: the last attempt records it failed, pinned old (review R10 F2, the back swap)', async () => {
    const ids = [randomUUID()];
    const world = fakeWorld(ids, 'switching');
    const envs: string[] = [];
    const swap: Swap = (_s, input) => {
      envs.push(input.env.get('ANTHROPIC_API_KEY')?.reveal() ?? '');
      return envs.length % 2 === 1
        ? Promise.resolve({ mode: 'held-restart', healthy: false })
        : Promise.reject(
            new SwapCleanupError(
              "the old slot's env file could not be removed: agent-green.env",
              'held-restart',
            ),
          );
    };
    const out = await run(job(world, swap), true);
    expect(envs).toEqual([VALUES[2], VALUES[1]]);
    expect(out.failed).toEqual(ids);
    expect(world.rows.get(ids[0] as string)?.state).toBe('failed');
    expect(world.pins.get(ids[0] as string)).toBe(1);
  });

  it("the old slot's clean-up not verified (the new version serves): retried; the last attempt records it switched, not pinned to the old version (review R10 F2)", async () => {
    const ids = [randomUUID()];
    const world = fakeWorld(ids);
    const lines: string[] = [];
    const logged = makeLogger({ level: 'error' }, { write: (l: string) => lines.push(l) });
    const leftover: Swap = () =>
      Promise.reject(
        new SwapCleanupError("the old slot's env file could not be removed: agent-blue.env", 'held-restart'),
      );
    const j = () =>
      makeRotationJob({
        rotations: world.store,
        store,
        leases,
        access,
        swap: leftover as never,
        log: logged,
        concurrency: 8,
        holder: 'test',
      });
    await expect(run(j())).rejects.toThrow('not done yet');
    expect(world.rows.get(ids[0] as string)?.state).toBe('switching');
    const out = await run(j(), true);
    expect(out.failed).toEqual([]);
    expect(world.rows.get(ids[0] as string)?.state).toBe('switched');
    expect(world.pins.get(ids[0] as string)).toBeNull();
    expect(lines.join('')).toMatch(/the old value may remain on the host/);
    expect(lines.join('')).toMatch(/agent-blue\.env/);
  });
});

describe('rotation payloads, ids and key check', () => {
  it('a rotate job carries a rotation id and nothing else; a revoke job a revocation id and nothing else', () => {
    const id = randomUUID();
    expect(parsePayload('rotate', { rotationId: id }).ok).toBe(true);
    expect(parsePayload('rotate', { rotationId: id, value: 'sk-ant-canary-x' })).toEqual({
      ok: false,
      problem: 'payload refused for queue rotate: (root) (ids only)',
    });
    expect(parsePayload('revoke', { revocationId: id }).ok).toBe(true);
    // the old shape (a secret id, no revocation: what a forged job carried) is refused
    expect(parsePayload('revoke', { secretId: id, deploymentId: id }).ok).toBe(false);
    expect(parsePayload('revoke', { revocationId: id, secretId: id }).ok).toBe(false);
    expect(parsePayload('revoke', { revocationId: 'sk-ant-canary-x' }).ok).toBe(false);
  });

  it('an Idempotency-Key maps to one rotation id per scope', () => {
    const a = rotationIdFor('org/secret', 'k1');
    expect(a).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(rotationIdFor('org/secret', 'k1')).toBe(a);
    expect(rotationIdFor('org/secret', 'k2')).not.toBe(a);
    expect(rotationIdFor('other/secret', 'k1')).not.toBe(a);
  });

  describe('provider key check against a local stub provider', () => {
    let server: Server;
    let base: string;
    const bodies: string[] = [];
    beforeAll(async () => {
      server = createServer((req, res) => {
        const key = req.headers['x-api-key'] ?? req.headers.authorization ?? '';
        const good = String(key).includes('good');
        // the body echoes the key: it must never be read or logged
        res.writeHead(good ? 200 : 401, { 'content-type': 'application/json' });
        const body = JSON.stringify({ echoed: key });
        bodies.push(body);
        res.end(body);
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    afterAll(() => new Promise<void>((r) => server.close(() => r())));

    it('valid for 2xx, invalid for 401 (the reason names the status, never the body), unchecked for an unknown provider', async () => {
      const v = makeHttpKeyValidator({ baseUrls: { '*': base } });
      expect(
        await v.validate('anthropic', new Secret(`canary-good-${randomBytes(12).toString('hex')}`)),
      ).toEqual({
        status: 'valid',
      });
      const bad = await v.validate('openai', new Secret(`canary-typo-${randomBytes(12).toString('hex')}`));
      expect(bad).toEqual({ status: 'invalid', reason: 'openai refused the key (HTTP 401)' });
      expect(JSON.stringify(bad)).not.toContain('typo');
      expect((await v.validate('other', new Secret('x'.repeat(30)))).status).toBe('unchecked');
      expect(bodies.length).toBe(2);
    });

    it('the rotation service refuses an invalid key before anything is stored or enqueued', async () => {
      const calls: string[] = [];
      const rotations = {
        secretBindings: () => Promise.resolve({ provider: 'anthropic', deployments: [] }),
        start: () => {
          calls.push('start');
          return Promise.reject(new Error('must not be called'));
        },
      } as unknown as RotationStore;
      const service = makeRotationService({
        rotations,
        queues: {
          enqueue: () => {
            calls.push('enqueue');
            return Promise.resolve('');
          },
        },
        validator: makeHttpKeyValidator({ baseUrls: { '*': base } }),
        graceSeconds: 60,
      });
      await expect(
        service.rotate({
          secretId: randomUUID(),
          value: new Secret(`canary-typo-${randomBytes(12).toString('hex')}`),
        }),
      ).rejects.toMatchObject({ code: 'invalid_input', field: 'value' });
      expect(calls).toEqual([]);
    });
  });
});

describe('mapLimit', () => {
  it('runs every item and collects failures without stopping the others', async () => {
    const r = await mapLimit([1, 2, 3, 4], 2, (n) =>
      n === 2 ? Promise.reject(new Error('x')) : Promise.resolve(n * 2),
    );
    expect(r.map((x) => x.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
  });
});

describe('rotation failure reasons are codes (finding 7: the detail stays in the log)', () => {
  const DETAIL = 'host key SHA256:AbCdEf0123 changed; unit cortex-agent@blue.service on port 18081';

  it('records a code for a failed and a rolled-back deployment, never the message; the log keeps the detail', async () => {
    const ids = [randomUUID(), randomUUID()];
    const world = fakeWorld(ids);
    const lines: string[] = [];
    const jl = makeLogger({ level: 'info' }, { write: (l: string) => void lines.push(l) });
    const swap: Swap = (_s, input) =>
      input.deploymentId === ids[0]
        ? Promise.reject(new OrchestratorError('remote_command_failed', DETAIL))
        : Promise.resolve({ mode: 'held-restart', healthy: false, reason: DETAIL });
    const j = makeRotationJob({
      rotations: world.store,
      store,
      leases,
      access,
      swap: swap as never,
      log: jl,
      concurrency: 2,
      holder: 'test',
    });
    const out = await run(j, true);
    expect(out.failed).toEqual([ids[0]]);
    expect(out.rolledBack).toEqual([ids[1]]);
    expect(world.rows.get(ids[0] as string)?.reason).toBe('remote_command_failed');
    expect(world.rows.get(ids[1] as string)?.reason).toBe('unhealthy');
    expect(JSON.stringify([...world.rows.values()])).not.toContain('SHA256');
    expect(lines.some((l) => l.includes('SHA256:AbCdEf0123'))).toBe(true);
  });

  it('a route back whose old instance did not answer through Caddy (rollback_unverified) is recorded apart from a clean rollback, and logged as an error', async () => {
    const ids = [randomUUID(), randomUUID()];
    const world = fakeWorld(ids);
    const lines: string[] = [];
    const jl = makeLogger({ level: 'info' }, { write: (l: string) => void lines.push(l) });
    const swap = (_s: unknown, input: { deploymentId: string }) =>
      Promise.resolve({
        mode: 'blue-green',
        healthy: false,
        reason: DETAIL,
        ...(input.deploymentId === ids[0] ? { code: 'rollback_unverified' } : {}),
      });
    const j = makeRotationJob({
      rotations: world.store,
      store,
      leases,
      access,
      swap: swap as never,
      log: jl,
      concurrency: 2,
      holder: 'test',
    });
    const out = await run(j, true);
    expect(out.rolledBack.sort()).toEqual([...ids].sort());
    expect(world.rows.get(ids[0] as string)?.reason).toBe('unhealthy_rollback_unverified');
    expect(world.rows.get(ids[1] as string)?.reason).toBe('unhealthy');
    const levels = lines.map((l) => JSON.parse(l) as { level: number; msg: string });
    expect(levels.filter((l) => l.level >= 50 && /did not answer through Caddy/.test(l.msg))).toHaveLength(1);
  });

  it('a deployment not running is recorded as deployment_<status>', async () => {
    const ids = [randomUUID()];
    const world = fakeWorld(ids);
    const j = makeRotationJob({
      rotations: world.store,
      store: {
        get: (id: string) => Promise.resolve({ id, status: 'failed', runtime: 'echo', steps: [] }),
      } as never,
      leases,
      access,
      swap: (() => Promise.reject(new Error('not called'))) as never,
      log,
      concurrency: 1,
      holder: 'test',
    });
    const out = await run(j, true);
    expect(out.skipped).toEqual(ids);
    expect(world.rows.get(ids[0] as string)?.reason).toBe('deployment_failed');
  });

  it('an error that is not ours is `unexpected`; a stored reason shows as its code only', () => {
    expect(rotationReasonCode(new OrchestratorError('timeout', 'x'))).toBe('timeout');
    expect(rotationReasonCode(new Error(DETAIL))).toBe('unexpected');
    expect(reasonCodeOf(null)).toBeNull();
    expect(reasonCodeOf('unhealthy')).toBe('unhealthy');
    // a record written before codes: its prefix, or `unexpected`
    expect(reasonCodeOf(`remote_command_failed: ${DETAIL}`)).toBe('remote_command_failed');
    expect(reasonCodeOf('deployment is deleted')).toBe('unexpected');
    expect(reasonCodeOf(DETAIL)).toBe('unexpected');
  });
});

describe('a rollback not verified is a health event (20261205120000_rotation_health_events)', () => {
  type Line = { level: number; msg: string; rotationId?: string; deploymentId?: string };
  const UNVERIFIED = { mode: 'blue-green', healthy: false, code: 'rollback_unverified' } as const;
  const setup = (ids: string[], initial: RotationDeploymentState = 'pending') => {
    const world = fakeWorld(ids, initial);
    const lines: string[] = [];
    const logged = (): Line[] => lines.map((l) => JSON.parse(l) as Line);
    const j = makeRotationJob({
      rotations: world.store,
      store,
      leases,
      access,
      swap: ((_s: unknown, input: { deploymentId: string }) =>
        Promise.resolve(
          input.deploymentId === ids[0]
            ? UNVERIFIED
            : input.deploymentId === ids[1]
              ? { mode: 'blue-green', healthy: false }
              : { mode: 'blue-green', healthy: true },
        )) as never,
      log: makeLogger({ level: 'info' }, { write: (l: string) => void lines.push(l) }),
      concurrency: 3,
      holder: 'test',
      healthRetryMs: [0, 0],
    });
    return { world, j, lines, logged };
  };
  const healthCalls = (w: ReturnType<typeof fakeWorld>) => w.calls.filter((c) => c.startsWith('health:'));

  it('records exactly one health event, after the rolled_back record; a clean rollback and a switch record none', async () => {
    const ids = [randomUUID(), randomUUID(), randomUUID()];
    const { world, j } = setup(ids);
    const out = await run(j);
    expect(out.state).toBe('completed');
    expect(out.rolledBack.sort()).toEqual([ids[0], ids[1]].sort());
    expect(world.rows.get(ids[1] as string)?.reason).toBe('unhealthy');
    expect(world.health).toEqual([
      { deploymentId: ids[0], rotationId: 'r1', reasonCode: 'rollback_unverified' },
    ]);
    expect(healthCalls(world)).toEqual([`health:${ids[0]}`]);
    const recorded = world.calls.indexOf(`rolled_back:${ids[0]}`);
    expect(recorded).toBeGreaterThanOrEqual(0);
    expect(world.calls.indexOf(`health:${ids[0]}`)).toBeGreaterThan(recorded);
  });

  it('a resumed deployment put back on an old environment that is not healthy either records one too', async () => {
    const ids = [randomUUID()];
    const world = fakeWorld(ids, 'switching');
    const j = makeRotationJob({
      rotations: world.store,
      store,
      leases,
      access,
      swap: (() => Promise.resolve({ mode: 'held-restart', healthy: false })) as never,
      log,
      concurrency: 1,
      holder: 'test',
    });
    const out = await run(j);
    expect(out.rolledBack).toEqual(ids);
    expect(world.health).toEqual([
      { deploymentId: ids[0], rotationId: 'r1', reasonCode: 'rollback_unverified' },
    ]);
  });

  it('a resumed deployment whose swap back to the old environment is healthy is a clean rollback, with no health event, whatever the first swap said (review R13 finding 2)', async () => {
    const ids = [randomUUID()];
    const world = fakeWorld(ids, 'switching');
    let n = 0;
    const j = makeRotationJob({
      rotations: world.store,
      store,
      leases,
      access,
      // the first swap (to the new version) routes back unverified; the explicit swap back is healthy
      swap: (() => Promise.resolve(n++ === 0 ? UNVERIFIED : { mode: 'blue-green', healthy: true })) as never,
      log,
      concurrency: 1,
      holder: 'test',
    });
    const out = await run(j);
    expect(n).toBe(2);
    expect(out.rolledBack).toEqual(ids);
    expect(world.rows.get(ids[0] as string)?.reason).toBe('unhealthy');
    expect(world.health).toEqual([]);
  });

  it('a failure a retry fixes is retried in place to exactly one event, the rotation recorded as it would be', async () => {
    const ids = [randomUUID(), randomUUID(), randomUUID()];
    const { world, j, logged } = setup(ids);
    world.healthFails.push(
      { err: new OrchestratorError('db_unavailable', 'database unreachable'), written: false },
      {
        err: new OrchestratorError('db_error', 'could not serialize access (SQLSTATE 40001)'),
        written: true,
      },
    );
    const out = await run(j);
    expect(healthCalls(world)).toHaveLength(3);
    expect(world.health).toEqual([
      { deploymentId: ids[0], rotationId: 'r1', reasonCode: 'rollback_unverified' },
    ]);
    expect(out.state).toBe('completed');
    expect(world.rows.get(ids[0] as string)).toEqual({
      state: 'rolled_back',
      reason: 'unhealthy_rollback_unverified',
    });
    expect(logged().filter((l) => /health event/.test(l.msg))).toEqual([]);
  });

  it.each([
    [
      'a transient failure on every try',
      () => new OrchestratorError('db_unavailable', 'database unreachable'),
      3,
    ],
    [
      'a missing function (42883), which no retry fixes',
      () => new OrchestratorError('db_error', 'function does not exist (SQLSTATE 42883)'),
      1,
    ],
    ['a refusal', () => new OrchestratorError('invalid_input', 'rotation_id: not rolled back unverified'), 1],
    ['an error that is not ours', () => new Error('boom'), 1],
  ])(
    'a failing record (%s) leaves the rotation as it would be, does not throw, and is logged as an error with both ids',
    async (_name, err, attempts) => {
      const ids = [randomUUID(), randomUUID(), randomUUID()];
      const clean = setup(ids);
      const cleanOut = await run(clean.j);
      const { world, j, logged } = setup(ids);
      world.healthFails.push(...Array.from({ length: 3 }, () => ({ err: err(), written: false })));
      const out = await run(j);
      expect(healthCalls(world)).toHaveLength(attempts);
      expect(world.health).toEqual([]);
      // what the rotation records and does: as with a record that worked
      expect(out).toEqual(cleanOut);
      expect(world.calls.filter((c) => !c.startsWith('health:'))).toEqual(
        clean.world.calls.filter((c) => !c.startsWith('health:')),
      );
      expect([...world.rows]).toEqual([...clean.world.rows]);
      expect([...world.pins]).toEqual([...clean.world.pins]);
      const errors = logged().filter(
        (l) => l.level >= 50 && /could not be recorded as a health event/.test(l.msg),
      );
      expect(errors.map((l) => [l.rotationId, l.deploymentId])).toEqual([['r1', ids[0]]]);
      expect(logged().some((l) => /rotation failed on this deployment/.test(l.msg))).toBe(false);
    },
  );
});

describe('revoke: the accepted request opens a revocation, audited with the caller (finding 1; review R7 finding 3)', () => {
  const REV = randomUUID();
  const service = (calls: string[]) =>
    makeRotationService({
      rotations: {
        secretBindings: () =>
          Promise.resolve({ provider: 'anthropic', status: 'active', deployments: [{ deploymentId: 'd' }] }),
        requestRevoke: (input: unknown, ctx: unknown) => {
          calls.push(`request ${JSON.stringify([input, ctx])}`);
          return Promise.resolve({ revocationId: REV, jobId: `revoke-${REV}`, existing: false });
        },
      } as unknown as RotationStore,
      queues: {
        enqueue: (q: string, d: unknown, key: string) => {
          calls.push(`enqueue ${q}-${key} ${JSON.stringify(d)}`);
          return Promise.resolve(`${q}-${key}`);
        },
      },
      validator: { validate: () => Promise.resolve({ status: 'unchecked' }) } as never,
      graceSeconds: 60,
    });

  it('opens the revocation (audited: actor, address, user agent) before its job is queued with its id alone', async () => {
    const calls: string[] = [];
    const ctx = { actor: 'token:t1', requestIp: '127.0.0.1', userAgent: 'ua/1' };
    const r = await service(calls).revoke({ secretId: SECRET, orgId: 'o' }, ctx);
    expect(r).toEqual({ jobId: `revoke-${REV}`, revocationId: REV, deployments: 1 });
    expect(calls).toEqual([
      `request ${JSON.stringify([{ secretId: SECRET, orgId: 'o' }, ctx])}`,
      `enqueue revoke-${REV} ${JSON.stringify({ revocationId: REV })}`,
    ]);
  });

  it('an internal caller with no actor still opens the revocation, as the orchestrator', async () => {
    const calls: string[] = [];
    await service(calls).revoke({ secretId: SECRET });
    expect(calls).toEqual([
      `request ${JSON.stringify([{ secretId: SECRET }, { actor: 'orchestrator' }])}`,
      `enqueue revoke-${REV} ${JSON.stringify({ revocationId: REV })}`,
    ]);
  });
});
