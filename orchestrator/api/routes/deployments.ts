import { z } from 'zod';
import type { Deployment, StepRecord } from '../../deployments/deployment-store';
import { jobIdFor } from '../../queues/job-payloads';
import { auditContext, canSee, principalOf, targetOrg } from '../auth';
import {
  createDeploymentBody,
  deploymentAcceptedSchema,
  deploymentSchema,
  deploymentSummarySchema,
  idParams,
  stepSchema,
  idempotencyHeaders,
  listDeploymentsQuery,
  operationAcceptedSchema,
} from '../api-schemas';
import { makeDeploymentRequests } from '../deployment-requests';
import { mayReadFailureDetail, publicFailure } from '../failure-catalogue';
import { makeReadCoalescer } from '../read-coalescer';
import { problems, problemResponses } from '../problems';
import type { ApiPlugin } from '../server';
import type { ApiPrincipal } from '../api-tokens';

/**
 * A failure as the API shows it: the code and the catalogue's sentence (failure-catalogue.ts); the
 * recorded text (provider answers, host names, addresses) only with `detail` (an ops admin token).
 */
const stepView = (s: StepRecord, detail: boolean): z.infer<typeof stepSchema> => {
  const f = publicFailure(s.error);
  return {
    run: s.run,
    operation: s.operation,
    step: s.step,
    status: s.status,
    attempt: s.attempt,
    startedAt: s.startedAt,
    finishedAt: s.finishedAt,
    durationMs: s.durationMs,
    error: f?.message ?? null,
    errorCode: f?.code ?? null,
    ...(detail && s.error !== null ? { errorDetail: s.error } : {}),
  };
};

/** Field by field (no spread of the record): what is not named here never reaches a response. */
const deploymentView = (d: Deployment, detail: boolean): z.infer<typeof deploymentSchema> => {
  const f = publicFailure(d.failureReason);
  return {
    id: d.id,
    orgId: d.orgId,
    name: d.name,
    subdomain: d.subdomain,
    provider: d.provider,
    region: d.region,
    serverType: d.serverType,
    runtime: d.runtime,
    status: d.status,
    ipv4: d.ipv4,
    ipv6: d.ipv6,
    dnsName: d.dnsName,
    currentOperation: d.currentOperation,
    currentRun: d.currentRun,
    failedStep: d.failedStep,
    failureReason: f?.message ?? null,
    failureCode: f?.code ?? null,
    ...(detail && d.failureReason !== null ? { failureDetail: d.failureReason } : {}),
    createdAt: d.createdAt,
    updatedAt: d.updatedAt,
    steps: d.steps.map((s) => stepView(s, detail)),
  };
};

/**
 * Deployments: request one (with an optional Idempotency-Key), read it with its steps, list, retry,
 * deprovision. Another organisation's deployment is a 404, exactly like one that does not exist.
 */
export const deploymentRoutes: ApiPlugin = async (app, deps) => {
  const { pipeline } = deps;
  const requests = makeDeploymentRequests({
    rpc: pipeline.db.rpc,
    queues: pipeline.queues,
    config: pipeline.config,
  });

  // GET's reads of one deployment share a Postgres read, never one started before they arrived
  // (read-coalescer.ts: as fresh as a read of their own)
  const reads = makeReadCoalescer((id) => pipeline.store.get(id));

  /** The deployment if this principal may see it; otherwise the same 404 as for an unknown id. */
  const visible = async (
    p: ApiPrincipal,
    id: string,
    get: (id: string) => Promise<Deployment> = (i) => pipeline.store.get(i),
  ): Promise<Deployment> => {
    const d = await get(id).catch((err: unknown) => {
      if ((err as { code?: string }).code === 'not_found') throw problems.notFound('deployment');
      throw err;
    });
    if (!canSee(p, d.orgId)) throw problems.notFound('deployment');
    return d;
  };

  app.post(
    '/v1/deployments',
    {
      config: { scopes: ['deployments:write'] },
      schema: {
        tags: ['deployments'],
        summary: 'Request a deployment (an agent server with its bindings)',
        description:
          '201 for a new deployment; 200 with the same body for a repeat of an Idempotency-Key with the same body; 422 for the key with another body.',
        headers: idempotencyHeaders,
        body: createDeploymentBody,
        response: {
          201: deploymentAcceptedSchema,
          200: deploymentAcceptedSchema,
          ...problemResponses(400, 401, 403, 404, 409, 413, 415, 422),
        },
      },
    },
    async (request, reply) => {
      const p = principalOf(request);
      const orgId = targetOrg(p, request.body.orgId);
      const key = request.headers['idempotency-key'];
      const r = await requests.request(
        { ...request.body, orgId },
        {
          ...auditContext(request),
          tokenId: p.tokenId,
          ...(key === undefined ? {} : { idempotencyKey: key }),
        },
      );
      if (r.status === 'mismatch')
        throw problems.invalid(
          'header.idempotency-key',
          'was already used with a different request body; use a new key for a new request',
          422,
        );
      const d = r.deployment;
      if (r.status === 'replayed') void reply.header('idempotent-replayed', 'true');
      return reply
        .code(r.status === 'created' ? 201 : 200)
        .header('location', `/v1/deployments/${d.id}`)
        .send({
          deploymentId: d.id,
          orgId: d.orgId,
          name: d.name,
          subdomain: d.subdomain,
          runtime: d.runtime,
          jobId: jobIdFor('provision', d.id),
        });
    },
  );

  app.get(
    '/v1/deployments/:id',
    {
      config: { scopes: ['deployments:read'] },
      schema: {
        tags: ['deployments'],
        summary: 'A deployment with its steps',
        params: idParams,
        response: { 200: deploymentSchema, ...problemResponses(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const p = principalOf(request);
      const d = await visible(p, request.params.id, reads.read);
      return deploymentView(d, mayReadFailureDetail(p));
    },
  );

  app.get(
    '/v1/deployments',
    {
      config: { scopes: ['deployments:read'] },
      schema: {
        tags: ['deployments'],
        summary: "The organisation's deployments, newest first",
        querystring: listDeploymentsQuery,
        response: { 200: z.array(deploymentSummarySchema), ...problemResponses(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const p = principalOf(request);
      const { orgId, includeDeleted, limit } = request.query;
      // an ops token without orgId lists every organisation's
      const org = p.orgId === null ? orgId : targetOrg(p, orgId);
      return pipeline.service.list({
        ...(org === undefined ? {} : { orgId: org }),
        includeDeleted,
        ...(limit === undefined ? {} : { limit }),
      });
    },
  );

  app.post(
    '/v1/deployments/:id/retry',
    {
      config: { scopes: ['deployments:write'] },
      schema: {
        tags: ['deployments'],
        summary: 'Resume a failed deployment at its failed step',
        params: idParams,
        response: { 202: operationAcceptedSchema, ...problemResponses(400, 401, 403, 404, 409) },
      },
    },
    async (request, reply) => {
      const d = await visible(principalOf(request), request.params.id);
      const r = await pipeline.service.retry(d.id);
      return reply.code(202).send({ deploymentId: d.id, status: r.status, jobId: r.jobId });
    },
  );

  app.delete(
    '/v1/deployments/:id',
    {
      config: { scopes: ['deployments:write'] },
      schema: {
        tags: ['deployments'],
        summary: 'Deprovision: DNS, host, the deployment-scoped keys, then deleted',
        params: idParams,
        response: { 202: operationAcceptedSchema, ...problemResponses(400, 401, 403, 404, 409) },
      },
    },
    async (request, reply) => {
      const d = await visible(principalOf(request), request.params.id);
      // audited (`request`: the token, address, user agent and job) with the status change
      const r = await pipeline.service.destroy(d.id, auditContext(request));
      return reply
        .code(202)
        .send({ deploymentId: d.id, status: r.status, ...(r.jobId ? { jobId: r.jobId } : {}) });
    },
  );
};
