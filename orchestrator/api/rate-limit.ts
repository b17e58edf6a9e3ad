import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance } from 'fastify';
import type { Redis } from 'ioredis';
import type { AuthFailureLimiter } from './auth';
import { invalidInput } from '../errors';
import { ApiProblem } from './problems';

/**
 * Per-token rate limits, counted in Redis (so every API process shares one budget per token):
 * `API_RATE_LIMIT` requests per window (`600/min` by default; `/s`, `/min`, `/h`). The key is the
 * token's id once the auth hook has run, the peer address for public routes. The limiter runs as a
 * route-level onRequest hook, which Fastify runs after the instance's onRequest hooks, i.e. after
 * authentication: a request without a valid token is refused (401) before it is counted, and
 * tokens are 256 random bits, so there is nothing to guess by retrying. Over the limit: 429, a
 * problem document, and Retry-After in seconds. Failed authentications have their own per-address
 * limit (makeAuthFailureLimiter below), checked before the token lookup.
 */
export const parseRateLimit = (spec: string, field = 'API_RATE_LIMIT'): { max: number; windowMs: number } => {
  const m = /^([1-9][0-9]{0,6})\/(s|sec|second|min|minute|h|hour)$/.exec(spec.trim());
  if (!m?.[1] || !m[2]) throw invalidInput(field, 'must look like 600/min (a count per s, min or h)');
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

/**
 * Failed authentications per client address (the socket's peer; no X-Forwarded-For is trusted),
 * counted in Redis under `<prefix>:authfail:ip-<address>` (fixed window from the first failure).
 * The auth hook asks `blocked` BEFORE it looks a token up, so an address past `API_AUTH_FAILURE_LIMIT`
 * gets 429 without reaching Postgres — a flood of well-formed unknown tokens costs one Redis GET
 * each, not an api_tokens__authenticate call. While blocked, a valid token from that address is
 * refused too (it cannot be told apart without the lookup).
 */
export const makeAuthFailureLimiter = (opts: {
  redis: Pick<Redis, 'get' | 'pttl' | 'incr' | 'pexpire'>;
  limit: string;
  prefix: string;
}): AuthFailureLimiter => {
  const { max, windowMs } = parseRateLimit(opts.limit, 'API_AUTH_FAILURE_LIMIT');
  const key = (ip: string): string => `${opts.prefix}:authfail:ip-${ip}`;
  return {
    max,
    windowMs,
    async blocked(ip) {
      const n = Number((await opts.redis.get(key(ip))) ?? 0);
      if (n < max) return undefined;
      const ttl = await opts.redis.pttl(key(ip));
      return Math.max(1, Math.ceil((ttl > 0 ? ttl : windowMs) / 1000));
    },
    async failed(ip) {
      const n = await opts.redis.incr(key(ip));
      // the window starts at the first failure; a key left without expiry (crash between the two
      // calls) gets one at the next failure
      if (n === 1 || (await opts.redis.pttl(key(ip))) < 0) await opts.redis.pexpire(key(ip), windowMs);
    },
  };
};
