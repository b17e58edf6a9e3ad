import { randomUUID } from 'node:crypto';
import type { Job } from 'bullmq';
import { makeLogger } from '../../orchestrator/log';
import type { Workers } from '../../orchestrator/queues/workers';
import { makeRevokeJob } from '../../orchestrator/rotation/revoke-job';
import { makeRotationFromPipeline } from '../../orchestrator/rotation/rotation-from-config';
import { makeRotationStore } from '../../orchestrator/rotation/rotation-store';
import { Secret } from '../../orchestrator/secret';
import { startTestApi, type TestApi } from '../support/api';
import { adminPool } from '../support/db';
import { canary } from '../support/canary';

/**
 * Review R7 (issue 11), findings 3, 4 and 5 on revoke, fixed by 20261204100000_revocations.sql
 * (a revoke is a revocation record; the job carries its id alone; the key takes no new binding
 * while a whole-secret revocation is open; one the job could not finish stays open for the
 * rotation sweep). Written by the review against the code before the fix (each asserted the SAFE
 * behaviour and failed there: forged job revoked the key; d2 unbound and forgotten with the vault
 * copy gone; the revoked key bound again), adapted to the revocation id the job now carries.
 * Real Postgres (every SQL function for real), real Redis/BullMQ; no hosts (the swap and host
 * access are stand-ins: nothing here depends on what a host does).
 */
jest.setTimeout(120_000);

let t: TestApi;
let workers: Workers;
const admin = adminPool();
const log = makeLogger({ level: 'silent' });

beforeAll(async () => {
  t = await startTestApi();
  const rot = makeRotationFromPipeline(t.pipeline);
  workers = t.pipeline.makeWorkerSet(rot.maintenanceTasks, rot.processors);
  workers.start(['rotate', 'revoke']);
});
afterAll(async () => {
  await t?.close();
  await admin.end();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const keyOf = async (orgId: string): Promise<string> =>
  (
    await t.pipeline.secrets.create({
      orgId,
      name: `r7-${randomUUID().slice(0, 6)}`,
      provider: 'anthropic',
      value: new Secret(canary()),
    })
  ).secretId;

const secretState = async (secretId: string): Promise<{ status: string; vaultRows: number }> => {
  const r = await admin.query<{ status: string; n: string }>(
    `select s.status, (select count(*) from vault.secrets v join public.secret_versions sv on sv.vault_secret_id = v.id
                        where sv.secret_id = s.id) as n
       from public.secrets s where s.id = $1`,
    [secretId],
  );
  return { status: String(r.rows[0]?.status), vaultRows: Number(r.rows[0]?.n) };
};

const finished = async (job: Job): Promise<string> => {
  for (let i = 0; i < 150; i++) {
    const s = await job.getState();
    if (s === 'completed' || s === 'failed') return s;
    await sleep(200);
  }
  return 'timeout';
};

/** A deployment of `orgId` bound to `secretId`, moved to `status` around the pipeline (as the superuser). */
const boundDeployment = async (orgId: string, secretId: string): Promise<string> => {
  const r = await t.pipeline.store.request({
    orgId,
    name: `r7 ${randomUUID().slice(0, 6)}`,
    subdomain: `r7-${randomUUID().slice(0, 8)}`,
    provider: 'local',
    runtime: 'echo',
    bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId }],
  });
  if (r.status !== 'ok') throw new Error(`request denied: ${r.reason}`);
  return r.deployment.id;
};

describe('review R7 findings', () => {
  // R7 FINDING 3: a `revoke` job is acted on with nothing in Postgres asking for it. The revoke
  // job (orchestrator/rotation/revoke-job.ts:141-199, run; the delete at :172-175) and its SQL (secrets__revoke,
  // deployment_secrets__revoke) never check that a revoke was accepted (secrets__request_revoke
  // only appends an audit row, 20261201140000_request_audit.sql:26-57), so anyone who can write to
  // Redis (job data sits there in clear text, DESIGN) deletes every version of any organisation's
  // key from the vault and unbinds it from every agent, with an ids-only payload. The deprovision
  // queue closed exactly this (deployments__begin: "a deprovision job for a deployment nobody asked
  // to remove (it reached Redis some other way) stops here").
  it('R7 FINDING 3: a revoke job nobody requested (forged in Redis) revokes nothing', async () => {
    const org = await t.org();
    const secretId = await keyOf(org);
    // the payload the job used to carry, and the one it carries now with an id nobody opened
    for (const data of [{ secretId }, { revocationId: randomUUID() }]) {
      const job = await t.pipeline.queues.queues.revoke.add('revoke', data, {
        jobId: `forged-${randomUUID()}`,
        attempts: 1,
      });
      expect(await finished(job)).toBe('failed');
    }
    expect(await secretState(secretId)).toEqual({ status: 'active', vaultRows: 1 });
    // and the SQL refuses a revoke naming no open revocation of that secret, whoever calls it
    const other = await keyOf(org);
    const rotations = makeRotationStore({
      rpc: t.pipeline.db.rpc,
      fingerprint: t.pipeline.secrets.fingerprint,
    });
    const { revocationId } = await rotations.requestRevoke({ secretId: other }, { actor: 'token:r7' });
    await expect(
      t.pipeline.secrets.revoke(secretId, revocationId, { actor: 'orchestrator' }),
    ).rejects.toThrow(/revocation_id/);
    await expect(rotations.revokeBindings(secretId, undefined, revocationId)).rejects.toThrow(
      /revocation_id/,
    );
    expect(await secretState(secretId)).toEqual({ status: 'active', vaultRows: 1 });
  });

  // R7 FINDING 4: a whole-secret revoke lists the bound deployments once, at its start
  // (revoke-job.ts:148-150), and then deletes the secret with every binding it has by then
  // (secrets__revoke, 20261125211700_secrets.sql:487). The secret stays `active` meanwhile
  // (secrets__request_revoke changes nothing), so a deployment requested with it while the job
  // works on the others (each swap soaks, a busy one is waited for up to 2 minutes) is bound, and
  // its provision reads the key and writes its env file; then secrets__revoke deletes its binding:
  // its agent starts on the revoked key with nothing left to find it — the very case R6 closed for
  // deployments the job had listed (revoke-job.ts:171-181, "not deleted").
  it('R7 FINDING 4: a deployment bound and provisioned past `secrets` during a whole-secret revoke is not left holding the key unbound', async () => {
    const org = await t.org();
    const secretId = await keyOf(org);
    const d1 = await boundDeployment(org, secretId);
    await admin.query(`update public.deployments set status = 'provisioning' where id = $1`, [d1]);
    await admin.query(`update public.deployments set status = 'ready' where id = $1`, [d1]);
    let d2 = '';
    let readStatus = '';
    const rotations = makeRotationStore({
      rpc: t.pipeline.db.rpc,
      fingerprint: t.pipeline.secrets.fingerprint,
    });
    const job = makeRevokeJob({
      rotations,
      secrets: t.pipeline.secrets,
      store: t.pipeline.store,
      leases: t.pipeline.leases,
      access: { connect: () => Promise.resolve({ shell: { close: () => Promise.resolve() } }) } as never,
      scrub: () => Promise.resolve(),
      // while d1's agent is swapped (soaking): a new deployment is requested with the key and its
      // provision runs its `secrets` step (the audited read of the key, the env file written)
      swap: (async () => {
        // a fix may refuse the new binding outright (the secret being revoked): then d2 stays ''
        const r = await t.pipeline.store
          .request({
            orgId: org,
            name: `r7 ${randomUUID().slice(0, 6)}`,
            subdomain: `r7-${randomUUID().slice(0, 8)}`,
            provider: 'local',
            runtime: 'echo',
            bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId }],
          })
          .catch(() => undefined);
        if (r?.status !== 'ok') return { mode: 'blue-green', healthy: true };
        d2 = r.deployment.id;
        const b = await t.pipeline.store.begin(d2, 'provision');
        await t.pipeline.store.stepStarted(d2, b.run, 'secrets');
        const read = await t.pipeline.secrets.readForDeployment(d2, {
          actor: 'orchestrator',
          jobId: 'provision-r7',
        });
        readStatus = read.status;
        await t.pipeline.store.stepFinished(d2, b.run, 'secrets', 'succeeded');
        return { mode: 'blue-green', healthy: true };
      }) as never,
      log,
      concurrency: 4,
      holder: 'review-r7',
      leaseWaitMs: 2_000,
    });
    // accepted as the API accepts it (the audited request), then the job
    const { revocationId } = await rotations.requestRevoke({ secretId, orgId: org }, { actor: 'token:r7' });
    const out = await job.run({
      revocationId,
      jobId: 'revoke-r7-race',
      signal: new AbortController().signal,
      finalAttempt: true,
    });
    expect(out.revoked).toContain(d1); // set-up: d1 was swapped off the key and unbound
    if (d2 === '') return; // safe: the key being revoked took no new binding
    expect(readStatus).toBe('ok'); // set-up: d2's `secrets` step read the key (audited)
    const bound = await admin.query(`select 1 from public.deployment_secrets where deployment_id = $1`, [d2]);
    const d2Bound = bound.rowCount === 1;
    const d2Named = out.failed.some((f) => f.deploymentId === d2) || out.revoked.includes(d2);
    // safe: d2 (its env file holds the key) is either still bound (found by the revoke run again)
    // or handled/named by this job; not both forgotten while the vault copy goes
    expect({ d2Bound, d2Named, vaultDeleted: out.vaultDeleted }).not.toEqual({
      d2Bound: false,
      d2Named: false,
      vaultDeleted: true,
    });
  });

  // R7 FINDING 5: the "NOT deleted" path (revoke-job.ts:171-181). When a provision past its
  // `secrets` step (or a deployment busy past the 2-minute wait) holds the key on the job's last
  // attempt, the job COMPLETES with the secret still `active`, every version in the vault, and
  // nothing in Postgres saying a revoke was asked for and is unfinished: no state on the secret,
  // no job to come back (Redis keeps no completed job; the sweep knows nothing of revokes), no
  // outcome over the API (POST /v1/secrets/:id/revoke answered 202). The key a customer revoked
  // (typically a leaked one) stays usable: a new deployment can still be bound to it and read it.
  it('R7 FINDING 5: after a whole-secret revoke that could not delete, the key takes no new binding', async () => {
    const org = await t.org();
    const secretId = await keyOf(org);
    const d1 = await boundDeployment(org, secretId);
    // d1's provision is past its `secrets` step (its env file holds the key): the revoke must wait
    const b = await t.pipeline.store.begin(d1, 'provision');
    await t.pipeline.store.stepStarted(d1, b.run, 'secrets');
    await t.pipeline.store.stepFinished(d1, b.run, 'secrets', 'succeeded');
    const rotations = makeRotationStore({
      rpc: t.pipeline.db.rpc,
      fingerprint: t.pipeline.secrets.fingerprint,
    });
    const { revocationId } = await rotations.requestRevoke({ secretId, orgId: org }, { actor: 'token:r7' });
    const out = await makeRevokeJob({
      rotations,
      secrets: t.pipeline.secrets,
      store: t.pipeline.store,
      leases: t.pipeline.leases,
      access: { connect: () => Promise.reject(new Error('no host')) } as never,
      swap: (() => Promise.reject(new Error('no swap'))) as never,
      log,
      concurrency: 4,
      holder: 'review-r7',
      leaseWaitMs: 1_000,
    }).run({
      revocationId,
      jobId: `revoke-${revocationId}`,
      signal: new AbortController().signal,
      finalAttempt: true,
    });
    expect(out.vaultDeleted).toBe(false); // the documented "not deleted" outcome
    // a new deployment asking for the revoked key
    const later = await t.pipeline.store
      .request({
        orgId: org,
        name: 'r7 later',
        subdomain: `r7-${randomUUID().slice(0, 8)}`,
        provider: 'local',
        runtime: 'echo',
        bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId }],
      })
      .then(
        (r) => r.status,
        () => 'refused',
      );
    expect(later).not.toBe('ok');
    // the revocation is left open, its result noted, and the rotation sweep lists it
    const rev = await rotations.revocation(revocationId);
    expect(rev).toMatchObject({ state: 'open', attempts: 1, secretId, deploymentId: null });
    expect(rev.result).toMatchObject({ vault_deleted: false });
    expect(await rotations.listOpenRevocations(0)).toContain(revocationId);
    // no rotation either while it is open
    await expect(
      t.pipeline.db.rpc('secret_rotations__start', {
        p_rotation_id: randomUUID(),
        p_secret_id: secretId,
        p_value: canary(),
        p_fingerprint: 'ab'.repeat(32),
        p_grace_seconds: 0,
      }),
    ).rejects.toThrow(/being revoked/);
    // d1's provision finishes (ready): the job run again (as the sweep queues it) swaps it off the
    // key, deletes the key and closes the revocation
    await admin.query(`update public.deployments set status = 'ready' where id = $1`, [d1]);
    const again = await makeRevokeJob({
      rotations,
      secrets: t.pipeline.secrets,
      store: t.pipeline.store,
      leases: t.pipeline.leases,
      access: { connect: () => Promise.resolve({ shell: { close: () => Promise.resolve() } }) } as never,
      swap: (() => Promise.resolve({ mode: 'blue-green', healthy: true })) as never,
      log,
      concurrency: 4,
      holder: 'review-r7',
      leaseWaitMs: 1_000,
    }).run({
      revocationId,
      jobId: `revoke-${revocationId}`,
      signal: new AbortController().signal,
      finalAttempt: true,
    });
    expect(again).toMatchObject({ revoked: [d1], vaultDeleted: true, open: false });
    expect(await secretState(secretId)).toEqual({ status: 'revoked', vaultRows: 0 });
    expect(await rotations.revocation(revocationId)).toMatchObject({ state: 'done', attempts: 2 });
    expect(await rotations.listOpenRevocations(0)).not.toContain(revocationId);
  });
});
