import { randomUUID } from 'node:crypto';
import type { DeploymentStatus } from '../../../orchestrator/deployments/deployment-store';
import { makeLogger } from '../../../orchestrator/log';
import { makeRevokeJob, type RevokeJobDeps } from '../../../orchestrator/rotation/revoke-job';
import type { RotationStore } from '../../../orchestrator/rotation/rotation-store';

/**
 * Review R2 (issue 11): revoke must never leave a deployment `rotating` for good. The job finds its
 * deployments by their binding to the secret (secretBindings), and the reconciler re-enqueues no
 * `rotating` deployment: once the binding is removed, no retry ever comes back to set it `ready`.
 * So a failure to set it `ready` again after a healthy swap (a database blip) must fail the attempt
 * while the binding is still there, not be logged and forgotten.
 */
const log = makeLogger({ level: 'silent' });
const SECRET = randomUUID();
const REVOCATION = randomUUID();

const world = (failReadyOnce: boolean) => {
  const id = randomUUID();
  const status = { value: 'ready' as DeploymentStatus };
  const bound = { value: true };
  let failures = failReadyOnce ? 1 : 0;
  const store: RevokeJobDeps['store'] = {
    get: () =>
      Promise.resolve({ id, status: status.value, runtime: 'echo', steps: [], currentRun: 1 } as never),
    reopenSteps: () => Promise.reject(new Error('not called')),
    setStatus: (_d: string, to: DeploymentStatus) => {
      if (to === 'ready' && failures > 0) {
        failures -= 1;
        return Promise.reject(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }));
      }
      status.value = to;
      return Promise.resolve();
    },
  };
  const rotations = {
    bindings: () =>
      Promise.resolve(
        bound.value ? [{ envVar: 'ANTHROPIC_API_KEY', secretId: SECRET, version: 1, pinned: false }] : [],
      ),
    readVersions: () => Promise.resolve([]),
    // as the SQL does: only deployments still bound to the secret
    secretBindings: () =>
      Promise.resolve({
        secretId: SECRET,
        orgId: 'o',
        provider: 'anthropic',
        status: 'active',
        currentVersion: 1,
        maxAgeSeconds: null,
        deployments: bound.value
          ? [{ deploymentId: id, status: status.value, envVars: ['ANTHROPIC_API_KEY'] }]
          : [],
      }),
    revokeBindings: () => {
      bound.value = false;
      return Promise.resolve({ bindings_removed: 1 });
    },
    // the open revocation this job carries the id of: one deployment
    revocation: () =>
      Promise.resolve({ id: REVOCATION, orgId: 'o', secretId: SECRET, deploymentId: id, state: 'open' }),
    finishRevocation: () => Promise.resolve({}),
  } as unknown as RotationStore;
  return { id, status, bound, store, rotations };
};

/** The job as BullMQ runs it: attempts until one returns, the last with finalAttempt. */
const runAttempts = async (w: ReturnType<typeof world>, attempts = 3) => {
  const job = makeRevokeJob({
    rotations: w.rotations,
    secrets: { revoke: () => Promise.resolve(undefined as never) },
    store: w.store,
    leases: {
      acquire: (d: string) =>
        Promise.resolve({ deploymentId: d, held: () => true, release: () => Promise.resolve() }),
    } as never,
    access: { connect: () => Promise.resolve({ shell: { close: () => Promise.resolve() } }) } as never,
    swap: (() => Promise.resolve({ mode: 'blue-green', healthy: true })) as never,
    log,
    concurrency: 1,
    holder: 'test',
  });
  for (let i = 1; i <= attempts; i++) {
    try {
      return await job.run({
        revocationId: REVOCATION,
        jobId: 'revoke-r2',
        signal: new AbortController().signal,
        finalAttempt: i === attempts,
      });
    } catch {
      // retried
    }
  }
  return undefined;
};

describe('revoke job: `rotating` never sticks', () => {
  it('a failure to set the deployment ready again is retried while it is still bound: ready in the end, binding removed', async () => {
    const w = world(true);
    await runAttempts(w);
    expect(w.bound.value).toBe(false);
    expect(w.status.value).toBe('ready');
  });

  it('without a failure: ready, binding removed, in one attempt', async () => {
    const w = world(false);
    const out = await runAttempts(w, 1);
    expect(out?.revoked).toEqual([w.id]);
    expect(w.bound.value).toBe(false);
    expect(w.status.value).toBe('ready');
  });
});
