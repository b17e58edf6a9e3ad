import { randomUUID } from 'node:crypto';
import { OrchestratorError } from '../../../orchestrator/errors';
import type { DeploymentStatus } from '../../../orchestrator/deployments/deployment-store';
import { makeLogger } from '../../../orchestrator/log';
import { makeRevokeJob, type RevokeJobDeps } from '../../../orchestrator/rotation/revoke-job';
import type { RotationStore } from '../../../orchestrator/rotation/rotation-store';
import { Secret } from '../../../orchestrator/secret';

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

const NEXT: Partial<Record<DeploymentStatus, DeploymentStatus[]>> = {
  ready: ['rotating', 'deprovisioning'],
  rotating: ['ready', 'deprovisioning'],
  failed: ['provisioning', 'deprovisioning'],
};

const world = (initial: DeploymentStatus) => {
  const id = randomUUID();
  const status = { value: initial };
  const history: DeploymentStatus[] = [initial];
  const bound = new Set<string>([SECRET, OTHER]);
  const store: RevokeJobDeps['store'] = {
    get: () => Promise.resolve({ id, status: status.value, runtime: 'echo' } as never),
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
        deployments: [{ deploymentId: id, status: status.value, envVars: ['ANTHROPIC_API_KEY'] }],
      }),
    revokeBindings: (secretId: string) => {
      bound.delete(secretId);
      return Promise.resolve({ bindings_removed: 1 });
    },
  } as unknown as RotationStore;
  return { id, status, history, bound, store, rotations };
};

type Swap = (shell: unknown, input: { env: ReadonlyMap<string, Secret> }) => Promise<unknown>;

const run = (w: ReturnType<typeof world>, swap: Swap, finalAttempt = true) =>
  makeRevokeJob({
    rotations: w.rotations,
    secrets: { revoke: () => Promise.resolve(undefined as never) },
    store: w.store,
    leases: {
      acquire: (d: string) =>
        Promise.resolve({ deploymentId: d, held: () => true, release: () => Promise.resolve() }),
    } as never,
    access: { connect: () => Promise.resolve({ shell: { close: () => Promise.resolve() } }) } as never,
    swap: swap as never,
    log,
    concurrency: 4,
    holder: 'test',
  }).run({
    secretId: SECRET,
    deploymentId: w.id,
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

  it('an unhealthy swap: `ready` again, the binding kept, the deployment reported', async () => {
    const w = world('ready');
    const during: DeploymentStatus[] = [];
    const out = await run(w, () => {
      during.push(w.status.value);
      return Promise.resolve({ mode: 'held-restart', healthy: false, reason: 'health check timed out' });
    });
    expect(during).toEqual(['rotating']);
    expect(w.history).toEqual(['ready', 'rotating', 'ready']);
    expect(w.bound.has(SECRET)).toBe(true);
    expect(out.failed.map((f) => f.deploymentId)).toEqual([w.id]);
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
