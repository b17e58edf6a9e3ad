import { z } from 'zod';
import { makeRotationServiceFromPipeline } from '../../rotation/rotation-from-config';
import { reasonCodeOf } from '../../rotation/rotation-job';
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
 * token sees another org's secret or rotation as absent (404).
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
