import { z } from 'zod';
import { Secret } from '../../secret';
import { auditContext, principalOf, targetOrg } from '../auth';
import { createSecretBody, listSecretsQuery, secretMetadataSchema } from '../api-schemas';
import { problemResponses } from '../problems';
import type { ApiPlugin } from '../server';

/**
 * Customer keys: store one (the value goes in, only metadata comes out) and list an organisation's
 * (metadata). The value is wrapped in `Secret` at once and handed to the secrets service, which
 * stores it through the audited SQL function; the audit row names the token, address and agent.
 */
type Row = Record<string, unknown>;

export const secretRoutes: ApiPlugin = async (app, deps) => {
  const { secrets, db } = deps.pipeline;

  app.post(
    '/v1/secrets',
    {
      config: { scopes: ['secrets:write'] },
      schema: {
        tags: ['secrets'],
        summary: "Store a customer's key; answers its metadata only",
        body: createSecretBody,
        response: { 201: secretMetadataSchema, ...problemResponses(400, 401, 403, 404, 409, 413, 415) },
      },
    },
    async (request, reply) => {
      const p = principalOf(request);
      const { value, orgId, name, provider } = request.body;
      const org = targetOrg(p, orgId);
      const meta = await secrets.create(
        { orgId: org, name, provider, value: new Secret(value) },
        auditContext(request),
      );
      return reply.code(201).send({
        id: meta.secretId,
        orgId: org,
        name: name.trim(),
        provider,
        displayPrefix: meta.displayPrefix,
        fingerprint: meta.fingerprint,
        version: meta.version,
      });
    },
  );

  app.get(
    '/v1/secrets',
    {
      config: { scopes: ['deployments:read', 'secrets:write'] },
      schema: {
        tags: ['secrets'],
        summary: "An organisation's active keys (metadata)",
        querystring: listSecretsQuery,
        response: { 200: z.array(secretMetadataSchema), ...problemResponses(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const org = targetOrg(principalOf(request), request.query.orgId);
      const rows = await db.rpc<Row[]>('api_secrets__list', { p_org_id: org });
      return rows.map((r) => ({
        id: String(r.id),
        orgId: String(r.org_id),
        deploymentId: (r.deployment_id as string | null) ?? null,
        name: String(r.name),
        provider: String(r.provider),
        displayPrefix: String(r.display_prefix),
        fingerprint: String(r.fingerprint),
        version: Number(r.version),
        status: String(r.status),
        createdAt: String(r.created_at),
      }));
    },
  );
};
