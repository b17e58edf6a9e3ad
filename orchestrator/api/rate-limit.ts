import type { FastifyInstance } from 'fastify';
import type { Redis } from 'ioredis';
import type { AuthFailureLimiter } from './auth';
import { invalidInput } from '../errors';
import { ApiProblem } from './problems';
import { makeLeasedBudget, type BudgetAnswer, type LeasedBudget } from './rate-limit-lease';

/**
 * Per-token rate limits, counted in Redis (so every API process shares one budget per token):
 * `API_RATE_LIMIT` requests per window (`600/min` by default; `/s`, `/min`, `/h`), a fixed window
 * from the first request, under `<prefix>:ratelimit:token-<token id>` (the peer address,
 * `ip-<address>`, for public routes). Under 200 per window every request is one INCR in Redis;
 * from 200, the process leases blocks of 1 % of the limit (at most 100) atomically and spends them
 * locally: never over the limit, at most one unspent block per process and key
 * (rate-limit-lease.ts). The hook is added after the auth hook, so it runs after
 * authentication: a request without a valid token is refused (401) before it is counted, and
 * tokens are 256 random bits, so there is nothing to guess by retrying. Over the limit: 429, a
 * problem document, and Retry-After in seconds; every counted answer carries `x-ratelimit-limit`,
 * `x-ratelimit-remaining` and `x-ratelimit-reset`. Failed authentications have their own
 * per-address limit (makeAuthFailureLimiter below), checked before the token lookup.
 *
 * Redis unreachable: the limiter fails fast and closed. Its connection has no offline queue and no
 * retries (a command while disconnected is refused at once) and a command timeout
 * (`API_REDIS_TIMEOUT_MS`, for a Redis that accepts but does not answer), and an authenticated
 * request then gets **503** (problem document, Retry-After: 5) instead of waiting: an API that
 * cannot count cannot promise a limit. Public routes (health, the OpenAPI document) are served
 * uncounted instead, so /healthz and /readyz still answer and say what is wrong.
 */
export const parseRateLimit = (spec: string, field = 'API_RATE_LIMIT'): { max: number; windowMs: number } => {
  const m = /^([1-9][0-9]{0,6})\/(s|sec|second|min|minute|h|hour)$/.exec(spec.trim());
  if (!m?.[1] || !m[2]) throw invalidInput(field, 'must look like 600/min (a count per s, min or h)');
  const unit = m[2];
  const windowMs = unit.startsWith('s') ? 1_000 : unit.startsWith('m') ? 60_000 : 3_600_000;
  return { max: Number(m[1]), windowMs };
};

// INCR; the window starts at the first request (a key left without expiry gets one now)
const HIT = `
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}`;

// Lease up to ARGV[3] units of the window's budget ARGV[2] (never past it), in one atomic step;
// the window (ARGV[1] ms) starts at the first request, as HIT's (rate-limit-lease.ts)
const LEASE = `
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.max(0, math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) - n))
if grant > 0 then n = redis.call('INCRBY', KEYS[1], grant) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {grant, n, ttl}`;

type HitCommand = (key: string, windowMs: number) => Promise<[number, number]>;
type LeaseCommand = (
  key: string,
  windowMs: number,
  max: number,
  want: number,
) => Promise<[number, number, number]>;

/**
 * The budget of one limit in Redis: per request (INCR) under 200 a window, else leased in blocks
 * (rate-limit-lease.ts). Exported for the integration test that runs it against a real Redis.
 */
export const makeRedisBudget = (opts: {
  redis: Redis;
  max: number;
  windowMs: number;
  prefix: string;
}): LeasedBudget => {
  const { max, windowMs } = opts;
  const redis = opts.redis as Redis & {
    cortexRateLimitHit?: HitCommand;
    cortexRateLimitLease?: LeaseCommand;
  };
  // EVALSHA with a fallback to EVAL, managed by ioredis
  if (!redis.cortexRateLimitHit) redis.defineCommand('cortexRateLimitHit', { numberOfKeys: 1, lua: HIT });
  if (!redis.cortexRateLimitLease)
    redis.defineCommand('cortexRateLimitLease', { numberOfKeys: 1, lua: LEASE });
  const full = (key: string): string => `${opts.prefix}:ratelimit:${key}`;
  return makeLeasedBudget({
    max,
    hit: async (key) => {
      const [count, ttlMs] = await (redis.cortexRateLimitHit as HitCommand)(full(key), windowMs);
      return { count, ttlMs };
    },
    lease: async (key, want) => {
      const [granted, count, ttlMs] = await (redis.cortexRateLimitLease as LeaseCommand)(
        full(key),
        windowMs,
        max,
        want,
      );
      return { granted, count, ttlMs };
    },
    // ioredis's connection state: leased units are not spent while it is not ready (rate-limit-lease.ts)
    reachable: () => redis.status === undefined || redis.status === 'ready',
  });
};

export const registerRateLimit = (
  app: FastifyInstance,
  opts: { redis: Redis; limit: string; prefix: string },
): void => {
  const { max, windowMs } = parseRateLimit(opts.limit);
  const budget = makeRedisBudget({ redis: opts.redis, max, windowMs, prefix: opts.prefix });

  app.addHook('onRequest', async (request, reply) => {
    const key = request.principal ? `token-${request.principal.tokenId}` : `ip-${request.ip}`;
    let answer: BudgetAnswer;
    try {
      answer = await budget.take(key);
    } catch {
      if (request.routeOptions.config.public) return;
      void reply.header('retry-after', '5');
      throw new ApiProblem(503, 'unavailable', 'the rate limiter cannot reach Redis; retry shortly');
    }
    const reset = Math.max(1, Math.ceil(answer.resetMs / 1000));
    void reply.headers({
      'x-ratelimit-limit': String(max),
      'x-ratelimit-remaining': String(answer.remaining),
      'x-ratelimit-reset': String(reset),
    });
    if (!answer.allowed) {
      void reply.header('retry-after', String(reset));
      throw new ApiProblem(
        429,
        'too-many-requests',
        `at most ${max} requests per ${windowMs / 1000} s; retry after ${reset} s`,
      );
    }
  });
};

/**
 * Failed authentications per client address (the socket's peer; no X-Forwarded-For is trusted),
 * counted in Redis under `<prefix>:authfail:ip-<address>` (fixed window from the first failure).
 * The auth hook asks `blocked` BEFORE it looks a token up, so an address past `API_AUTH_FAILURE_LIMIT`
 * gets 429 without reaching Postgres — a flood of well-formed unknown tokens costs one Redis GET
 * each, not an api_tokens__authenticate call. While blocked, a valid token from that address is
 * refused too unless this process found it valid within the hour (auth.ts, token-cache.ts
 * `vouched`). Redis unreachable: `blocked` throws a 503 problem (fail fast, closed).
 */
const unavailable = (): ApiProblem =>
  new ApiProblem(503, 'unavailable', 'the failed-authentication limiter cannot reach Redis; retry shortly');

export const makeAuthFailureLimiter = (opts: {
  redis: Pick<Redis, 'get' | 'pttl' | 'incr' | 'pexpire'> & { readonly status?: string };
  limit: string;
  prefix: string;
}): AuthFailureLimiter => {
  const { max, windowMs } = parseRateLimit(opts.limit, 'API_AUTH_FAILURE_LIMIT');
  const key = (ip: string): string => `${opts.prefix}:authfail:ip-${ip}`;
  return {
    max,
    windowMs,
    async blocked(ip) {
      let n: number;
      let ttl = 0;
      try {
        n = Number((await opts.redis.get(key(ip))) ?? 0);
        if (n >= max) ttl = await opts.redis.pttl(key(ip));
      } catch {
        // cannot tell: refuse fast rather than let unknown tokens through to Postgres uncounted
        throw unavailable();
      }
      if (n < max) return undefined;
      return Math.max(1, Math.ceil((ttl > 0 ? ttl : windowMs) / 1000));
    },
    assertReachable() {
      // ioredis's connection state; a stand-in without one is taken as reachable
      if (opts.redis.status !== undefined && opts.redis.status !== 'ready') throw unavailable();
    },
    async failed(ip) {
      try {
        const n = await opts.redis.incr(key(ip));
        // the window starts at the first failure; a key left without expiry (crash between the two
        // calls) gets one at the next failure
        if (n === 1 || (await opts.redis.pttl(key(ip))) < 0) await opts.redis.pexpire(key(ip), windowMs);
      } catch {
        // best effort: the request is refused (401) either way, and `blocked` refuses while Redis is out
      }
    },
  };
};
