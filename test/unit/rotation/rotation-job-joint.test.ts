import { randomUUID } from 'node:crypto';
import { OrchestratorError } from '../../../orchestrator/errors';
import { makeLogger } from '../../../orchestrator/log';
import { makeRotationJob } from '../../../orchestrator/rotation/rotation-job';
import type {
  Rotation,
  RotationDeploymentState,
  RotationStore,
} from '../../../orchestrator/rotation/rotation-store';
import { Secret } from '../../../orchestrator/secret';
import { access, leases, store } from '../../support/rotation-world';

/**
 * A joint swap (review R11 finding 2): two rotations of different secrets (A: ANTHROPIC_API_KEY,
 * B: OPENAI_API_KEY) running at once on one deployment. A fake of the contract that keeps both
 * rotations' rows with set_state's transitions, deployment_secrets__list's "version it runs" per
 * row (pending and switching: the old one, or the new one for a leak response's switching row;
 * switched: the new one; rolled back or failed: the old one, pinned), and
 * secret_rotations__pending_for_deployment. The fake agent refuses to start on a dead key, as one
 * that checks its key at start does once the key is revoked at the provider.
 */
const log = makeLogger({ level: 'silent' });
const A = randomUUID();
const B = randomUUID();
const VAR: Record<string, string> = { [A]: 'ANTHROPIC_API_KEY', [B]: 'OPENAI_API_KEY' };

interface World {
  readonly dep: string;
  readonly rows: Map<string, { state: RotationDeploymentState; reason: string | null }>;
  readonly calls: string[];
  readonly swaps: Record<string, string>[];
  readonly store: RotationStore;
}

const world = (o: {
  values: Record<string, Record<number, string>>;
  leakedB?: boolean;
  rowB?: RotationDeploymentState;
  bBound?: boolean;
  failSwitchedB?: boolean;
}): World => {
  const dep = randomUUID();
  const rot: Record<string, { secretId: string; leaked: boolean; state: Rotation['state'] }> = {
    rA: { secretId: A, leaked: false, state: 'running' },
    rB: { secretId: B, leaked: o.leakedB ?? false, state: 'running' },
  };
  const rows = new Map([
    ['rA', { state: 'pending' as RotationDeploymentState, reason: null as string | null }],
    ['rB', { state: o.rowB ?? ('pending' as RotationDeploymentState), reason: null as string | null }],
  ]);
  const bound = o.bBound === false ? [A] : [A, B];
  const calls: string[] = [];
  const swaps: Record<string, string>[] = [];
  const rowOf = (r: string) => {
    const x = rows.get(r);
    return x ? { deploymentId: dep, fromVersion: 1, state: x.state, reason: x.reason, swapMode: null } : null;
  };
  const rotation = (r: string): Rotation => ({
    id: r,
    orgId: 'o',
    secretId: rot[r]?.secretId ?? '',
    fromVersion: 1,
    toVersion: 2,
    state: rot[r]?.state ?? 'running',
    leaked: rot[r]?.leaked ?? false,
    graceSeconds: 60,
    jobId: null,
    createdAt: '',
    finishedAt: null,
    retireAfter: null,
    oldRetiredAt: null,
    deployments: rowOf(r) ? [rowOf(r)!] : [],
  });
  const allowed: Record<string, RotationDeploymentState[]> = {
    pending: ['switching', 'skipped', 'failed'],
    switching: ['switching', 'switched', 'rolled_back', 'failed'],
  };
  /** The version the host runs for a secret, as deployment_secrets__list gives it. */
  const runs = (secretId: string): number => {
    const r = secretId === A ? 'rA' : 'rB';
    const st = rows.get(r)?.state;
    if (st === 'switched') return 2;
    if (st === 'switching' && rot[r]?.leaked) return 2;
    return 1;
  };
  const s = {
    get: (r: string) => Promise.resolve(rotation(r)),
    getDeployment: (r: string) => Promise.resolve(rowOf(r)),
    pendingForDeployment: () =>
      Promise.resolve(
        [...rows]
          .filter(([r, x]) => x.state === 'pending' && rot[r]?.state === 'running')
          .map(([r]) => ({
            rotationId: r,
            secretId: rot[r]?.secretId ?? '',
            fromVersion: 1,
            toVersion: 2,
            leaked: rot[r]?.leaked ?? false,
          })),
      ),
    setState: (r: string, _dep: string, to: RotationDeploymentState, opts: { reason?: string } = {}) => {
      const row = rows.get(r);
      if (!row || !(allowed[row.state] ?? []).includes(to))
        return Promise.reject(
          new OrchestratorError('invalid_input', `state: cannot change from ${row?.state} to ${to}`),
        );
      if (r === 'rB' && to === 'switched' && o.failSwitchedB)
        return Promise.reject(new OrchestratorError('db_unavailable', 'the database went away'));
      calls.push(`${r}:${to}${opts.reason ? `(${opts.reason})` : ''}`);
      row.state = to;
      row.reason = opts.reason ?? null;
      return Promise.resolve(rowOf(r));
    },
    finish: (r: string) => {
      const row = rows.get(r);
      if (row?.state === 'pending' || row?.state === 'switching')
        return Promise.reject(new OrchestratorError('invalid_input', 'rotation_id: not done'));
      const x = rot[r];
      if (x) x.state = 'completed';
      return Promise.resolve(rotation(r));
    },
    retireOld: () => Promise.resolve({ retired: [], kept: [] }),
    recordRotationHealth: () => Promise.resolve({ eventId: '1', existing: false }),
    bindings: () =>
      Promise.resolve(
        bound.map((secretId) => ({
          envVar: VAR[secretId],
          secretId,
          version: runs(secretId),
          pinned: false,
        })),
      ),
    readVersions: (_d: string, wanted: { secretId: string; version: number }[]) =>
      Promise.resolve(
        wanted.map((w) => ({
          envVar: VAR[w.secretId],
          secretId: w.secretId,
          version: w.version,
          value: new Secret(o.values[w.secretId]?.[w.version] ?? ''),
        })),
      ),
  } as unknown as RotationStore;
  return { dep, rows, calls, swaps, store: s };
};

/** The host: starts an environment only when none of its keys is dead; remembers what serves. */
const host = (w: World) => {
  let serving: Record<string, string> = {};
  const swap = (_s: unknown, input: { env: ReadonlyMap<string, Secret> }) => {
    const env = Object.fromEntries([...input.env].map(([k, v]) => [k, v.reveal()]));
    w.swaps.push(env);
    const healthy = !Object.values(env).some((v) => v.includes('dead'));
    if (healthy) serving = env;
    return Promise.resolve({ mode: 'blue-green' as const, healthy });
  };
  return { swap, serving: () => serving };
};

const runJob = (w: World, swap: ReturnType<typeof host>['swap'], rotationId: string) =>
  makeRotationJob({
    rotations: w.store,
    store,
    leases,
    access,
    swap: swap as never,
    log,
    concurrency: 1,
    holder: 'test',
  }).run({
    rotationId,
    jobId: `rotate-${rotationId}`,
    signal: new AbortController().signal,
    finalAttempt: true,
  });

const both = (aNew: string, bNew: string) => ({
  [A]: { 1: 'a-old-dead', 2: aNew },
  [B]: { 1: 'b-old-dead', 2: bNew },
});

describe('joint swap of concurrent rotations on one deployment (review R11 finding 2)', () => {
  it('both old keys dead: one swap carries both new keys; both rotations record the deployment switched', async () => {
    const w = world({ values: both('a-new', 'b-new') });
    const h = host(w);
    const outA = await runJob(w, h.swap, 'rA');
    expect(w.swaps).toEqual([{ ANTHROPIC_API_KEY: 'a-new', OPENAI_API_KEY: 'b-new' }]);
    expect(w.calls).toEqual(['rA:switching', 'rB:switching', 'rB:switched(joint_swap)', 'rA:switched']);
    expect(outA.switched).toEqual([w.dep]);
    // B's own job finds its row done under the lease: no second swap
    const outB = await runJob(w, h.swap, 'rB');
    expect(w.swaps).toHaveLength(1);
    expect([outB.state, outB.switched]).toEqual(['completed', [w.dep]]);
    expect(h.serving()).toEqual({ ANTHROPIC_API_KEY: 'a-new', OPENAI_API_KEY: 'b-new' });
  });

  it("B's new key is bad: the joint swap fails, A alone switches, B resumes its own row and rolls back; no third version", async () => {
    const w = world({ values: { [A]: { 1: 'a-old', 2: 'a-new' }, [B]: { 1: 'b-old', 2: 'b-new-dead' } } });
    const h = host(w);
    await runJob(w, h.swap, 'rA');
    expect(w.swaps).toEqual([
      { ANTHROPIC_API_KEY: 'a-new', OPENAI_API_KEY: 'b-new-dead' },
      { ANTHROPIC_API_KEY: 'a-new', OPENAI_API_KEY: 'b-old' },
    ]);
    expect(w.calls).toEqual(['rA:switching', 'rB:switching', 'rA:switched']);
    expect(w.rows.get('rB')?.state).toBe('switching');
    const outB = await runJob(w, h.swap, 'rB');
    expect(outB.rolledBack).toEqual([w.dep]);
    // B resumed: its new key with A's new one (unhealthy), then put back on its old one
    expect(w.swaps.slice(2)).toEqual([
      { ANTHROPIC_API_KEY: 'a-new', OPENAI_API_KEY: 'b-new-dead' },
      { ANTHROPIC_API_KEY: 'a-new', OPENAI_API_KEY: 'b-old' },
    ]);
    expect(h.serving()).toEqual({ ANTHROPIC_API_KEY: 'a-new', OPENAI_API_KEY: 'b-old' });
  });

  it.each([
    ['B has already switched the deployment', { rowB: 'switched' as const }, 'b-new'],
    [
      "B's swap of it is under way or was cut (switching: B resumes it)",
      { rowB: 'switching' as const },
      'b-old',
    ],
    ['the deployment is no longer bound to B', { bBound: false }, undefined],
  ])('nothing to carry when %s: A swaps alone, B at the version its record says', async (_name, o, bRuns) => {
    const w = world({ values: { [A]: { 1: 'a-old', 2: 'a-new' }, [B]: { 1: 'b-old', 2: 'b-new' } }, ...o });
    const h = host(w);
    await runJob(w, h.swap, 'rA');
    expect(w.swaps).toEqual([{ ANTHROPIC_API_KEY: 'a-new', ...(bRuns ? { OPENAI_API_KEY: bRuns } : {}) }]);
    expect(w.calls).toEqual(['rA:switching', 'rA:switched']);
  });

  it('a resumed row carries nothing: it is put back on its own versions first', async () => {
    const w = world({ values: { [A]: { 1: 'a-old', 2: 'a-new' }, [B]: { 1: 'b-old', 2: 'b-new' } } });
    const row = w.rows.get('rA');
    if (row) row.state = 'switching';
    const h = host(w);
    await runJob(w, h.swap, 'rA');
    expect(w.swaps).toEqual([{ ANTHROPIC_API_KEY: 'a-new', OPENAI_API_KEY: 'b-old' }]);
    expect(w.rows.get('rB')?.state).toBe('pending');
  });

  it("the joint switch of B cannot be recorded: A's switch is, B's row stays switching and B's own job finds its new key serving", async () => {
    const o = { values: both('a-new', 'b-new'), failSwitchedB: true };
    const w = world(o);
    const h = host(w);
    const outA = await runJob(w, h.swap, 'rA');
    expect(outA.switched).toEqual([w.dep]);
    expect(w.rows.get('rB')?.state).toBe('switching');
    o.failSwitchedB = false; // the database is back
    const outB = await runJob(w, h.swap, 'rB');
    expect(outB.switched).toEqual([w.dep]);
    // B's resumed swap carried its new key with A's new one (the host ran them already)
    expect(w.swaps).toEqual([
      { ANTHROPIC_API_KEY: 'a-new', OPENAI_API_KEY: 'b-new' },
      { ANTHROPIC_API_KEY: 'a-new', OPENAI_API_KEY: 'b-new' },
    ]);
    expect(h.serving()).toEqual({ ANTHROPIC_API_KEY: 'a-new', OPENAI_API_KEY: 'b-new' });
  });

  it("a leak response's leaked key is never put back: after a failed joint swap A's own swap carries B's new key", async () => {
    const w = world({
      values: { [A]: { 1: 'a-old', 2: 'a-new-dead' }, [B]: { 1: 'b-old-leaked', 2: 'b-new' } },
      leakedB: true,
    });
    const h = host(w);
    await runJob(w, h.swap, 'rA');
    expect(w.swaps.map((e) => e.OPENAI_API_KEY)).toEqual(['b-new', 'b-new']);
    expect(w.rows.get('rA')?.state).toBe('rolled_back');
    expect(w.rows.get('rB')?.state).toBe('switching');
  });
});
