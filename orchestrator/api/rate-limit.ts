import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance } from 'fastify';
import type { Redis } from 'ioredis';
import { invalidInput } from '../errors';
import { ApiProblem } from './problems';

/**
 * Per-token rate limits, counted in Redis (so every API process shares one budget per token):
 * `API_RATE_LIMIT` requests per window (`600/min` by default; `/s`, `/min`, `/h`). The key is the
 * token's id once the auth hook has run, the peer address for public routes. The limiter runs as a
 * route-level onRequest hook, which Fastify runs after the instance's onRequest hooks, i.e. after
 * authentication: a request without a valid token is refused (401) before it is counted, and
 * tokens are 256 random bits, so there is nothing to guess by retrying. Over the limit: 429, a
 * problem document, and Retry-After in seconds.
 */
export const parseRateLimit = (spec: string): { max: number; windowMs: number } => {
  const m = /^([1-9][0-9]{0,6})\/(s|sec|second|min|minute|h|hour)$/.exec(spec.trim());
  if (!m?.[1] || !m[2])
    throw invalidInput('API_RATE_LIMIT', 'must look like 600/min (a count per s, min or h)');
  const unit = m[2];
  const windowMs = unit.startsWith('s') ? 1_000 : unit.startsWith('m') ? 60_000 : 3_600_000;
  return { max: Number(m[1]), windowMs };
};

export const registerRateLimit = async (
  app: FastifyInstance,
  opts: { redis: Redis; limit: string; prefix: string },
): Promise<void> => {
  const { max, windowMs } = parseRateLimit(opts.limit);
  await app.register(rateLimit, {
    global: true,
    hook: 'onRequest',
    max,
    timeWindow: windowMs,
    redis: opts.redis,
    nameSpace: `${opts.prefix}:ratelimit:`,
    keyGenerator: (request) =>
      request.principal ? `token-${request.principal.tokenId}` : `ip-${request.ip}`,
    errorResponseBuilder: (_request, ctx) =>
      new ApiProblem(
        429,
        'too-many-requests',
        `at most ${ctx.max} requests per ${windowMs / 1000} s; retry after ${ctx.after}`,
      ),
  });
};
