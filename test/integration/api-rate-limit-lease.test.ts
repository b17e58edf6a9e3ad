import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { loadConfig } from '../../orchestrator/config';
import { redisOptionsFromUrl } from '../../orchestrator/deployments/pipeline-from-config';
import { leaseSize } from '../../orchestrator/api/rate-limit-lease';
import { makeRedisBudget } from '../../orchestrator/api/rate-limit';

/**
 * The leased rate limit's Lua against the real Redis (rate-limit.ts `makeRedisBudget`): three
 * "processes" (three connections, three budgets) under 32 concurrent callers never allow more
 * than the limit and together nearly reach it; the key gets the window's expiry; a small limit is
 * exact per request; a used-up window is refused without a round trip.
 */
const config = loadConfig(process.env);
const connections: Redis[] = [];
const connect = (): Redis => {
  const r = new Redis({
    ...redisOptionsFromUrl(config.REDIS_URL),
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
  });
  connections.push(r);
  return r;
};
const ready = (r: Redis) =>
  r.status === 'ready' ? Promise.resolve() : new Promise((res) => r.once('ready', res));
const prefix = `test-lease-${randomBytes(4).toString('hex')}`;

afterAll(async () => {
  const r = connections[0];
  if (r) {
    const keys = await r.keys(`${prefix}:*`);
    if (keys.length > 0) await r.del(...keys);
  }
  for (const c of connections) c.disconnect();
});

const load = async (take: (i: number) => Promise<{ allowed: boolean }>, conns: number, total: number) => {
  let next = 0;
  let allowed = 0;
  await Promise.all(
    Array.from({ length: conns }, async () => {
      while (next < total) {
        const i = next;
        next += 1;
        if ((await take(i)).allowed) allowed += 1;
      }
    }),
  );
  return allowed;
};

describe('leased rate limit against Redis', () => {
  it('three processes, 32 callers, 3,000 requests for a limit of 2,000: never more, at most a block per other process less', async () => {
    const rs = [connect(), connect(), connect()];
    await Promise.all(rs.map(ready));
    const budgets = rs.map((redis) => makeRedisBudget({ redis, max: 2_000, windowMs: 60_000, prefix }));
    const allowed = await load(
      (i) => budgets[i % 3]?.take('token-x') ?? Promise.reject(new Error('no budget')),
      32,
      3_000,
    );
    expect(allowed).toBeLessThanOrEqual(2_000);
    expect(allowed).toBeGreaterThanOrEqual(2_000 - 2 * leaseSize(2_000));
    const key = `${prefix}:ratelimit:token-x`;
    expect(Number(await rs[0]?.get(key))).toBeLessThanOrEqual(2_000);
    const ttl = (await rs[0]?.pttl(key)) ?? -1;
    expect(ttl).toBeGreaterThan(50_000);
    expect(ttl).toBeLessThanOrEqual(60_000);
    // the leases: about 100 round trips for 2,000 requests, not 3,000
    expect(budgets.reduce((n, b) => n + b.stats().leases, 0)).toBeLessThan(300);
  });

  it('a small limit (3/min) is exact, one INCR per request', async () => {
    const redis = connect();
    await ready(redis);
    const budget = makeRedisBudget({ redis, max: 3, windowMs: 60_000, prefix });
    const answers = [];
    for (let i = 0; i < 5; i += 1) answers.push((await budget.take('token-small')).allowed);
    expect(answers).toEqual([true, true, true, false, false]);
    expect(await redis.get(`${prefix}:ratelimit:token-small`)).toBe('5');
    expect(budget.stats().leases).toBe(0);
  });

  it('Redis connection down: the take fails (the hook answers 503) even with leased units left', async () => {
    const redis = connect();
    await ready(redis);
    const budget = makeRedisBudget({ redis, max: 10_000, windowMs: 60_000, prefix });
    expect((await budget.take('token-down')).allowed).toBe(true); // 99 units left here
    const ended = new Promise((res) => redis.once('end', res));
    redis.disconnect();
    await ended;
    await expect(budget.take('token-down')).rejects.toThrow();
  });
});
