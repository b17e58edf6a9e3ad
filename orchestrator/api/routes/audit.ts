import { z } from 'zod';
import { canSee, principalOf } from '../auth';
import { auditEntrySchema, auditQuery, chainSchema, idParams, orgParams } from '../api-schemas';
import { problems, problemResponses } from '../problems';
import type { ApiPlugin } from '../server';
import { makeSingleFlightMemo } from '../single-flight-memo';

/**
 * The audit trail of a deployment and of an organisation, with the verification of the
 * organisation's hash chain (every row's hash, the links between rows, the chain's head).
 *
 * The verification walks every row of the chain since its anchor, whatever `limit` the request
 * asks, and an organisation can lengthen its own chain cheaply (each denied binding is a row).
 * So it is not run per request (review R15 F2): per API process and organisation, concurrent
 * requests share one run, and a chain found intact is kept for `API_AUDIT_VERIFY_MEMO_MS` after
 * its run ends (the response's `chain.verifiedAt` says when the run started). A failed run, or a
 * chain found broken, is kept for no one: the next request verifies again. At most
 * AUDIT_VERIFY_MEMO_MAX_ORGS organisations' results are kept per process.
 */
export const AUDIT_VERIFY_MEMO_MAX_ORGS = 10_000;

type Row = Record<string, unknown>;
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

export const auditRoutes: ApiPlugin = async (app, deps) => {
  const { store, secrets, db } = deps.pipeline;
  const verifications = makeSingleFlightMemo((orgId) => secrets.verifyAuditLog(orgId), {
    ttlMs: deps.pipeline.config.API_AUDIT_VERIFY_MEMO_MS,
    maxKeys: AUDIT_VERIFY_MEMO_MAX_ORGS,
    keep: (v) => v.ok,
  });
  const verifyChain = async (orgId: string) => {
    const { value, at } = await verifications.get(orgId);
    return { ...value, verifiedAt: new Date(at).toISOString() };
  };

  app.get(
    '/v1/deployments/:id/audit',
    {
      config: { scopes: ['audit:read'] },
      schema: {
        tags: ['audit'],
        summary: "A deployment's audit rows and its organisation's chain verification",
        params: idParams,
        querystring: auditQuery,
        response: {
          200: z.object({ deploymentId: z.string(), entries: z.array(auditEntrySchema), chain: chainSchema }),
          ...problemResponses(400, 401, 403, 404),
        },
      },
    },
    async (request) => {
      const p = principalOf(request);
      const d = await store.get(request.params.id).catch((err: unknown) => {
        if ((err as { code?: string }).code === 'not_found') throw problems.notFound('deployment');
        throw err;
      });
      if (!canSee(p, d.orgId)) throw problems.notFound('deployment');
      const [entries, chain] = await Promise.all([
        store.audit(d.id, request.query.limit ?? 1000),
        verifyChain(d.orgId),
      ]);
      return { deploymentId: d.id, entries: entries.map((e) => ({ ...e, deploymentId: d.id })), chain };
    },
  );

  app.get(
    '/v1/orgs/:orgId/audit',
    {
      config: { scopes: ['audit:read'] },
      schema: {
        tags: ['audit'],
        summary: "An organisation's audit rows (oldest first, paged by afterId) and its chain verification",
        params: orgParams,
        querystring: auditQuery,
        response: {
          200: z.object({ orgId: z.string(), entries: z.array(auditEntrySchema), chain: chainSchema }),
          ...problemResponses(400, 401, 403, 404),
        },
      },
    },
    async (request) => {
      const p = principalOf(request);
      const { orgId } = request.params;
      if (!canSee(p, orgId)) throw problems.notFound('organization');
      const rows = await db
        .rpc<Row[]>('api_audit__org', {
          p_org_id: orgId,
          p_limit: request.query.limit ?? 1000,
          p_after_id: request.query.afterId,
        })
        .catch((err: unknown) => {
          if ((err as { code?: string }).code === 'not_found') throw problems.notFound('organization');
          throw err;
        });
      const chain = await verifyChain(orgId);
      return {
        orgId,
        chain,
        entries: rows.map((r) => ({
          id: Number(r.id),
          at: String(r.at),
          deploymentId: str(r.deployment_id),
          secretId: str(r.secret_id),
          version: r.version === null || r.version === undefined ? null : Number(r.version),
          operation: String(r.operation),
          outcome: String(r.outcome),
          actor: str(r.actor),
          jobId: str(r.job_id),
          reason: str(r.reason),
        })),
      };
    },
  );
};
