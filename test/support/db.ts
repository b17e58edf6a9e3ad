import { randomUUID } from 'node:crypto';
import { Pool } from 'pg';
import type { Rpc } from '../../orchestrator/db/rpc';

/** The local database that `npm run services:up` starts (override with TEST_DATABASE_URL). */
export const testDatabaseUrl = (): string =>
  process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:54329/cortex?sslmode=disable';

/** A superuser pool for assertions the API roles cannot make (reading the audit log's raw rows). */
export const adminPool = (): Pool => new Pool({ connectionString: testDatabaseUrl(), max: 2 });

/** Fresh rows for one test: an organisation and a deployment in it, named uniquely. */
export const makeOrgWithDeployment = async (rpc: Rpc): Promise<{ orgId: string; deploymentId: string }> => {
  const tag = randomUUID().slice(0, 8);
  const org = await rpc<{ id: string }>('organizations__create', { p_name: `test-org-${tag}` });
  const dep = await rpc<{ id: string }>('deployments__create', {
    p_org_id: org.id,
    p_name: `agent-${tag}`,
    p_subdomain: `t-${tag}`,
    p_provider: 'local',
  });
  return { orgId: org.id, deploymentId: dep.id };
};

export interface AuditRow {
  id: string;
  org_id: string | null;
  deployment_id: string | null;
  secret_id: string | null;
  version: number | null;
  operation: string;
  outcome: string;
  actor: string | null;
  job_id: string | null;
  request_ip: string | null;
  user_agent: string | null;
  reason: string | null;
}

export const auditRows = async (
  pool: Pool,
  where: { deploymentId?: string; secretId?: string },
): Promise<AuditRow[]> => {
  const r = await pool.query<AuditRow>(
    `select id::text, org_id, deployment_id, secret_id, version, operation, outcome, actor, job_id,
            host(request_ip) as request_ip, user_agent, reason
       from public.secret_access_log
      where ($1::uuid is null or deployment_id = $1) and ($2::uuid is null or secret_id = $2)
      order by id`,
    [where.deploymentId ?? null, where.secretId ?? null],
  );
  return r.rows;
};
