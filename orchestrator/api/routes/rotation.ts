import { z } from 'zod';
import { makeRotationServiceFromPipeline } from '../../rotation/rotation-from-config';
import { reasonCodeOf } from '../../rotation/rotation-common';
import { revocationSummary } from '../../rotation/rotation-service';
import type { Revocation } from '../../rotation/revocation-store';
import type { Rotation } from '../../rotation/rotation-store';
import { isOrchestratorError } from '../../errors';
import { Secret } from '../../secret';
import { auditContext, principalOf } from '../auth';
import { idParams, idempotencyHeaders } from '../api-schemas';
import { problemResponses, problems } from '../problems';
import type { ApiPlugin } from '../server';

/**
 * Key rotation and revocation (issue 11): rotate a secret (a new value; the agents switch with no
 * failed request), revoke it from one deployment or all, and follow a rotation. The value goes in
 * once, is checked against its provider when that is configured, stored through the audited SQL
 * function, and never comes out; the job that fans out carries the rotation id only. An org-scoped
 * token sees another org's secret, rotation or revocation as absent (404).
 */
const rotateBody = z
  .object({
    value: z.string().min(1, 'must not be empty').max(4096, 'must be at most 4096 characters'),
    leaked: z
      .boolean()
      .optional()
      .describe('Leak response: the old version is deleted as soon as every agent moved'),
  })
  .strict();

const revokeBody = z
  .object({
    deploymentId: z
      .uuid({ error: 'must be a UUID' })
      .optional()
      .describe('Only this deployment (default: all, and the vault)'),
  })
  .strict();

const rotationDeploymentSchema = z.object({
  deploymentId: z.string(),
  fromVersion: z.number(),
  state: z.enum(['pending', 'switching', 'switched', 'rolled_back', 'failed', 'skipped']),
  reason: z.string().nullable(),
  swapMode: z.string().nullable(),
});

const rotationSchema = z.object({
  id: z.string(),
  secretId: z.string(),
  fromVersion: z.number(),
  toVersion: z.number(),
  state: z.enum(['running', 'completed']),
  leaked: z.boolean(),
  createdAt: z.string(),
  finishedAt: z.string().nullable(),
  retireAfter: z.string().nullable(),
  oldRetiredAt: z.string().nullable(),
  deployments: z.array(rotationDeploymentSchema),
  rolledBack: z.array(z.string()).describe('Deployments that stayed on (or went back to) the old version'),
});

const view = (r: Rotation): z.infer<typeof rotationSchema> => ({
  id: r.id,
  secretId: r.secretId,
  fromVersion: r.fromVersion,
  toVersion: r.toVersion,
  state: r.state,
  leaked: r.leaked,
  createdAt: r.createdAt,
  finishedAt: r.finishedAt,
  retireAfter: r.retireAfter,
  oldRetiredAt: r.oldRetiredAt,
  // a reason code only (e.g. unhealthy, remote_command_failed); the detail stays in the worker's log
  deployments: r.deployments.map((d) => ({ ...d, reason: reasonCodeOf(d.reason) })),
  rolledBack: r.deployments
    .filter((d) => d.state === 'rolled_back' || d.state === 'failed')
    .map((d) => d.deploymentId),
});

const revocationSchema = z.object({
  id: z.string(),
  secretId: z.string(),
  deploymentId: z.string().nullable().describe('null: the whole secret (every deployment, then the vault)'),
  state: z
    .enum(['open', 'done'])
    .describe('open: not finished yet (queued, running, or a provision still held the key: run again)'),
  attempts: z.number().describe('Job runs that reached their end'),
  result: z
    .object({
      revoked: z.array(z.string()).describe('Deployments taken off the key'),
      unhealthy: z
        .array(z.object({ deploymentId: z.string(), reason: z.string().describe('A reason code') }))
        .describe('Revoked deployments whose agent is not healthy without the key'),
      failed: z
        .array(z.object({ deploymentId: z.string(), reason: z.string().describe('A reason code') }))
        .describe('Deployments that still held the key after the run'),
      revokedCount: z.number(),
      unhealthyCount: z.number(),
      failedCount: z.number().describe('Full counts: each list above holds at most its first 20'),
      vaultDeleted: z.boolean().describe('Every version deleted from the vault'),
    })
    .nullable()
    .describe("The last run's outcome; null before one ended"),
  createdAt: z.string(),
  finishedAt: z.string().nullable(),
});

/** A stored reason as its code; a reason written as plain words (no code) gets `fallback`. */
const codeOr = (reason: string, fallback: string): string => {
  const c = reasonCodeOf(reason);
  return c === null || c === 'unexpected' ? fallback : c;
};

const revocationView = (r: Revocation): z.infer<typeof revocationSchema> => {
  const sum = revocationSummary(r);
  return {
    id: r.id,
    secretId: r.secretId,
    deploymentId: r.deploymentId,
    state: r.state,
    attempts: r.attempts,
    // a reason code only, as for rotations; the detail stays in the worker's log
    result: sum && {
      ...sum,
      unhealthy: sum.unhealthy.map((f) => ({ ...f, reason: codeOr(f.reason, 'unhealthy') })),
      failed: sum.failed.map((f) => ({ ...f, reason: codeOr(f.reason, 'unexpected') })),
    },
    createdAt: r.createdAt,
    finishedAt: r.finishedAt,
  };
};

export const rotationRoutes: ApiPlugin = async (app, deps) => {
  const service = makeRotationServiceFromPipeline(deps.pipeline);

  app.post(
    '/v1/secrets/:id/rotate',
    {
      config: { scopes: ['secrets:write'] },
      schema: {
        tags: ['rotation'],
        summary: 'Rotate a key: a new version, every bound agent switched with no failed request',
        description:
          '202 with the rotation (follow it at GET /v1/rotations/{id}). The same Idempotency-Key and value: the same rotation (200); the same key with another value or secret: 422.',
        params: idParams,
        headers: idempotencyHeaders,
        body: rotateBody,
        response: {
          200: rotationSchema,
          202: rotationSchema,
          ...problemResponses(400, 401, 403, 404, 409, 413, 415, 422),
        },
      },
    },
    async (request, reply) => {
      const p = principalOf(request);
      const key = request.headers['idempotency-key'];
      const r = await service
        .rotate(
          {
            secretId: request.params.id,
            value: new Secret(request.body.value),
            leaked: request.body.leaked ?? false,
            // per organisation, not per token: another token of the org retrying gets the same rotation
            ...(key === undefined ? {} : { idempotencyKey: key }),
            ...(p.orgId ? { orgId: p.orgId } : {}),
          },
          auditContext(request),
        )
        .catch((err: unknown) => {
          // The key reused for another request: the same answer as POST /v1/deployments gives.
          if (
            isOrchestratorError(err) &&
            err.code === 'conflict' &&
            /^secret_rotations__start: rotation_id: already used/.test(err.message)
          )
            throw problems.invalid(
              'header.idempotency-key',
              'was already used with a different request body; use a new key for a new request',
              422,
            );
          throw err;
        });
      // `leaked` is part of the request too: the key replayed with another leak setting is another
      // request (a leak response must never be answered with the earlier, graceful rotation)
      if (r.existing && r.leaked !== (request.body.leaked ?? false))
        throw problems.invalid(
          'header.idempotency-key',
          'was already used with a different request body; use a new key for a new request',
          422,
        );
      return reply.code(r.existing ? 200 : 202).send(view(r));
    },
  );

  app.post(
    '/v1/secrets/:id/revoke',
    {
      config: { scopes: ['secrets:write'] },
      schema: {
        tags: ['rotation'],
        summary: 'Revoke a key from one deployment, or from all of them and the vault',
        description:
          '202 with the revocation (follow it at GET /v1/revocations/{id}); a repeated request while one is open: the same revocation.',
        params: idParams,
        body: revokeBody,
        response: {
          202: z.object({ jobId: z.string(), revocationId: z.string(), deployments: z.number() }),
          ...problemResponses(400, 401, 403, 404, 415),
        },
      },
    },
    async (request, reply) => {
      const p = principalOf(request);
      // the accepted request is audited with the token, address and user agent, and the job id
      const r = await service.revoke(
        {
          secretId: request.params.id,
          ...(request.body.deploymentId ? { deploymentId: request.body.deploymentId } : {}),
          ...(p.orgId ? { orgId: p.orgId } : {}),
        },
        auditContext(request),
      );
      return reply.code(202).send(r);
    },
  );

  app.get(
    '/v1/rotations/:id',
    {
      config: { scopes: ['deployments:read', 'secrets:write'] },
      schema: {
        tags: ['rotation'],
        summary: 'A rotation and where each deployment stands',
        params: idParams,
        response: { 200: rotationSchema, ...problemResponses(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const p = principalOf(request);
      return view(await service.status(request.params.id, p.orgId ?? undefined));
    },
  );

  app.get(
    '/v1/revocations/:id',
    {
      config: { scopes: ['deployments:read', 'secrets:write'] },
      schema: {
        tags: ['rotation'],
        summary: 'A revocation: open or done, and what its last run revoked',
        params: idParams,
        response: { 200: revocationSchema, ...problemResponses(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const p = principalOf(request);
      return revocationView(await service.revocation(request.params.id, p.orgId ?? undefined));
    },
  );

  app.get(
    '/v1/secrets/overdue',
    {
      config: { scopes: ['deployments:read', 'secrets:write'] },
      schema: {
        tags: ['rotation'],
        summary: 'Keys older than their max age (rotation policy)',
        response: {
          200: z.array(
            z.object({
              secretId: z.string(),
              orgId: z.string(),
              name: z.string(),
              provider: z.string(),
              currentVersion: z.number(),
              ageSeconds: z.number(),
              maxAgeSeconds: z.number(),
            }),
          ),
          ...problemResponses(401, 403),
        },
      },
    },
    async (request) => {
      const p = principalOf(request);
      return service.overdue(p.orgId ?? undefined);
    },
  );
};
