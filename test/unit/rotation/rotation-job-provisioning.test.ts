import { randomUUID } from 'node:crypto';
import { OrchestratorError } from '../../../orchestrator/errors';
import type {
  Deployment,
  DeploymentStatus,
  StepRecord,
} from '../../../orchestrator/deployments/deployment-store';
import { makeLogger } from '../../../orchestrator/log';
import { makeRotationJob } from '../../../orchestrator/rotation/rotation-job';
import type {
  Rotation,
  RotationDeploymentState,
  RotationStore,
} from '../../../orchestrator/rotation/rotation-store';
import { Secret } from '../../../orchestrator/secret';

/**
 * A deployment that is not running an agent when the rotation reaches it (issue 11, open point:
 * one past its `secrets` step was `skipped` and kept the old key until its next provision or
 * rotation). Now:
 * - provisioning, this run's `secrets` step done (its env file holds the old version, and the
 *   resumed provision will not write it again): left pending, even by the last attempt, and
 *   switched by the retry that finds it ready;
 * - failed past its `secrets` step: recorded `failed`, i.e. pinned to the old version its host
 *   holds (so that version is not retired under it and the next rotation moves it);
 * - not yet past `secrets` (requested, or provisioning before it): `skipped`, following the
 *   current version, which its `secrets` step reads.
 * The fake keeps the state machine of secret_rotation_deployments__set_state and its pins.
 */
const log = makeLogger({ level: 'silent' });
const SECRET = randomUUID();
const VALUES: Record<number, string> = { 1: 'old-value-xxxxxxxxxxxxxxxx', 2: 'new-value-xxxxxxxxxxxxxxxx' };

const step = (run: number, name: string, status: StepRecord['status']): StepRecord => ({
  run,
  operation: 'provision',
  step: name,
  status,
  attempt: 1,
  startedAt: null,
  finishedAt: null,
  durationMs: null,
  error: null,
});

const world = (
  dep: { status: DeploymentStatus; steps: StepRecord[]; currentRun?: number },
  /** What taking the environment off the host does: throws this error, or succeeds. */
  scrubError?: Error,
  reopenError?: Error,
) => {
  const id = randomUUID();
  const reopened: string[] = [];
  const order: string[] = [];
  let scrubbed = 0;
  const d = { ...dep, currentRun: dep.currentRun ?? 1 };
  let state: RotationDeploymentState = 'pending';
  let pin: number | null = null;
  let completed = false;
  const allowed: Record<string, RotationDeploymentState[]> = {
    pending: ['switching', 'skipped', 'failed'],
    switching: ['switching', 'switched', 'rolled_back', 'failed'],
  };
  const rotation = (): Rotation => ({
    id: 'r1',
    orgId: 'o',
    secretId: SECRET,
    fromVersion: 1,
    toVersion: 2,
    state: completed ? 'completed' : 'running',
    leaked: false,
    graceSeconds: 60,
    jobId: null,
    createdAt: '',
    finishedAt: null,
    retireAfter: null,
    oldRetiredAt: null,
    deployments: [{ deploymentId: id, fromVersion: 1, state, reason: null, swapMode: null }],
  });
  const rotations = {
    get: () => Promise.resolve(rotation()),
    getDeployment: () => Promise.resolve(rotation().deployments[0]),
    setState: (_r: string, _d: string, to: RotationDeploymentState) => {
      if (!(allowed[state] ?? []).includes(to))
        return Promise.reject(new OrchestratorError('invalid_input', `state: ${state} -> ${to}`));
      state = to;
      if (to === 'switched' || to === 'skipped') pin = null;
      if (to === 'rolled_back' || to === 'failed') pin = 1;
      return Promise.resolve(rotation().deployments[0]);
    },
    finish: () => {
      if (state === 'pending' || state === 'switching')
        return Promise.reject(new OrchestratorError('invalid_input', 'rotation_id: not done'));
      completed = true;
      return Promise.resolve(rotation());
    },
    bindings: () =>
      Promise.resolve([{ envVar: 'ANTHROPIC_API_KEY', secretId: SECRET, version: 1, pinned: false }]),
    readVersions: (_d: string, wanted: { secretId: string; version: number }[]) =>
      Promise.resolve(
        wanted.map((w) => ({
          envVar: 'ANTHROPIC_API_KEY',
          secretId: w.secretId,
          version: w.version,
          value: new Secret(VALUES[w.version] ?? ''),
        })),
      ),
  } as unknown as RotationStore;
  const swapped: string[] = [];
  const job = makeRotationJob({
    rotations,
    store: {
      get: () => Promise.resolve({ id, runtime: 'echo', ...d } as unknown as Deployment),
      reopenSteps: (_id: string, steps: readonly string[]) => {
        reopened.push(steps.join(','));
        order.push('reopen');
        return reopenError ? Promise.reject(reopenError) : Promise.resolve(2);
      },
    },
    leases: {
      acquire: (x: string) =>
        Promise.resolve({ deploymentId: x, held: () => true, release: () => Promise.resolve() }),
    } as never,
    access: { connect: () => Promise.resolve({ shell: { close: () => Promise.resolve() } }) } as never,
    scrub: () => {
      scrubbed++;
      order.push('scrub');
      return scrubError ? Promise.reject(scrubError) : Promise.resolve();
    },
    swap: ((_s: unknown, input: { env: ReadonlyMap<string, Secret> }) => {
      swapped.push(input.env.get('ANTHROPIC_API_KEY')?.reveal() ?? '');
      return Promise.resolve({ mode: 'blue-green', healthy: true });
    }) as never,
    log,
    concurrency: 4,
    holder: 'test',
  });
  const run = (finalAttempt: boolean) =>
    job.run({ rotationId: 'r1', jobId: 'rotate-r1', signal: new AbortController().signal, finalAttempt });
  return { d, run, swapped, state: () => state, pin: () => pin, reopened, order, scrubbed: () => scrubbed };
};

const pastSecrets = (run = 1): StepRecord[] => [
  step(run, 'host', 'succeeded'),
  step(run, 'configure', 'succeeded'),
  step(run, 'secrets', 'succeeded'),
  step(run, 'start', 'running'),
];

describe('rotate job: deployments that run no agent when the rotation reaches them', () => {
  it('provisioning past its secrets step: left pending (even by the last attempt), then switched once ready', async () => {
    const w = world({ status: 'provisioning', steps: pastSecrets() });
    await expect(w.run(false)).rejects.toThrow('not done yet');
    await expect(w.run(true)).rejects.toThrow('provisioning past its secrets step');
    expect(w.state()).toBe('pending');
    expect(w.swapped).toEqual([]);
    // the provision finishes; the rotation sweep's re-run of the job switches it
    w.d.status = 'ready';
    const out = await w.run(false);
    expect(out.switched).toHaveLength(1);
    expect(out.state).toBe('completed');
    expect(w.swapped).toEqual([VALUES[2]]);
  });

  it('failed past its secrets step: the old environment taken off its host, its steps from secrets reopened, skipped (following the current version)', async () => {
    const w = world({ status: 'failed', steps: pastSecrets() });
    const out = await w.run(false);
    expect(w.scrubbed()).toBe(1);
    expect(w.reopened).toEqual(['secrets,start,health,ready']);
    // reopened first: a crash before the scrub leaves a provision that writes its file anew
    expect(w.order).toEqual(['reopen', 'scrub']);
    expect(out.skipped).toHaveLength(1);
    expect(out.failed).toEqual([]);
    expect(w.pin()).toBeNull();
    expect(w.swapped).toEqual([]);
    expect(out.state).toBe('completed');
  });

  it('failed past its secrets step, host unreachable: left pending for the retry; on the last attempt recorded failed, pinned to the old version its host holds; nothing reopened', async () => {
    const w = world(
      { status: 'failed', steps: pastSecrets() },
      new OrchestratorError('ssh_connect_failed', 'no route to host'),
    );
    await expect(w.run(false)).rejects.toThrow('not done yet');
    expect(w.state()).toBe('pending');
    const out = await w.run(true);
    expect(out.failed).toHaveLength(1);
    expect(w.pin()).toBe(1);
    // reopened (its retry writes the version it is pinned to), never left resuming past a removed file
    expect(w.order.every((o, i) => o === ['reopen', 'scrub'][i % 2])).toBe(true);
  });

  it('failed at its secrets step (it may have written the file before failing): taken off the host and reopened too', async () => {
    const w = world({
      status: 'failed',
      steps: [step(1, 'host', 'succeeded'), step(1, 'configure', 'succeeded'), step(1, 'secrets', 'failed')],
    });
    const out = await w.run(false);
    expect(w.order).toEqual(['reopen', 'scrub']);
    expect(out.skipped).toHaveLength(1);
    expect(w.pin()).toBeNull();
  });

  it('failed past its secrets step, the reopen failing on the last attempt: failed and pinned, the host untouched (its file and steps agree)', async () => {
    const w = world(
      { status: 'failed', steps: pastSecrets() },
      undefined,
      new OrchestratorError('db_unavailable', 'x'),
    );
    const out = await w.run(true);
    expect(out.failed).toHaveLength(1);
    expect(w.pin()).toBe(1);
    expect(w.scrubbed()).toBe(0);
  });

  it('failed past its secrets step, the scrub refused for good (a permanent error): failed, pinned (its steps reopened: its retry rewrites the pinned version)', async () => {
    const w = world(
      { status: 'failed', steps: pastSecrets() },
      new OrchestratorError('remote_file_unsafe', '/etc/cortex is not root:root'),
    );
    const out = await w.run(false);
    expect(out.failed).toHaveLength(1);
    expect(w.pin()).toBe(1);
    // reopened before the scrub was refused: its retry writes the pinned (old) version anew
    expect(w.order).toEqual(['reopen', 'scrub']);
  });

  it('provisioning before its secrets step: skipped, following the current version its secrets step will read', async () => {
    const w = world({
      status: 'provisioning',
      steps: [step(1, 'host', 'succeeded'), step(1, 'configure', 'running')],
    });
    const out = await w.run(false);
    expect(out.skipped).toHaveLength(1);
    expect(w.pin()).toBeNull();
  });

  it('a secrets step of an earlier run does not count: the current run writes the env file again', async () => {
    const w = world({ status: 'provisioning', currentRun: 2, steps: pastSecrets(1) });
    const out = await w.run(false);
    expect(out.skipped).toHaveLength(1);
  });

  it('requested (never provisioned): skipped', async () => {
    const w = world({ status: 'requested', steps: [] });
    const out = await w.run(true);
    expect(out.skipped).toHaveLength(1);
    expect(w.pin()).toBeNull();
  });
});
