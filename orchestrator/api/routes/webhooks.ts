import { z } from 'zod';
import { makeWebhookStore } from '../../webhooks/webhook-store';
import { webhookLoopbackAllowed } from '../../webhooks/webhook-address';
import { auditContext, principalOf, targetOrg } from '../auth';
import { problemResponses } from '../problems';
import type { ApiPlugin } from '../server';

/**
 * Webhook endpoints of an organisation: register (the signing secret is in the 201 answer and in
 * no later one), list, remove, and the recent deliveries (metadata only). An org token acts on its
 * own organisation; an ops (admin) token names one. Another organisation's endpoint is a 404.
 * URLs: https to a public host; in local mode (HOST_PROVIDER=local, RPC_ADAPTER=postgres: webhookLoopbackAllowed) also http://127.0.0.1.
 */
const uuid = z.uuid({ error: 'must be a UUID' });
const orgQuery = z.object({ orgId: uuid.optional() }).strict();

const endpointSchema = z.object({
  id: uuid,
  orgId: uuid,
  url: z.string(),
  createdAt: z.string(),
  disabledAt: z.string().nullable(),
  consecutiveFailures: z
    .number()
    .int()
    .describe(
      'Failed deliveries in a row (timeouts, connection, TLS and DNS failures, 5xx, 408; not 429); a 2xx resets it',
    ),
  breakerOpenUntil: z
    .string()
    .nullable()
    .describe(
      "While in the future, the endpoint's circuit breaker is open: its deliveries wait, pending, until then (one older than WEBHOOK_MAX_AGE_SECONDS ends failed, error expired)",
    ),
});
const createdSchema = endpointSchema.extend({
  secret: z
    .string()
    .describe('whsec_… (Standard Webhooks). Shown once: store it now; it cannot be read again.'),
});
const deliverySchema = z.object({
  id: z.string(),
  endpointId: uuid,
  eventId: z.string(),
  state: z.enum(['pending', 'queued', 'delivered', 'failed', 'cancelled']),
  attempts: z.number().int(),
  lastStatus: z.number().int().nullable(),
  lastError: z.string().nullable(),
  createdAt: z.string(),
  finishedAt: z.string().nullable(),
});

export const webhookRoutes: ApiPlugin = async (app, deps) => {
  const store = makeWebhookStore({ rpc: deps.pipeline.db.rpc });
  const allowLoopback = webhookLoopbackAllowed(deps.pipeline.config);
  const scopes = ['admin', 'deployments:write'] as const;

  app.post(
    '/v1/webhooks',
    {
      config: { scopes },
      schema: {
        tags: ['webhooks'],
        summary:
          "Register a webhook endpoint for the organisation's deployment status changes and health events",
        description:
          'Each status change (type deployment.status) and health event (deployment.health: an agent that may not be serving, after a revoke or a rollback of a rotation) of a deployment of the organisation is POSTed, signed with the Standard Webhooks scheme (headers webhook-id = the event id, webhook-timestamp, webhook-signature). The answer holds the signing secret, once.',
        body: z
          .object({
            url: z.string().min(1, 'is required').max(2000, 'must be at most 2000 characters'),
            orgId: uuid.optional(),
          })
          .strict(),
        response: { 201: createdSchema, ...problemResponses(400, 401, 403, 404, 413, 415, 429) },
      },
    },
    async (request, reply) => {
      const p = principalOf(request);
      const orgId = targetOrg(p, request.body.orgId);
      const e = await store.createEndpoint(
        { orgId, url: request.body.url, allowLoopback },
        auditContext(request),
      );
      return reply.code(201).header('cache-control', 'no-store').send({
        id: e.id,
        orgId: e.orgId,
        url: e.url,
        createdAt: e.createdAt,
        disabledAt: e.disabledAt,
        consecutiveFailures: e.consecutiveFailures,
        breakerOpenUntil: e.breakerOpenUntil,
        secret: e.secret.reveal(),
      });
    },
  );

  app.get(
    '/v1/webhooks',
    {
      config: { scopes },
      schema: {
        tags: ['webhooks'],
        summary: "The organisation's active webhook endpoints (never their secrets)",
        querystring: orgQuery,
        response: {
          200: z.object({ endpoints: z.array(endpointSchema) }),
          ...problemResponses(400, 401, 403, 404, 429),
        },
      },
    },
    async (request) => {
      const orgId = targetOrg(principalOf(request), request.query.orgId);
      return { endpoints: await store.listEndpoints(orgId) };
    },
  );

  app.delete(
    '/v1/webhooks/:id',
    {
      config: { scopes },
      schema: {
        tags: ['webhooks'],
        summary: 'Remove a webhook endpoint: its secret is deleted, undelivered deliveries cancelled',
        params: z.object({ id: uuid }).strict(),
        querystring: orgQuery,
        response: { 200: endpointSchema, ...problemResponses(400, 401, 403, 404, 429) },
      },
    },
    async (request) => {
      const orgId = targetOrg(principalOf(request), request.query.orgId);
      return store.disableEndpoint(orgId, request.params.id, auditContext(request));
    },
  );

  app.get(
    '/v1/webhooks/:id/deliveries',
    {
      config: { scopes },
      schema: {
        tags: ['webhooks'],
        summary: "An endpoint's most recent deliveries, newest first (state, attempts, last HTTP status)",
        params: z.object({ id: uuid }).strict(),
        querystring: orgQuery,
        response: {
          200: z.object({ deliveries: z.array(deliverySchema) }),
          ...problemResponses(400, 401, 403, 404, 429),
        },
      },
    },
    async (request) => {
      const orgId = targetOrg(principalOf(request), request.query.orgId);
      return { deliveries: await store.listDeliveries(orgId, request.params.id) };
    },
  );
};
