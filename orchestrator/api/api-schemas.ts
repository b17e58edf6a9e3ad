import { z } from 'zod';
import { deploymentRequestSchema } from '../deployments/deployments-service';
import { MAX_SECRET_LENGTH, secretName, secretProvider, uuid } from '../secrets/secret-input';

/**
 * The API's request and response schemas: the same zod objects validate requests, shape responses
 * and generate the OpenAPI document. The deployment request is the deployments service's own
 * schema, with the organisation optional (an org token implies it).
 */
export const idParams = z.object({ id: uuid }).strict();
export const orgParams = z.object({ orgId: uuid }).strict();

export const createDeploymentBody = deploymentRequestSchema.extend({ orgId: uuid.optional() });

export const idempotencyHeaders = z.looseObject({
  'idempotency-key': z
    .string()
    .min(1, 'must not be empty')
    .max(200, 'must be at most 200 characters')
    .regex(/^[\x21-\x7e]+$/, 'must be visible ASCII characters only')
    .optional()
    .describe(
      'Per organisation (any of its tokens, or an ops token acting for it): the same key and request, the same result; the same key with another request: 422.',
    ),
});

const iso = z.string().describe('ISO 8601 time');
const stepStatus = z.enum(['pending', 'running', 'succeeded', 'failed', 'skipped']);
export const deploymentStatus = z.enum([
  'requested',
  'provisioning',
  'ready',
  'failed',
  'rotating',
  'deprovisioning',
  'deleted',
]);

export const stepSchema = z.object({
  run: z.number().int(),
  operation: z.enum(['provision', 'deprovision']),
  step: z.string(),
  status: stepStatus,
  attempt: z.number().int(),
  startedAt: iso.nullable(),
  finishedAt: iso.nullable(),
  durationMs: z.number().nullable(),
  error: z
    .string()
    .nullable()
    .describe(
      "A failed step: one fixed sentence for its errorCode (docs/api.md, 'Failure codes'); never the failure's own text",
    ),
  errorCode: z
    .string()
    .nullable()
    .describe("A failed step: the reason code, the same as the event stream's reasonCode"),
  errorDetail: z
    .string()
    .optional()
    .describe('The failure as recorded (provider and host details): only for an ops token with admin'),
});

export const deploymentSchema = z.object({
  id: uuid,
  orgId: uuid,
  name: z.string(),
  subdomain: z.string(),
  provider: z.enum(['local', 'hcloud']),
  region: z.string().nullable(),
  serverType: z.string().nullable(),
  runtime: z.enum(['echo', 'openclaw']),
  status: deploymentStatus,
  ipv4: z.string().nullable(),
  ipv6: z.string().nullable(),
  dnsName: z.string().nullable(),
  currentOperation: z.enum(['provision', 'deprovision']).nullable(),
  currentRun: z.number().int(),
  failedStep: z.string().nullable(),
  failureReason: z
    .string()
    .nullable()
    .describe(
      "One fixed sentence for failureCode (docs/api.md, 'Failure codes'); never the failure's own text",
    ),
  failureCode: z.string().nullable().describe("The failed step's reason code (as its errorCode)"),
  failureDetail: z
    .string()
    .optional()
    .describe('The failure as recorded (provider and host details): only for an ops token with admin'),
  createdAt: iso,
  updatedAt: iso,
  steps: z.array(stepSchema),
});

export const deploymentSummarySchema = z.object({
  id: uuid,
  orgId: uuid,
  name: z.string(),
  subdomain: z.string(),
  provider: z.string(),
  runtime: z.string(),
  status: deploymentStatus,
  dnsName: z.string().nullable(),
  ipv4: z.string().nullable(),
  failedStep: z.string().nullable(),
  createdAt: iso,
});

/** The answer to a deployment request: the same for the first request and its replays. */
export const deploymentAcceptedSchema = z.object({
  deploymentId: uuid,
  orgId: uuid,
  name: z.string(),
  subdomain: z.string(),
  runtime: z.enum(['echo', 'openclaw']),
  jobId: z.string(),
});

export const operationAcceptedSchema = z.object({
  deploymentId: uuid,
  status: deploymentStatus,
  jobId: z.string().optional(),
});

export const listDeploymentsQuery = z
  .object({
    orgId: uuid.optional(),
    includeDeleted: z
      .enum(['true', 'false'], { error: 'must be true or false' })
      .optional()
      .transform((v) => v === 'true'),
    limit: z.coerce.number().int().min(1).max(1000).optional(),
  })
  .strict();

export const createSecretBody = z
  .object({
    orgId: uuid.optional(),
    name: secretName,
    provider: secretProvider,
    value: z
      .string({ error: 'must be a string' })
      .max(MAX_SECRET_LENGTH, `must be at most ${MAX_SECRET_LENGTH} characters`)
      .describe('The key itself. Never returned, never logged.'),
  })
  .strict();

export const secretMetadataSchema = z.object({
  id: uuid,
  orgId: uuid,
  name: z.string(),
  provider: z.string(),
  displayPrefix: z.string(),
  fingerprint: z.string(),
  version: z.number().int(),
  deploymentId: uuid.nullable().optional(),
  status: z.string().optional(),
  createdAt: iso.optional(),
});

export const listSecretsQuery = z.object({ orgId: uuid.optional() }).strict();

export const auditEntrySchema = z.object({
  id: z.number().int(),
  at: iso,
  deploymentId: uuid.nullable().optional(),
  secretId: uuid.nullable(),
  version: z.number().int().nullable(),
  operation: z.string(),
  outcome: z.string(),
  actor: z.string().nullable(),
  jobId: z.string().nullable(),
  reason: z.string().nullable(),
});

export const chainSchema = z.object({
  ok: z.boolean(),
  rowsChecked: z.number().int(),
  firstBadId: z.number().int().nullable(),
  problem: z.enum(['changed', 'removed', 'reordered']).nullable(),
  verifiedAt: z
    .string()
    .describe(
      'ISO 8601 time the verification started; one intact result is shared for up to API_AUDIT_VERIFY_MEMO_MS (30 s by default) after it ends',
    ),
});

export const auditQuery = z
  .object({
    limit: z.coerce.number().int().min(1).max(10000).optional(),
    afterId: z.coerce.number().int().min(0).optional(),
  })
  .strict();
