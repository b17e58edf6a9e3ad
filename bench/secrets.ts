import { randomBytes, randomUUID } from 'node:crypto';
import { Pool } from 'pg';
import { loadConfig } from '../orchestrator/config';
import { makePgRpc } from '../orchestrator/db/pg-rpc';
import type { Rpc } from '../orchestrator/db/rpc';
import { Secret } from '../orchestrator/secret';
import { makeMemoryFingerprintKey } from '../orchestrator/secrets/fingerprint';
import { makeSecretsService } from '../orchestrator/secrets/secrets-service';

/** The fingerprint key (kept outside the database); in memory for the benchmark. */
const fingerprintKey = makeMemoryFingerprintKey();

/**
 * `npm run bench -- secrets [seconds] [auditRows]`: audited secret reads per second through the
 * Postgres adapter with 8 concurrent callers (one organisation, then eight), and the time to
 * verify an audit log of 100,000 rows. Needs `npm run services:up`. It writes bench rows to the
 * local database (audit rows are append-only by design).
 */
const CALLERS = 8;

const setup = async (rpc: Rpc, orgs: number): Promise<{ orgId: string; deploymentId: string }[]> => {
  const secrets = makeSecretsService({ rpc, fingerprintKey });
  const out: { orgId: string; deploymentId: string }[] = [];
  for (let i = 0; i < orgs; i++) {
    const tag = randomUUID().slice(0, 8);
    const org = await rpc<{ id: string }>('organizations__create', { p_name: `bench-${tag}` });
    const dep = await rpc<{ id: string }>('deployments__create', {
      p_org_id: org.id,
      p_name: `bench-${tag}`,
      p_subdomain: `bench-${tag}`,
    });
    const meta = await secrets.create({
      orgId: org.id,
      name: 'bench',
      provider: 'other',
      value: new Secret(`bench-${randomBytes(24).toString('base64url')}`),
    });
    await secrets.bind(dep.id, 'BENCH_KEY', meta.secretId);
    out.push({ orgId: org.id, deploymentId: dep.id });
  }
  return out;
};

const readLoad = async (rpc: Rpc, targets: { deploymentId: string }[], seconds: number): Promise<number> => {
  const secrets = makeSecretsService({ rpc, fingerprintKey });
  const until = Date.now() + seconds * 1000;
  let reads = 0;
  const caller = async (i: number): Promise<void> => {
    const target = targets[i % targets.length];
    if (!target) return;
    while (Date.now() < until) {
      const r = await secrets.readForDeploymentOrThrow(target.deploymentId, {
        actor: 'bench',
        jobId: `bench-${i}`,
      });
      reads += r.length;
    }
  };
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: CALLERS }, (_, i) => caller(i)));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  return reads / secs;
};

export const run = async (args: string[]): Promise<void> => {
  const seconds = Number(args[0] ?? 10);
  const auditRowsWanted = Number(args[1] ?? 100_000);
  const config = loadConfig(process.env);
  const db = makePgRpc({ connectionString: config.DATABASE_URL, max: CALLERS + 2 });
  const admin = new Pool({ connectionString: config.DATABASE_URL, max: 1 });
  try {
    const one = await setup(db.rpc, 1);
    await readLoad(db.rpc, one, 1); // warm-up
    const sameOrg = await readLoad(db.rpc, one, seconds);
    console.log(`audited reads/s, ${CALLERS} callers, 1 organisation:  ${sameOrg.toFixed(0)}`);
    const eight = await setup(db.rpc, CALLERS);
    const manyOrgs = await readLoad(db.rpc, eight, seconds);
    console.log(`audited reads/s, ${CALLERS} callers, ${CALLERS} organisations: ${manyOrgs.toFixed(0)}`);

    // A 100,000-row log for one organisation, written through the real audited read path.
    const [big] = await setup(db.rpc, 1);
    if (!big) throw new Error('setup failed');
    const t0 = Date.now();
    const batch = 10_000;
    for (let done = 0; done < auditRowsWanted; done += batch) {
      const n = Math.min(batch, auditRowsWanted - done);
      await admin.query('set role cortex_orchestrator');
      // one committed intent covers the batch (reads must come within its 60 s)
      const intent = await admin.query<{ id: string }>(
        `select public.deployment_secrets__intend_read(p_deployment_id => $1, p_actor => 'bench') ->> 'intent_id' as id`,
        [big.deploymentId],
      );
      await admin.query(
        `select public.deployment_secrets__read(p_deployment_id => $1, p_actor => 'bench', p_intent_id => $3)
           from generate_series(1, $2)`,
        [big.deploymentId, n, intent.rows[0]?.id],
      );
      await admin.query('reset role');
    }
    console.log(
      `wrote ${auditRowsWanted} audit rows through deployment_secrets__read in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
    );
    const secrets = makeSecretsService({ rpc: db.rpc, fingerprintKey });
    const t1 = process.hrtime.bigint();
    const v = await secrets.verifyAuditLog(big.orgId);
    const ms = Number(process.hrtime.bigint() - t1) / 1e6;
    console.log(`verify ${v.rowsChecked} audit rows: ${(ms / 1000).toFixed(2)} s (ok=${v.ok})`);
  } finally {
    await admin.end();
    await db.close();
  }
};
