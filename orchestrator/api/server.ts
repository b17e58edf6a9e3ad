import swagger from '@fastify/swagger';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import {
  jsonSchemaTransform,
  jsonSchemaTransformObject,
  serializerCompiler,
  validatorCompiler,
  type FastifyPluginAsyncZod,
} from 'fastify-type-provider-zod';
import type { Redis } from 'ioredis';
import type { Pipeline } from '../deployments/pipeline-from-config';
import type { Logger } from '../log';
import type { TokenStore } from './api-tokens';
import type { RevocationFeed } from './token-revocations';
import { registerAuth } from './auth';
import { clientErrorProblem } from './client-errors';
import { makeErrorHandler, problems, sendProblem, toProblem } from './problems';
import { makeAuthFailureLimiter, registerRateLimit } from './rate-limit';
import { auditRoutes } from './routes/audit';
import { deploymentRoutes } from './routes/deployments';
import { docsRoutes } from './routes/docs';
import { eventRoutes } from './routes/events';
import { healthRoutes } from './routes/health';
import { metricsRoutes } from './routes/metrics';
import { queueBoardRoutes } from './routes/queue-board';
import { rotationRoutes } from './routes/rotation';
import { secretRoutes } from './routes/secrets';
import { webhookRoutes } from './routes/webhooks';

/**
 * The HTTP API (issue 10): Fastify 5 with zod schemas that both validate requests and generate the
 * OpenAPI 3.1 document (GET /openapi.json, docs page at /docs). The API validates, authenticates
 * and calls the services; it never reads a secret value and never touches a host.
 */
export type ApiDeps = {
  readonly log: Logger;
  /** The token cache in the API process (token-cache.ts); a plain token store works too. */
  readonly tokens: Pick<TokenStore, 'authenticate'> & { vouched?(token: string): boolean };
  /**
   * The rate limiters' Redis connection, made to fail fast (api-process.ts: no offline queue, no
   * retries, a command timeout); the pipeline's (which waits for Redis) when absent.
   */
  readonly limiterRedis?: Redis;
  /** Announced revocations: open event streams of a revoked token end at once. */
  readonly revocations?: Pick<RevocationFeed, 'onRevoked'>;
  readonly pipeline: Pick<Pipeline, 'config' | 'db' | 'store' | 'secrets' | 'service' | 'queues' | 'redis'>;
};

/** A route module: a Fastify plugin that receives the API's dependencies as its options. */
export type ApiPlugin = FastifyPluginAsyncZod<ApiDeps>;

/**
 * Every route module, registered in this order. To add one: write `orchestrator/api/routes/<x>.ts`
 * exporting an `ApiPlugin`, give each route `config: { scopes: [...] }` (or `{ public: true }`),
 * and add ONE line here.
 */
export const ROUTES: readonly ApiPlugin[] = [
  healthRoutes,
  docsRoutes,
  secretRoutes,
  deploymentRoutes,
  auditRoutes,
  eventRoutes,
  webhookRoutes,
  // H5 (events, webhooks), H6 (metrics, Bull Board), H8 (rotation): one line each below
  rotationRoutes,
  metricsRoutes,
  queueBoardRoutes,
];

/** A key is far smaller; nothing the API takes comes near this. */
export const BODY_LIMIT_BYTES = 64 * 1024;

/**
 * How often Node looks for requests past `requestTimeout` (its default, 30 s, would let one live
 * up to twice the timeout): a quarter of it, between 250 ms and 5 s. Each look walks only the
 * connections whose request is still arriving.
 */
export const connectionsCheckingInterval = (requestTimeoutMs: number): number =>
  Math.min(5_000, Math.max(250, Math.floor(requestTimeoutMs / 4)));

export const buildApi = async (
  deps: ApiDeps,
  opts: { routes?: readonly ApiPlugin[] } = {},
): Promise<FastifyInstance> => {
  const app = Fastify({
    loggerInstance: deps.log.child(
      { component: 'api' },
      {
        // Fastify's request log line: method and path only. No headers (Authorization), no query
        // string, no body ever reaches a log line.
        serializers: {
          req: (req: FastifyRequest) => ({
            method: req.method,
            url: req.url.split('?')[0]?.slice(0, 200),
            remoteAddress: req.ip,
          }),
        },
      },
    ) as FastifyBaseLogger,
    bodyLimit: BODY_LIMIT_BYTES,
    // Review R15 F4: Fastify's default is 0 (none), so a request whose Content-Length promised a
    // body that never came held its socket forever. Node's requestTimeout is "the timeout for
    // receiving the entire request from the client" (node:http docs): it stops once the whole
    // message (headers and body) has arrived, so a response that streams for minutes (SSE) is not
    // cut. Past it Node emits clientError ERR_HTTP_REQUEST_TIMEOUT: clientErrorProblem answers 408
    // and closes. test/unit/api/api-request-timeout.test.ts holds both.
    // Given to the server's constructor too, with headersTimeout no larger: Fastify only sets the
    // requestTimeout property after Node has defaulted headersTimeout to 60 s, and Node's check
    // (ConnectionsList::Expired) swaps the two when headersTimeout is the larger, so a body could
    // take 60 s to arrive (the test's 1 s bound then never fires: checked).
    requestTimeout: deps.pipeline.config.API_REQUEST_TIMEOUT_MS,
    http: {
      requestTimeout: deps.pipeline.config.API_REQUEST_TIMEOUT_MS,
      headersTimeout: Math.min(60_000, deps.pipeline.config.API_REQUEST_TIMEOUT_MS),
      connectionsCheckingInterval: connectionsCheckingInterval(deps.pipeline.config.API_REQUEST_TIMEOUT_MS),
    },
    // a client-supplied request id would be logged verbatim: always our own
    requestIdHeader: false,
    routerOptions: { maxParamLength: 200 },
    return503OnClosing: true,
    clientErrorHandler: clientErrorProblem,
    // The router's own refusals (a path parameter over maxParamLength: 414; a malformed percent
    // escape: 400) answer with a problem document like every other error, not Fastify's JSON.
    frameworkErrors: (err, _request, reply) => {
      const tooLong = err.code === 'FST_ERR_MAX_PARAM_LENGTH';
      void sendProblem(
        reply,
        toProblem(
          problems.invalid(
            'path',
            tooLong ? 'a path parameter is too long' : 'is not a valid URL component',
            tooLong ? 414 : 400,
          ),
        ),
      );
    },
  });
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler(makeErrorHandler(deps.log.child({ component: 'api' })));
  app.setNotFoundHandler((request, reply) => sendProblem(reply, toProblem(problems.notFound('route'))));
  registerAuth(
    app,
    deps.tokens,
    makeAuthFailureLimiter({
      redis: deps.limiterRedis ?? deps.pipeline.redis,
      limit: deps.pipeline.config.API_AUTH_FAILURE_LIMIT,
      prefix: deps.pipeline.config.QUEUE_PREFIX,
    }),
  );
  // after the auth hook (hooks run in the order they are added) and before every route
  registerRateLimit(app, {
    redis: deps.limiterRedis ?? deps.pipeline.redis,
    limit: deps.pipeline.config.API_RATE_LIMIT,
    prefix: deps.pipeline.config.QUEUE_PREFIX,
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Cortex orchestrator API',
        version: '1.0.0',
        description:
          'Store customer keys, request agent deployments and follow them. Errors are RFC 9457 problem documents (application/problem+json).',
      },
      components: {
        securitySchemes: {
          bearer: {
            type: 'http',
            scheme: 'bearer',
            description: 'ctx_… token from `cortexctl tokens create`',
          },
        },
      },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
    transformObject: jsonSchemaTransformObject,
  });
  app.get('/openapi.json', { schema: { hide: true }, config: { public: true } }, async (_req, reply) =>
    reply.header('cache-control', 'no-cache').send(app.swagger()),
  );

  for (const routes of opts.routes ?? ROUTES) await app.register(routes, deps);
  return app;
};
