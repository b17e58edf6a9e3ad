import { randomUUID } from 'node:crypto';
import { OrchestratorError } from '../../orchestrator/errors';
import { makeLogger } from '../../orchestrator/log';
import { makeRotationJob } from '../../orchestrator/rotation/rotation-job';
import type {
  Rotation,
  RotationDeploymentState,
  RotationStore,
} from '../../orchestrator/rotation/rotation-store';
import { Secret } from '../../orchestrator/secret';

/**
 * The rotate job against a fake of the contract that keeps the same state machine as
 * secret_rotation_deployments__set_state (pending → switching → switched | rolled_back | failed),
 * and a fake swap whose outcome each test chooses. The real thing runs in
 * test/integration/rotation.test.ts.
 */
export const log = makeLogger({ level: 'silent' });
export const SECRET = randomUUID();
export const VALUES: Record<number, string> = {
  1: 'old-value-xxxxxxxxxxxxxxxx',
  2: 'new-value-xxxxxxxxxxxxxxxx',
};

/** The rotation's record of the deployment each health reason code requires. */
const HEALTH_RECORDS: Record<string, { state: RotationDeploymentState; reason: string } | undefined> = {
  rollback_unverified: { state: 'rolled_back', reason: 'unhealthy_rollback_unverified' },
  switch_unverified: { state: 'switched', reason: 'unhealthy_switch_unverified' },
};

export const fakeWorld = (
  deploymentIds: string[],
  initial: RotationDeploymentState = 'pending',
  o: {
    readonly leaked?: boolean;
    /** Deployments whose provisioning read the new version (deployment_secrets__list lists them at it). */
    readonly provisionedOnNew?: readonly string[];
  } = {},
) => {
  const rows = new Map(deploymentIds.map((id) => [id, { state: initial, reason: null as string | null }]));
  const pins = new Map<string, number | null>(deploymentIds.map((id) => [id, null]));
  let state: Rotation['state'] = 'running';
  const rotation = (): Rotation => ({
    id: 'r1',
    orgId: 'o',
    secretId: SECRET,
    fromVersion: 1,
    toVersion: 2,
    state,
    leaked: o.leaked ?? false,
    graceSeconds: 60,
    jobId: null,
    createdAt: '',
    finishedAt: null,
    retireAfter: null,
    oldRetiredAt: null,
    deployments: [...rows].map(([deploymentId, r]) => ({
      deploymentId,
      fromVersion: 1,
      state: r.state,
      reason: r.reason,
      swapMode: null,
    })),
  });
  const allowed: Record<string, RotationDeploymentState[]> = {
    pending: ['switching', 'skipped', 'failed'],
    switching: ['switching', 'switched', 'rolled_back', 'failed'],
  };
  /** Every record in order: `<state>:<deployment>` and `health:<deployment>`. */
  const calls: string[] = [];
  /** Health events written (deployment_events__record_rotation_health). */
  const health: { deploymentId: string; rotationId: string; reasonCode: string }[] = [];
  /** Errors the next recordRotationHealth calls throw, in order (after their event is written, or not). */
  const healthFails: { err: Error; written: boolean }[] = [];
  /** One deployment's row, as secret_rotation_deployments__get (and set_state) return it. */
  const rowOf = (dep: string) => rotation().deployments.find((x) => x.deploymentId === dep) ?? null;
  const store = {
    get: () => Promise.resolve(rotation()),
    getDeployment: (_r: string, dep: string) => Promise.resolve(rowOf(dep)),
    setState: (_r: string, dep: string, to: RotationDeploymentState, o: { reason?: string } = {}) => {
      const row = rows.get(dep);
      if (!row || !(allowed[row.state] ?? []).includes(to))
        return Promise.reject(
          new OrchestratorError('invalid_input', `state: cannot change from ${row?.state} to ${to}`),
        );
      calls.push(`${to}:${dep}`);
      // set_state's own event: a `failed` from `switching` of a deployment that runs its agent (the
      // shared `store` says ready) writes `rotation_failed` (20261207090000, review R16 finding 4)
      if (to === 'failed' && row.state === 'switching' && !health.some((h) => h.deploymentId === dep))
        health.push({ deploymentId: dep, rotationId: 'r1', reasonCode: 'rotation_failed' });
      row.state = to;
      row.reason = o.reason ?? null;
      if (to === 'switched') pins.set(dep, null);
      if (to === 'rolled_back' || to === 'failed') pins.set(dep, 1);
      return Promise.resolve(rowOf(dep));
    },
    finish: () => {
      if ([...rows.values()].some((r) => r.state === 'pending' || r.state === 'switching'))
        return Promise.reject(new OrchestratorError('invalid_input', 'rotation_id: not done'));
      state = 'completed';
      return Promise.resolve(rotation());
    },
    retireOld: () => Promise.resolve({ retired: [1], kept: [] }),
    // the contract of deployment_events__record_rotation_health: reason code rollback_unverified
    // only for a deployment this rotation recorded rolled_back with reason
    // unhealthy_rollback_unverified, switch_unverified only for one recorded switched with reason
    // unhealthy_switch_unverified (20261206100000); once per (rotation, deployment)
    recordRotationHealth: (dep: string, rotationId: string, reasonCode: string) => {
      calls.push(`health:${dep}`);
      const required = HEALTH_RECORDS[reasonCode];
      if (!required)
        return Promise.reject(
          new OrchestratorError(
            'invalid_input',
            'reason_code: must be rollback_unverified or switch_unverified',
          ),
        );
      const row = rows.get(dep);
      if (rotationId !== 'r1' || row?.state !== required.state || row.reason !== required.reason)
        return Promise.reject(
          new OrchestratorError('invalid_input', `rotation_id: not ${required.state} (${required.reason})`),
        );
      const fail = healthFails.shift();
      const existing = health.some((h) => h.deploymentId === dep && h.rotationId === rotationId);
      if (!existing && (!fail || fail.written)) health.push({ deploymentId: dep, rotationId, reasonCode });
      if (fail) return Promise.reject(fail.err);
      return Promise.resolve({ eventId: String(health.length), existing });
    },
    // deployment_secrets__list: the version the deployment runs (20261205090000, 20261206120000)
    bindings: (dep: string) => {
      const row = rows.get(dep);
      const moving = row?.state === 'pending' || row?.state === 'switching';
      const version = moving
        ? (o.provisionedOnNew ?? []).includes(dep) || (row?.state === 'switching' && (o.leaked ?? false))
          ? 2
          : 1
        : (pins.get(dep) ?? 2);
      return Promise.resolve([{ envVar: 'ANTHROPIC_API_KEY', secretId: SECRET, version, pinned: false }]);
    },
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
  return { store, rows, pins, calls, health, healthFails };
};

export const leases = {
  acquire: (id: string) =>
    Promise.resolve({ deploymentId: id, held: () => true, release: () => Promise.resolve() }),
  holder: () => Promise.resolve(undefined),
  key: (id: string) => id,
} as never;
export const store = {
  get: (id: string) => Promise.resolve({ id, status: 'ready', runtime: 'echo' }),
} as never;
export const access = {
  connect: () => Promise.resolve({ shell: { close: () => Promise.resolve() }, key: 'current' }),
} as never;

export type Swap = (
  s: unknown,
  input: { deploymentId: string; env: ReadonlyMap<string, Secret> },
) => Promise<{
  mode: 'held-restart';
  healthy: boolean;
  reason?: string;
}>;

export const job = (world: ReturnType<typeof fakeWorld>, swap: Swap, concurrency = 8) =>
  makeRotationJob({
    rotations: world.store,
    store,
    leases,
    access,
    swap: swap as never,
    log,
    concurrency,
    holder: 'test',
  });
export const run = (j: ReturnType<typeof job>, finalAttempt = false) =>
  j.run({ rotationId: 'r1', jobId: 'rotate-r1', signal: new AbortController().signal, finalAttempt });
