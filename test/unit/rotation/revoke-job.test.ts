import { reasonCodeOf } from '../../../orchestrator/rotation/rotation-common';
import { randomUUID } from 'node:crypto';
import { OrchestratorError } from '../../../orchestrator/errors';
import type { DeploymentStatus } from '../../../orchestrator/deployments/deployment-store';
import { makeLogger } from '../../../orchestrator/log';
import { healthRetryable } from '../../../orchestrator/rotation/health-retry';
import { makeRevokeJob, type RevokeJobDeps } from '../../../orchestrator/rotation/revoke-job';
import type { RotationStore } from '../../../orchestrator/rotation/rotation-store';
import { Secret } from '../../../orchestrator/secret';
import { swapAgentEnvironment, type AgentSwapOptions } from '../../../orchestrator/steps/agent-swap';
import { slotEnvFilePath } from '../../../templates/agent-slots';
import { GREEN_PORT, makeSwapHost } from '../../support/fake-swap-host';

/**
 * The revoke job marks a running deployment `rotating` while it swaps the agent onto its
 * environment without the secret, and sets it `ready` again afterwards, also when the swap fails
 * (issue 11: rotate did, revoke did not). The fake deployment store keeps the status machine of
 * deployments__guard_status for the statuses involved (ready ⇄ rotating, rotating → deprovisioning),
 * so an illegal move fails here as it would in Postgres.
 */
const log = makeLogger({ level: 'silent' });
const SECRET = randomUUID();
const OTHER = randomUUID();
const REVOCATION = randomUUID();

const NEXT: Partial<Record<DeploymentStatus, DeploymentStatus[]>> = {
  ready: ['rotating', 'deprovisioning'],
  rotating: ['ready', 'deprovisioning'],
  failed: ['provisioning', 'deprovisioning'],
};

/** This run's provision wrote the env file (its `secrets` step done), or not. */
const SECRETS_DONE = [{ run: 1, operation: 'provision', step: 'secrets', status: 'succeeded' }];

const world = (initial: DeploymentStatus, steps: readonly object[] = [], whole = false) => {
  const id = randomUUID();
  const finished: { done: boolean; result: unknown }[] = [];
  /** Bound to the secret after the job listed its deployments (what bind now refuses). */
  const lateBound: string[] = [];
  let listed = 0;
  const status = { value: initial };
  const reopened: string[] = [];
  const history: DeploymentStatus[] = [initial];
  const bound = new Set<string>([SECRET, OTHER]);
  /** Health events recorded (deployment_events__record_health), with the status at the time. */
  const health: {
    deploymentId: string;
    revocationId: string;
    reasonCode: string;
    status: DeploymentStatus;
  }[] = [];
  /** Errors the next recordHealth calls throw, in order (after their event is written, or not). */
  const healthFails: { err: Error; written: boolean }[] = [];
  const store: RevokeJobDeps['store'] = {
    get: () => Promise.resolve({ id, status: status.value, runtime: 'echo', steps, currentRun: 1 } as never),
    reopenSteps: (_d: string, steps: readonly string[]) => {
      reopened.push(steps.join(','));
      return Promise.resolve(2);
    },
    setStatus: (_d: string, to: DeploymentStatus) => {
      if (!(NEXT[status.value] ?? []).includes(to))
        return Promise.reject(new OrchestratorError('invalid_input', `status: ${status.value} -> ${to}`));
      status.value = to;
      history.push(to);
      return Promise.resolve();
    },
  };
  const rotations = {
    bindings: () =>
      Promise.resolve(
        [...bound].map((secretId) => ({
          envVar: secretId === SECRET ? 'ANTHROPIC_API_KEY' : 'OPENAI_API_KEY',
          secretId,
          version: 1,
          pinned: false,
        })),
      ),
    readVersions: (_d: string, wanted: { secretId: string; version: number }[]) =>
      Promise.resolve(
        wanted.map((w) => ({
          envVar: w.secretId === SECRET ? 'ANTHROPIC_API_KEY' : 'OPENAI_API_KEY',
          secretId: w.secretId,
          version: w.version,
          value: new Secret(`value-of-${w.secretId}`),
        })),
      ),
    secretBindings: () =>
      Promise.resolve({
        secretId: SECRET,
        orgId: 'o',
        provider: 'anthropic',
        status: 'active',
        currentVersion: 1,
        maxAgeSeconds: null,
        deployments: [
          ...(bound.has(SECRET)
            ? [{ deploymentId: id, status: status.value, envVars: ['ANTHROPIC_API_KEY'] }]
            : []),
          ...(listed++ > 0
            ? lateBound.map((d) => ({
                deploymentId: d,
                status: 'provisioning',
                envVars: ['ANTHROPIC_API_KEY'],
              }))
            : []),
        ],
      }),
    revokeBindings: (secretId: string, _d: string | undefined, revocationId: string) => {
      if (revocationId !== REVOCATION) return Promise.reject(new Error('another revocation'));
      bound.delete(secretId);
      return Promise.resolve({ bindings_removed: 1 });
    },
    // the contract of deployment_events__record_health: only under the open revocation, while the
    // secret is still bound and the deployment runs its agent; once per (revocation, deployment)
    recordHealth: (d: string, revocationId: string, reasonCode: string) => {
      if (revocationId !== REVOCATION || d !== id || !bound.has(SECRET))
        return Promise.reject(
          new OrchestratorError('invalid_input', 'revocation_id: not an open revocation'),
        );
      if (status.value !== 'ready' && status.value !== 'rotating')
        return Promise.reject(new OrchestratorError('invalid_input', 'deployment_id: runs no agent'));
      const fail = healthFails.shift();
      const existing = health.some((h) => h.deploymentId === d && h.revocationId === revocationId);
      if (!existing && (!fail || fail.written))
        health.push({ deploymentId: d, revocationId, reasonCode, status: status.value });
      if (fail) return Promise.reject(fail.err);
      return Promise.resolve({ eventId: String(health.length), existing });
    },
    revocation: () =>
      Promise.resolve({
        id: REVOCATION,
        orgId: 'o',
        secretId: SECRET,
        deploymentId: whole ? null : id,
        state: 'open',
      }),
    finishRevocation: (_r: string, done: boolean, result: unknown) => {
      finished.push({ done, result });
      return Promise.resolve({});
    },
  } as unknown as RotationStore;
  return { id, status, history, bound, store, rotations, reopened, finished, lateBound, health, healthFails };
};

type Swap = (
  shell: unknown,
  input: { env: ReadonlyMap<string, Secret> },
  opts: Record<string, unknown>,
) => Promise<unknown>;

const run = (
  w: ReturnType<typeof world>,
  swap: Swap,
  finalAttempt = true,
  scrub?: () => Promise<void>,
  held: () => boolean = () => true,
) =>
  makeRevokeJob({
    ...(scrub ? { scrub } : {}),
    rotations: w.rotations,
    secrets: { revoke: () => Promise.resolve(undefined as never) },
    store: w.store,
    leases: {
      acquire: (d: string) => Promise.resolve({ deploymentId: d, held, release: () => Promise.resolve() }),
    } as never,
    access: { connect: () => Promise.resolve({ shell: { close: () => Promise.resolve() } }) } as never,
    swap: swap as never,
    log,
    concurrency: 4,
    holder: 'test',
  }).run({
    revocationId: REVOCATION,
    jobId: 'revoke-x',
    signal: new AbortController().signal,
    finalAttempt,
  });

describe('revoke job: the deployment shows `rotating` while its agent is swapped', () => {
  it('is `rotating` during the swap and `ready` after it; the binding is removed', async () => {
    const w = world('ready');
    const during: DeploymentStatus[] = [];
    const envs: string[][] = [];
    const out = await run(w, (_s, input) => {
      during.push(w.status.value);
      envs.push([...input.env.keys()]);
      return Promise.resolve({ mode: 'blue-green', healthy: true });
    });
    expect(during).toEqual(['rotating']);
    expect(envs).toEqual([['OPENAI_API_KEY']]);
    expect(w.history).toEqual(['ready', 'rotating', 'ready']);
    expect(w.bound.has(SECRET)).toBe(false);
    expect(out.revoked).toEqual([w.id]);
  });

  it('an agent not healthy without the secret: restarted in place without it anyway (held restart, kept unhealthy), the binding removed, reported unhealthy, `ready` again', async () => {
    const w = world('ready');
    const during: DeploymentStatus[] = [];
    const calls: unknown[] = [];
    const out = await run(w, (_shell: unknown, _input: unknown, opts: Record<string, unknown>) => {
      during.push(w.status.value);
      calls.push({ mode: opts.mode, keepUnhealthy: opts.keepUnhealthy });
      return Promise.resolve(
        opts.keepUnhealthy
          ? {
              mode: 'held-restart',
              healthy: false,
              reason: 'not healthy on port 18790',
              code: 'kept_unhealthy',
            }
          : { mode: 'blue-green', healthy: false, reason: 'health check timed out' },
      );
    });
    // first the normal swap (its runtime's mode, the old environment put back on failure), then
    // the forced one
    expect(calls).toEqual([
      { mode: undefined, keepUnhealthy: undefined },
      { mode: 'held-restart', keepUnhealthy: true },
    ]);
    expect(during).toEqual(['rotating', 'rotating']);
    expect(w.history).toEqual(['ready', 'rotating', 'ready']);
    expect(w.bound.has(SECRET)).toBe(false);
    expect(out.revoked).toEqual([w.id]);
    expect(out.failed).toEqual([]);
    // a code only (the record is readable by org members); the detail goes to the log
    expect(out.unhealthy).toEqual([{ deploymentId: w.id, reason: 'kept_unhealthy' }]);
  });

  it('the forced restart recovers (a flaky first swap): revoked, nothing reported unhealthy', async () => {
    const w = world('ready');
    const out = await run(w, (_shell: unknown, _input: unknown, opts: Record<string, unknown>) =>
      Promise.resolve(
        opts.keepUnhealthy
          ? { mode: 'held-restart', healthy: true }
          : { mode: 'blue-green', healthy: false, reason: 'x' },
      ),
    );
    expect(w.bound.has(SECRET)).toBe(false);
    expect([out.revoked, out.unhealthy, out.failed]).toEqual([[w.id], [], []]);
  });

  it('the forced restart throws (the env file not written): the binding kept, `ready` again, retried', async () => {
    const w = world('ready');
    await expect(
      run(
        w,
        (_shell: unknown, _input: unknown, opts: Record<string, unknown>) =>
          opts.keepUnhealthy
            ? Promise.reject(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }))
            : Promise.resolve({ mode: 'blue-green', healthy: false, reason: 'x' }),
        false,
      ),
    ).rejects.toThrow('still hold');
    expect(w.history).toEqual(['ready', 'rotating', 'ready']);
    expect(w.bound.has(SECRET)).toBe(true);
  });

  it('a swap that throws (SSH dropped): `ready` again before the error reaches the retry', async () => {
    const w = world('ready');
    await expect(
      run(w, () => Promise.reject(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' })), false),
    ).rejects.toThrow('still hold');
    expect(w.history).toEqual(['ready', 'rotating', 'ready']);
    expect(w.bound.has(SECRET)).toBe(true);
  });

  it('a deprovision requested during the swap is not undone', async () => {
    const w = world('ready');
    await run(w, async () => {
      await w.store.setStatus(w.id, 'deprovisioning');
      return { mode: 'blue-green', healthy: true };
    });
    expect(w.status.value).toBe('deprovisioning');
    expect(w.history).toEqual(['ready', 'rotating', 'deprovisioning']);
  });

  it('a `rotating` a crashed attempt left behind is cleared', async () => {
    const w = world('rotating');
    await run(w, () => Promise.resolve({ mode: 'blue-green', healthy: true }));
    expect(w.history).toEqual(['rotating', 'ready']);
  });

  it('a deployment running no agent only loses the binding; its status is not touched', async () => {
    const w = world('failed');
    let swapped = false;
    await run(w, () => {
      swapped = true;
      return Promise.resolve({ mode: 'blue-green', healthy: true });
    });
    expect(swapped).toBe(false);
    expect(w.history).toEqual(['failed']);
    expect(w.bound.has(SECRET)).toBe(false);
  });
});

/** The first swap unhealthy (the old environment put back), the forced one kept unhealthy. */
const keptUnhealthy: Swap = (_shell, _input, opts) =>
  Promise.resolve(
    opts.keepUnhealthy
      ? { mode: 'held-restart', healthy: false, reason: 'not healthy on port 18790', code: 'kept_unhealthy' }
      : { mode: 'blue-green', healthy: false, reason: 'health check timed out' },
  );

describe('revoke job: an agent kept running unhealthy without the key is a health event (review R8 #5)', () => {
  it('kept_unhealthy: one health event, recorded while the binding exists and the deployment shows `rotating`', async () => {
    const w = world('ready');
    const out = await run(w, keptUnhealthy);
    expect(w.health).toEqual([
      { deploymentId: w.id, revocationId: REVOCATION, reasonCode: 'kept_unhealthy', status: 'rotating' },
    ]);
    expect(out.unhealthy).toEqual([{ deploymentId: w.id, reason: 'kept_unhealthy' }]);
    expect(w.bound.has(SECRET)).toBe(false);
    expect(w.history).toEqual(['ready', 'rotating', 'ready']);
  });

  it('a re-run after a cut past the swap finds the agent already without the key, not answering through Caddy (requested_unverified): revoked, kept unhealthy, not "still holds it" (review R14 finding 4)', async () => {
    const w = world('rotating');
    let caddyDown = false;
    const h = makeSwapHost({ caddyFails: () => caddyDown });
    const swap = (_s: unknown, input: Parameters<typeof swapAgentEnvironment>[1], o: AgentSwapOptions) =>
      swapAgentEnvironment(h.shell, input, { ...o, healthTimeoutMs: 2_000, drainSeconds: 1 });
    const codes: (string | undefined)[] = [];
    const recording: Swap = async (sh, input, o) => {
      const r = await swap(sh, input as never, o as AgentSwapOptions);
      codes.push(r.code);
      return r;
    };
    // as provisioned: blue runs with both keys (the positive control for the oracle below)
    h.fake.files.set(slotEnvFilePath('blue'), {
      content: Buffer.from(`ANTHROPIC_API_KEY="value-of-${SECRET}"\nOPENAI_API_KEY="value-of-${OTHER}"\n`),
      mode: 0o600,
      uid: 0,
      gid: 0,
    });
    await h.fake.shell.exec(['systemctl', 'restart', 'cortex-agent@blue.service']);
    expect(h.fake.files.get(slotEnvFilePath('blue'))?.content.toString()).toContain(`value-of-${SECRET}`);
    // the cut attempt: the agent moved onto the environment without the key, then the worker died
    const without = new Map([['OPENAI_API_KEY', new Secret(`value-of-${OTHER}`)]]);
    expect(await swap(h.shell, { deploymentId: w.id, runtime: 'echo', env: without }, {})).toMatchObject({
      healthy: true,
      slot: 'green',
    });
    caddyDown = true;
    const out = await run(w, recording);
    expect(codes).toEqual(['requested_unverified', 'requested_unverified']);
    // the oracle: the host serves green without the key, nothing of the old environment left
    expect(h.route()).toBe(GREEN_PORT);
    const files = [...h.fake.files].filter(([f]) => f.startsWith('/etc/cortex/'));
    expect(files.map(([f]) => f).sort()).toEqual(['/etc/cortex/active-slot', slotEnvFilePath('green')]);
    expect(files.map(([, v]) => v.content.toString()).join('')).not.toContain(`value-of-${SECRET}`);
    expect(out.failed).toEqual([]);
    expect(w.bound.has(SECRET)).toBe(false);
    expect(out.unhealthy).toEqual([{ deploymentId: w.id, reason: 'kept_unhealthy' }]);
    expect(w.health).toEqual([
      { deploymentId: w.id, revocationId: REVOCATION, reasonCode: 'kept_unhealthy', status: 'rotating' },
    ]);
  });

  it('a held restart whose restore was cut after the old env file was put back: the re-run finds the process without the key and rewrites the file too, so no file keeps the revoked key (review R16 finding 1)', async () => {
    const w = world('ready');
    const h = makeSwapHost({ caddyFails: () => true });
    const file = (): string => h.fake.files.get(slotEnvFilePath('blue'))?.content.toString() ?? '';
    // as provisioned: blue runs with both keys
    h.fake.files.set(slotEnvFilePath('blue'), {
      content: Buffer.from(`ANTHROPIC_API_KEY="value-of-${SECRET}"\nOPENAI_API_KEY="value-of-${OTHER}"\n`),
      mode: 0o600,
      uid: 0,
      gid: 0,
    });
    await h.fake.shell.exec(['systemctl', 'restart', 'cortex-agent@blue.service']);
    // the cut: once the restore's `mv <previous> <file>` ran, the connection is lost
    let moved = false;
    let cut = true;
    const exec = h.fake.shell.exec.bind(h.fake.shell);
    h.fake.shell.exec = (argv, o) => {
      if (cut && argv[0] === 'mv') moved = true;
      else if (cut && moved) {
        cut = false;
        return Promise.reject(new OrchestratorError('remote_command_failed', 'ssh: connection lost'));
      }
      return exec(argv, o);
    };
    // an openclaw-like runtime: every swap a held restart
    const swap: Swap = (_s, input, o) =>
      swapAgentEnvironment(h.shell, input as never, {
        ...(o as AgentSwapOptions),
        mode: 'held-restart',
        healthTimeoutMs: 2_000,
        drainSeconds: 1,
      });
    await expect(run(w, swap, false)).rejects.toThrow();
    // after the cut: the file holds the key again, the process runs without it
    expect(file()).toContain(`value-of-${SECRET}`);
    expect(w.bound.has(SECRET)).toBe(true);
    const out = await run(w, swap);
    expect(out.failed).toEqual([]);
    expect(w.bound.has(SECRET)).toBe(false);
    // the binding is gone: so is the key, from every file on the host
    const files = [...h.fake.files].filter(([f]) => f.startsWith('/etc/cortex/'));
    expect(files.map(([, v]) => v.content.toString()).join('')).not.toContain(`value-of-${SECRET}`);
    expect(file()).toContain(`value-of-${OTHER}`);
  });

  it('a healthy revoke, and a forced restart that recovers, record no health event', async () => {
    const healthy = world('ready');
    await run(healthy, () => Promise.resolve({ mode: 'blue-green', healthy: true }));
    const recovered = world('ready');
    await run(recovered, (_shell, _input, opts) =>
      Promise.resolve(
        opts.keepUnhealthy ? { mode: 'held-restart', healthy: true } : { mode: 'blue-green', healthy: false },
      ),
    );
    expect([healthy.health, recovered.health]).toEqual([[], []]);
    expect([healthy.bound.has(SECRET), recovered.bound.has(SECRET)]).toEqual([false, false]);
  });

  it('the record fails transiently: `ready` again, the binding kept, the job retried; the retry records it, once', async () => {
    const w = world('ready');
    // the first call's event committed but its answer was lost; the second's did not commit
    w.healthFails.push(
      { err: Object.assign(new Error('connection reset'), { code: 'ECONNRESET' }), written: true },
      { err: new OrchestratorError('db_unavailable', 'the database is restarting'), written: false },
    );
    await expect(run(w, keptUnhealthy, false)).rejects.toThrow('still hold');
    expect(w.history).toEqual(['ready', 'rotating', 'ready']);
    expect(w.bound.has(SECRET)).toBe(true);
    await expect(run(w, keptUnhealthy, false)).rejects.toThrow('still hold');
    expect(w.bound.has(SECRET)).toBe(true);
    const out = await run(w, keptUnhealthy, false);
    expect(w.health).toHaveLength(1);
    expect(w.bound.has(SECRET)).toBe(false);
    expect(out.unhealthy).toEqual([{ deploymentId: w.id, reason: 'kept_unhealthy' }]);
    expect(w.status.value).toBe('ready');
  });

  it('the record refused (a permanent error): logged, and the revoke goes on (the binding removed, the whole secret deleted)', async () => {
    const w = world('ready', [], true);
    w.healthFails.push({
      err: new OrchestratorError('invalid_input', 'revocation_id: refused'),
      written: false,
    });
    const out = await run(w, keptUnhealthy);
    expect(w.health).toEqual([]);
    expect(w.bound.has(SECRET)).toBe(false);
    expect(out).toMatchObject({ open: false, vaultDeleted: true, failed: [] });
    expect(out.unhealthy).toEqual([{ deploymentId: w.id, reason: 'kept_unhealthy' }]);
  });

  it('the record fails in a way no retry fixes (the function or its grant missing: review R12 finding 1): logged, and the revoke goes on', async () => {
    for (const err of [
      new OrchestratorError(
        'db_error',
        'deployment_events__record_health: function does not exist (SQLSTATE 42883)',
      ),
      new OrchestratorError(
        'internal',
        'deployment_events__record_health: permission denied (SQLSTATE 42501)',
      ),
    ]) {
      const w = world('ready', [], true);
      w.healthFails.push({ err, written: false });
      const out = await run(w, keptUnhealthy, false);
      expect(w.health).toEqual([]);
      expect(w.bound.has(SECRET)).toBe(false);
      expect(out).toMatchObject({ open: false, vaultDeleted: true, failed: [] });
    }
  });

  it('which failures of the record are retried', () => {
    const db = (sqlstate: string) => new OrchestratorError('db_error', `f: x (SQLSTATE ${sqlstate})`);
    expect(
      [
        new OrchestratorError('db_unavailable', 'down'),
        new OrchestratorError('timeout', 'slow'),
        db('40001'),
        db('40P01'),
        db('57014'),
        Object.assign(new Error('reset'), { code: 'ECONNRESET' }),
      ].map(healthRetryable),
    ).toEqual([true, true, true, true, true, true]);
    expect(
      [
        db('42883'),
        db('XX000'),
        new OrchestratorError('internal', 'grant'),
        new OrchestratorError('invalid_input', 'revocation_id: refused'),
        new OrchestratorError('not_found', 'gone'),
        new Error('bug'),
        Object.assign(new Error('x'), { code: '42883' }),
      ].map(healthRetryable),
    ).toEqual([false, false, false, false, false, false, false]);
  });
});

describe('revoke job: a deployment that runs no agent but whose host holds the secret', () => {
  it('failed past its secrets step: the value taken off its host, its steps from secrets reopened, then the binding removed', async () => {
    const w = world('failed', SECRETS_DONE);
    const order: string[] = [];
    const out = await run(
      w,
      () => Promise.reject(new Error('no swap: it runs no agent')),
      true,
      () => {
        order.push(`scrub (bound: ${w.bound.has(SECRET)})`);
        return Promise.resolve();
      },
    );
    expect(order).toEqual(['scrub (bound: true)']);
    expect(w.reopened).toEqual(['secrets,start,health,ready']);
    expect(w.bound.has(SECRET)).toBe(false);
    expect(out.revoked).toEqual([w.id]);
    expect(w.history).toEqual(['failed']);
  });

  it('failed past its secrets step, host unreachable: the binding is kept and the deployment reported (its retry would start the agent on the secret)', async () => {
    const w = world('failed', SECRETS_DONE);
    const out = await run(
      w,
      () => Promise.reject(new Error('no swap')),
      true,
      () => Promise.reject(new OrchestratorError('ssh_connect_failed', 'no route to host')),
    );
    expect(w.bound.has(SECRET)).toBe(true);
    expect(out.failed.map((f) => f.deploymentId)).toEqual([w.id]);
  });

  it('provisioning past its secrets step: not revoked yet (busy), the binding kept for the retry', async () => {
    const w = world('provisioning', SECRETS_DONE);
    const out = await run(
      w,
      () => Promise.reject(new Error('no swap')),
      true,
      () => Promise.reject(new Error('no scrub')),
    );
    expect(w.bound.has(SECRET)).toBe(true);
    expect(out.failed.map((f) => [f.deploymentId, f.reason])).toEqual([
      [w.id, expect.stringContaining('provisioning past its secrets step')],
    ]);
  });

  it('failed before its secrets step (no env file written): only the binding goes', async () => {
    const w = world('failed');
    const out = await run(
      w,
      () => Promise.reject(new Error('no swap')),
      true,
      () => Promise.reject(new Error('no scrub')),
    );
    expect(w.bound.has(SECRET)).toBe(false);
    expect(w.reopened).toEqual([]);
    expect(out.revoked).toEqual([w.id]);
  });

  it('a whole-secret revoke with a deployment provisioning past its secrets step: the secret is NOT deleted (its binding would go with it and that host be lost); reported, the revocation left open', async () => {
    const w = world('provisioning', SECRETS_DONE, true);
    const deleted: string[] = [];
    const out = await makeRevokeJob({
      rotations: w.rotations,
      secrets: {
        revoke: (id: string) => {
          deleted.push(id);
          return Promise.resolve(undefined as never);
        },
      },
      store: w.store,
      leases: {
        acquire: (d: string) =>
          Promise.resolve({ deploymentId: d, held: () => true, release: () => Promise.resolve() }),
      } as never,
      access: { connect: () => Promise.reject(new Error('not called')) } as never,
      swap: (() => Promise.reject(new Error('not called'))) as never,
      log,
      concurrency: 4,
      holder: 'test',
    }).run({
      revocationId: REVOCATION,
      jobId: 'revoke-all',
      signal: new AbortController().signal,
      finalAttempt: true,
    });
    expect(deleted).toEqual([]);
    expect(out.vaultDeleted).toBe(false);
    expect(out.open).toBe(true);
    expect(w.finished.map((f) => f.done)).toEqual([false]);
    expect(w.bound.has(SECRET)).toBe(true);
    expect(out.failed.map((f) => f.deploymentId)).toEqual([w.id]);
  });

  it('a busy deployment is waited for (its lease), then revoked', async () => {
    const w = world('ready');
    let tries = 0;
    const out = await makeRevokeJob({
      rotations: w.rotations,
      secrets: { revoke: () => Promise.resolve(undefined as never) },
      store: w.store,
      leases: {
        acquire: (d: string) =>
          Promise.resolve(
            ++tries < 3 ? undefined : { deploymentId: d, held: () => true, release: () => Promise.resolve() },
          ),
      } as never,
      access: { connect: () => Promise.resolve({ shell: { close: () => Promise.resolve() } }) } as never,
      swap: (() => Promise.resolve({ mode: 'blue-green', healthy: true })) as never,
      log,
      concurrency: 1,
      holder: 'test',
      leaseWaitMs: 10_000,
    }).run({
      revocationId: REVOCATION,
      jobId: 'revoke-x',
      signal: new AbortController().signal,
      finalAttempt: true,
    });
    expect(tries).toBe(3);
    expect(out.revoked).toEqual([w.id]);
  });
});

describe('revoke job: the revocation it carries the id of (review R7 findings 3, 4, 5)', () => {
  const wholeJob = (w: ReturnType<typeof world>, deleted: string[], swap?: Swap) =>
    makeRevokeJob({
      rotations: w.rotations,
      secrets: {
        revoke: (id: string, revocationId: string) => {
          deleted.push(`${id} ${revocationId}`);
          return Promise.resolve(undefined as never);
        },
      },
      store: w.store,
      leases: {
        acquire: (d: string) =>
          Promise.resolve({ deploymentId: d, held: () => true, release: () => Promise.resolve() }),
      } as never,
      access: { connect: () => Promise.resolve({ shell: { close: () => Promise.resolve() } }) } as never,
      swap: (swap ?? (() => Promise.resolve({ mode: 'blue-green', healthy: true }))) as never,
      log,
      concurrency: 4,
      holder: 'test',
    });
  const go = (job: ReturnType<typeof wholeJob>) =>
    job.run({
      revocationId: REVOCATION,
      jobId: 'revoke-w',
      signal: new AbortController().signal,
      finalAttempt: true,
    });

  it('a whole-secret revoke: every deployment off the key, then the vault, under the revocation; done', async () => {
    const w = world('ready', [], true);
    const deleted: string[] = [];
    const out = await go(wholeJob(w, deleted));
    expect(out.revoked).toEqual([w.id]);
    expect(deleted).toEqual([`${SECRET} ${REVOCATION}`]);
    expect(out).toMatchObject({
      vaultDeleted: true,
      open: false,
      revocationId: REVOCATION,
      secretId: SECRET,
    });
    expect(w.finished).toEqual([{ done: true, result: expect.objectContaining({ vault_deleted: true }) }]);
  });

  it('a deployment bound after the job listed them (finding 4): the vault copy stays, the deployment is named, the revocation stays open', async () => {
    const w = world('ready', [], true);
    const late = randomUUID();
    w.lateBound.push(late);
    const deleted: string[] = [];
    const out = await go(wholeJob(w, deleted));
    expect(deleted).toEqual([]);
    expect(out.vaultDeleted).toBe(false);
    expect(out.open).toBe(true);
    expect(out.failed.map((f) => f.deploymentId)).toEqual([late]);
    // a reason code the API can show (GET /v1/revocations/:id shows codes only)
    expect(out.failed.map((f) => reasonCodeOf(f.reason))).toEqual(['bound_during_revoke']);
    expect(w.finished.map((f) => f.done)).toEqual([false]);
  });

  it('a host out of reach on the last attempt: the vault copy stays, the binding stays, the revocation stays open for the sweep; the record keeps the code only (review R8 #2, #4)', async () => {
    const w = world('ready', [], true);
    const deleted: string[] = [];
    const out = await go(
      wholeJob(w, deleted, () =>
        Promise.reject(new OrchestratorError('ssh_connect_failed', 'no route to host 10.213.0.9:22')),
      ),
    );
    expect(deleted).toEqual([]);
    expect(w.bound.has(SECRET)).toBe(true);
    expect(out).toMatchObject({ vaultDeleted: false, open: true });
    expect(out.failed.map((f) => f.deploymentId)).toEqual([w.id]);
    expect(w.finished).toEqual([
      {
        done: false,
        result: expect.objectContaining({
          failed: [{ deploymentId: w.id, reason: 'ssh_connect_failed' }],
          failed_count: 1,
          vault_deleted: false,
        }),
      },
    ]);
    expect(JSON.stringify(w.finished)).not.toContain('10.213.0.9');
  });

  it('a forced restart that changed nothing (not healthy, not kept_unhealthy: its first look failed) keeps the binding and the revocation open (review R8 #1)', async () => {
    const w = world('ready', [], true);
    const deleted: string[] = [];
    const out = await go(
      wholeJob(w, deleted, () =>
        Promise.resolve({ mode: 'held-restart', healthy: false, reason: "Caddy's admin API did not answer" }),
      ),
    );
    expect(w.bound.has(SECRET)).toBe(true);
    expect(deleted).toEqual([]);
    expect(out.revoked).toEqual([]);
    expect(out.unhealthy).toEqual([]);
    expect(out.failed.map((f) => f.deploymentId)).toEqual([w.id]);
    expect(out.open).toBe(true);
  });

  it('a revocation already done: nothing revoked, nothing deleted', async () => {
    const w = world('ready', [], true);
    const rotations = {
      ...w.rotations,
      revocation: () =>
        Promise.resolve({ id: REVOCATION, orgId: 'o', secretId: SECRET, deploymentId: null, state: 'done' }),
    } as unknown as RotationStore;
    const deleted: string[] = [];
    const out = await go(wholeJob({ ...w, rotations }, deleted));
    expect(out).toMatchObject({ revoked: [], vaultDeleted: false, open: false });
    expect(deleted).toEqual([]);
    expect(w.bound.has(SECRET)).toBe(true);
  });

  it('an id no revocation has (a forged job): not_found, nothing touched', async () => {
    const w = world('ready', [], true);
    const rotations = {
      ...w.rotations,
      revocation: () => Promise.reject(new OrchestratorError('not_found', 'revocation x not found')),
    } as unknown as RotationStore;
    const deleted: string[] = [];
    await expect(go(wholeJob({ ...w, rotations }, deleted))).rejects.toMatchObject({ code: 'not_found' });
    expect(deleted).toEqual([]);
    expect(w.bound.has(SECRET)).toBe(true);
    expect(w.history).toEqual(['ready']);
  });
});

// Review R28 finding 1: the lease fences each swap on the host, as in the rotate job (R25 F4, R27 F5)
describe('revoke job: no swap without the deployment lease', () => {
  const unhealthyThenKept: Swap = (_s, _i, opts) =>
    Promise.resolve(
      opts.keepUnhealthy
        ? { mode: 'held-restart', healthy: false, code: 'kept_unhealthy' }
        : { mode: 'blue-green', healthy: false, reason: 'health check timed out' },
    );

  it('a lease lost before the swap: no swap, the binding kept, not revoked', async () => {
    const w = world('ready');
    let swaps = 0;
    const out = await run(
      w,
      (...a) => {
        swaps++;
        return unhealthyThenKept(...a);
      },
      false,
      undefined,
      () => false,
    ).catch((e: unknown) => e);
    expect(swaps).toBe(0);
    expect(w.bound.has(SECRET)).toBe(true);
    expect(out).not.toMatchObject({ revoked: [w.id] });
  });

  it('a lease lost during the first swap: no forced restart without it, the binding kept, not revoked', async () => {
    const w = world('ready');
    let checks = 0;
    let swaps = 0;
    const out = await run(
      w,
      (...a) => {
        swaps++;
        return unhealthyThenKept(...a);
      },
      false,
      undefined,
      () => ++checks <= 1,
    ).catch((e: unknown) => e);
    expect(swaps).toBe(1);
    expect(w.bound.has(SECRET)).toBe(true);
    expect(out).not.toMatchObject({ revoked: [w.id] });
  });
});
