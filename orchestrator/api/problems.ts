import { STATUS_CODES } from 'node:http';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { isOrchestratorError, type ErrorCode } from '../errors';
import type { Logger } from '../log';
import { reasonOf } from '../steps/step-runner';

/**
 * RFC 9457 problem documents for every error the API returns. What goes into one: a status, a
 * title, a plain detail of our own words, and for bad input the offending field's path. Never a
 * stack, an SQL message, or any part of the request's values (a value may be a customer's key).
 */
export const PROBLEM_TYPE_BASE = 'https://cortex.invalid/problems/';

export const problemSchema = z
  .looseObject({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    detail: z.string().optional(),
    /** The first offending field, as a path (`bindings.0.envVar`, `header.idempotency-key`). */
    field: z.string().optional(),
    errors: z.array(z.object({ field: z.string(), message: z.string() })).optional(),
  })
  .describe('An RFC 9457 problem document (application/problem+json)');
export type Problem = z.infer<typeof problemSchema>;

/** Thrown by handlers and hooks; becomes its problem document as is. */
export class ApiProblem extends Error {
  override readonly name = 'ApiProblem';
  constructor(
    readonly status: number,
    readonly slug: string,
    readonly detail: string,
    readonly extra: { field?: string; errors?: { field: string; message: string }[] } = {},
  ) {
    super(detail);
  }
}

export const problems = {
  unauthorized: (detail = 'a valid bearer token is required'): ApiProblem =>
    new ApiProblem(401, 'unauthorized', detail),
  forbidden: (scopes: readonly string[]): ApiProblem =>
    new ApiProblem(403, 'forbidden', `this token lacks the scope this needs: ${scopes.join(' or ')}`),
  notFound: (what = 'resource'): ApiProblem => new ApiProblem(404, 'not-found', `${what} not found`),
  invalid: (field: string, message: string, status = 400): ApiProblem =>
    new ApiProblem(status, 'invalid-input', `${field}: ${message}`, {
      field,
      errors: [{ field, message }],
    }),
};

const STATUS_BY_CODE: Partial<Record<ErrorCode, number>> = {
  invalid_input: 400,
  not_found: 404,
  conflict: 409,
  superseded: 409,
  secret_denied: 422,
  db_unavailable: 503,
  timeout: 504,
};

// zod's messages are ours (schemas) or zod's defaults; rebuild the defaults from the issue's
// shape so that no message can quote input (unrecognized keys are named: a field name, not a value).
const issueMessage = (issue: {
  keyword: string;
  message: string;
  params: Record<string, unknown>;
}): string => {
  const p = issue.params;
  switch (issue.keyword) {
    case 'invalid_type':
      return p.expected === undefined ? 'is required' : `must be a ${String(p.expected)}`;
    case 'too_small':
      return `is too small (minimum ${String(p.minimum)})`;
    case 'too_big':
      return `is too big (maximum ${String(p.maximum)})`;
    case 'unrecognized_keys':
      return `unknown field${Array.isArray(p.keys) && p.keys.length > 1 ? 's' : ''}: ${(Array.isArray(p.keys) ? p.keys : []).map((k) => String(k).slice(0, 64)).join(', ')}`;
    case 'invalid_value':
      return Array.isArray(p.values) ? `must be one of ${p.values.map(String).join(', ')}` : 'is invalid';
    case 'invalid_format':
      return issue.message.startsWith('Invalid')
        ? `has an invalid format (${String(p.format)})`
        : issue.message;
    case 'custom':
      return issue.message;
    default:
      return issue.message.startsWith('Invalid') ? 'is invalid' : issue.message;
  }
};

const CONTEXT_PREFIX: Record<string, string> = {
  body: '',
  querystring: 'query.',
  params: 'path.',
  headers: 'header.',
};

/** A path from zod's `/bindings/0/envVar` → `bindings.0.envVar` (keys cut short, never values). */
const fieldPath = (context: string | undefined, instancePath: string): string => {
  const parts = instancePath
    .split('/')
    .filter(Boolean)
    .map((s) => s.slice(0, 64));
  const base = context === 'body' || context === undefined ? '' : (CONTEXT_PREFIX[context] ?? `${context}.`);
  return (
    `${base}${parts.join('.')}`.replace(/\.$/, '') || (context === 'body' ? 'body' : (context ?? 'input'))
  );
};

/** `bindings[0].secret_id` (the SQL functions' names) → `bindings.0.secretId` (the API's). */
export const apiField = (sqlField: string): string =>
  sqlField.replace(/\[(\d+)\]/g, '.$1').replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());

const FASTIFY_CODES: Record<string, { status: number; slug: string; detail: string; field?: string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: {
    status: 413,
    slug: 'body-too-large',
    detail: 'the request body is larger than 64 KiB',
    field: 'body',
  },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: {
    status: 415,
    slug: 'unsupported-media-type',
    detail: 'send the body as application/json',
    field: 'header.content-type',
  },
  FST_ERR_CTP_EMPTY_JSON_BODY: {
    status: 400,
    slug: 'invalid-input',
    detail: 'body: must not be empty with content-type application/json',
    field: 'body',
  },
  FST_ERR_CTP_INVALID_JSON_BODY: {
    status: 400,
    slug: 'invalid-input',
    detail: 'body: is not valid JSON',
    field: 'body',
  },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: {
    status: 400,
    slug: 'invalid-input',
    detail: 'header.content-length: does not match the body',
    field: 'header.content-length',
  },
  FST_ERR_CTP_INVALID_CHARSET: {
    status: 415,
    slug: 'unsupported-media-type',
    detail: 'header.content-type: only utf-8 is accepted',
    field: 'header.content-type',
  },
};

const build = (
  status: number,
  slug: string,
  detail: string,
  extra: { field?: string; errors?: { field: string; message: string }[] } = {},
): Problem => ({
  type: `${PROBLEM_TYPE_BASE}${slug}`,
  title: STATUS_CODES[status] ?? 'Error',
  status,
  detail,
  ...(extra.field ? { field: extra.field } : {}),
  ...(extra.errors ? { errors: extra.errors } : {}),
});

/**
 * not_found / conflict. Our own messages (the services', the SQL functions' `<thing> <id> not
 * found`) name only ids the caller sent; a database's own message (a unique violation names a
 * constraint, and Postgres's detail can quote values) is replaced by plain words.
 */
const NOT_FOUND =
  /^(?:[a-z_]+: )?((?:deployment|organization|secret|token) [0-9a-f-]{36} not found)(?: \(SQLSTATE \w+\))?$/;
const dbSafe = (
  code: ErrorCode,
  message: string,
): [string, { field?: string; errors?: { field: string; message: string }[] }] => {
  if (!message.includes('(SQLSTATE')) return [message, {}];
  const nf = NOT_FOUND.exec(message);
  if (nf?.[1]) return [nf[1], {}];
  if (code === 'conflict') {
    const field = /subdomain/.test(message) ? 'subdomain' : /name/.test(message) ? 'name' : undefined;
    return field
      ? [`${field}: is already in use`, { field, errors: [{ field, message: 'is already in use' }] }]
      : ['the request conflicts with the current state of the resource', {}];
  }
  return [code === 'not_found' ? 'not found' : 'the request could not be completed', {}];
};

/** Any thrown thing → the problem document to send. Unknown errors are 500 with no detail of theirs. */
export const toProblem = (err: unknown): Problem => {
  if (err instanceof ApiProblem) return build(err.status, err.slug, err.detail, err.extra);
  if (hasZodFastifySchemaValidationErrors(err)) {
    const context = (err as { validationContext?: string }).validationContext;
    const errors = err.validation.slice(0, 20).map((v) => {
      const field = fieldPath(context, v.instancePath);
      return { field, message: issueMessage(v as never) };
    });
    const first = errors[0] ?? { field: 'input', message: 'is invalid' };
    return build(400, 'invalid-input', `${first.field}: ${first.message}`, { field: first.field, errors });
  }
  if (isOrchestratorError(err)) {
    const status = STATUS_BY_CODE[err.code];
    if (status === undefined || status >= 500) {
      return status === undefined
        ? build(500, 'internal', 'an internal error occurred; it has been logged')
        : build(status, err.code.replace(/_/g, '-'), 'a dependency is unavailable; try again shortly');
    }
    if (err.code === 'invalid_input' || err.code === 'secret_denied') {
      const field = apiField(err.field ?? 'input');
      // "<sql_field>: message" → the message alone, under the API's field name
      const message = err.message.replace(/^[^:]*: /, '').replace(/ \(SQLSTATE \w+\)$/, '');
      return build(status, status === 422 ? 'unprocessable' : 'invalid-input', `${field}: ${message}`, {
        field,
        errors: [{ field, message }],
      });
    }
    return build(status, err.code.replace(/_/g, '-'), ...dbSafe(err.code, err.message));
  }
  const fe = err as Partial<FastifyError> | null;
  const known = typeof fe?.code === 'string' ? FASTIFY_CODES[fe.code] : undefined;
  if (known) return build(known.status, known.slug, known.detail, known.field ? { field: known.field } : {});
  if (typeof fe?.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500)
    // Fastify's own 4xx (a malformed URL, a bad header): its message may quote the input; ours does not
    return build(fe.statusCode, 'bad-request', 'the request could not be processed');
  return build(500, 'internal', 'an internal error occurred; it has been logged');
};

export const sendProblem = (reply: FastifyReply, p: Problem): FastifyReply =>
  reply
    .code(p.status)
    .header('content-type', 'application/problem+json; charset=utf-8')
    .header('cache-control', 'no-store')
    .send(JSON.stringify(p));

/** Fastify's error handler: everything ends as a problem document; 5xx are logged (no body, no value). */
export const makeErrorHandler =
  (log: Logger) =>
  (err: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply => {
    const p = toProblem(err);
    if (p.status >= 500)
      log.error(
        { reqId: request.id, method: request.method, route: request.routeOptions.url, reason: reasonOf(err) },
        'request failed',
      );
    if (p.status === 401) void reply.header('www-authenticate', 'Bearer');
    return sendProblem(reply, p);
  };

/** The problem responses a route documents in OpenAPI, by status. */
export const problemResponses = (
  ...statuses: number[]
): Record<
  number,
  { description: string; content: { 'application/problem+json': { schema: typeof problemSchema } } }
> =>
  Object.fromEntries(
    statuses.map((s) => [
      s,
      {
        description: STATUS_CODES[s] ?? 'Error',
        content: { 'application/problem+json': { schema: problemSchema } },
      },
    ]),
  );
