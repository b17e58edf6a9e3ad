import { leaseSize, makeLeasedBudget, type LeaseAnswer } from '../../../orchestrator/api/rate-limit-lease';

/**
 * The leased rate-limit budget (rate-limit-lease.ts) against a stand-in for Redis that does what
 * the Lua scripts do (each call one atomic step, answered after a turn of the event loop): never
 * over the limit across processes, small limits per request, leftover units dropped at the end of
 * the window, a used-up window remembered locally, Redis not ready: no leased unit spent.
 */
const fakeRedis = (windowMs: number, clock: { t: number }) => {
  const keys = new Map<string, { n: number; until: number }>();
  const calls = { lease: 0, hit: 0 };
  const entry = (key: string) => {
    let e = keys.get(key);
    if (!e || e.until <= clock.t) {
      e = { n: 0, until: clock.t + windowMs };
      keys.set(key, e);
    }
    return e;
  };
  const turn = () => new Promise((r) => setImmediate(r));
  return {
    calls,
    count: (key: string) => keys.get(key)?.n ?? 0,
    async lease(key: string, max: number, want: number): Promise<LeaseAnswer> {
      calls.lease += 1;
      await turn();
      const e = entry(key);
      const granted = Math.max(0, Math.min(want, max - e.n));
      e.n += granted;
      return { granted, count: e.n, ttlMs: e.until - clock.t };
    },
    async hit(key: string) {
      calls.hit += 1;
      await turn();
      const e = entry(key);
      e.n += 1;
      return { count: e.n, ttlMs: e.until - clock.t };
    },
  };
};

const setUp = (max: number, windowMs = 60_000) => {
  const clock = { t: 1_000_000 };
  const redis = fakeRedis(windowMs, clock);
  const state = { ready: true };
  const budget = () =>
    makeLeasedBudget({
      max,
      lease: (key, want) => redis.lease(key, max, want),
      hit: (key) => redis.hit(key),
      reachable: () => state.ready,
      now: () => clock.t,
    });
  return { clock, redis, state, budget };
};

describe('leased rate-limit budget', () => {
  it('lease size: none under 200 per window, 1 % above, at most 100', () => {
    expect([3, 5, 199, 200, 600, 10_000, 9_999_999].map(leaseSize)).toEqual([0, 0, 1, 2, 6, 100, 100]);
  });

  /** `connections` callers, each taking one unit after another, `total` takes in all */
  const load = async (
    take: (i: number) => Promise<{ allowed: boolean; remaining: number }>,
    connections: number,
    total: number,
  ) => {
    const answers: { allowed: boolean; remaining: number }[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: connections }, async () => {
        while (next < total) {
          const i = next;
          next += 1;
          answers.push(await take(i));
        }
      }),
    );
    return answers;
  };

  it('one process, 32 connections, demand over the limit: exactly `max` allowed, about one lease per block', async () => {
    const s = setUp(1_000);
    const b = s.budget();
    const answers = await load(() => b.take('token-a'), 32, 1_500);
    const allowed = answers.filter((a) => a.allowed);
    expect(allowed).toHaveLength(1_000);
    expect(s.redis.count('token-a')).toBeGreaterThanOrEqual(1_000);
    // 100 blocks of 10 (not 1,000 round trips); the refusals after the window was used up are local
    expect(s.redis.calls.lease + s.redis.calls.hit).toBeLessThanOrEqual(110);
    // remaining counts down exactly in one process
    expect(Math.min(...allowed.map((a) => a.remaining))).toBe(0);
  });

  it('three processes sharing Redis never allow more than the limit, and together nearly reach it', async () => {
    const s = setUp(2_000);
    const procs = [s.budget(), s.budget(), s.budget()];
    const answers = await load(
      (i) => procs[i % 3]?.take('token-a') ?? Promise.reject(new Error('no process')),
      32,
      3_000,
    );
    const allowed = answers.filter((a) => a.allowed).length;
    expect(allowed).toBeLessThanOrEqual(2_000);
    // what the others hold unspent is lost to a process: at most one block (20) per other process
    expect(allowed).toBeGreaterThanOrEqual(2_000 - 2 * leaseSize(2_000));
  });

  it('many callers at once (more than a block): still never over the limit', async () => {
    const s = setUp(1_000);
    const procs = [s.budget(), s.budget()];
    const answers = await Promise.all(
      Array.from(
        { length: 1_500 },
        (_, i) => procs[i % 2]?.take('token-a') ?? Promise.reject(new Error('x')),
      ),
    );
    expect(answers.filter((a) => a.allowed).length).toBeLessThanOrEqual(1_000);
    expect(answers.filter((a) => a.allowed).length).toBeGreaterThanOrEqual(1_000 - leaseSize(1_000));
  });

  it('small limits stay exact and per request (the 3/min of the tests): one INCR each, no lease', async () => {
    const s = setUp(3);
    const b = s.budget();
    const answers = [];
    for (let i = 0; i < 5; i += 1) answers.push(await b.take('token-a'));
    expect(answers.map((a) => a.allowed)).toEqual([true, true, true, false, false]);
    expect(s.redis.calls).toEqual({ lease: 0, hit: 5 });
  });

  it('units left at the end of the window are dropped, not spent in the next one', async () => {
    const s = setUp(1_000, 60_000);
    const b = s.budget();
    expect((await b.take('token-a')).allowed).toBe(true); // leased 10, spent 1
    s.clock.t += 60_000; // the window ended (in Redis and, conservatively, here)
    await b.take('token-a');
    // a new lease: the 9 old units were not used
    expect(s.redis.calls.lease).toBe(2);
    expect(s.redis.count('token-a')).toBe(10);
  });

  it('a window used up in Redis is refused locally until it ends (no Redis round trip per refusal)', async () => {
    const s = setUp(200);
    const b = s.budget();
    for (let i = 0; i < 200; i += 1) expect((await b.take('token-a')).allowed).toBe(true);
    const leases = s.redis.calls.lease;
    // the last lease said the window is used up: refused here, without asking Redis
    const refused = await b.take('token-a');
    expect(refused).toMatchObject({ allowed: false, remaining: 0 });
    expect(refused.resetMs).toBeGreaterThan(0);
    for (let i = 0; i < 50; i += 1) expect((await b.take('token-a')).allowed).toBe(false);
    expect(s.redis.calls.lease).toBe(leases);
    expect(s.redis.calls.hit).toBe(0);
    s.clock.t += 60_000;
    expect((await b.take('token-a')).allowed).toBe(true);
  });

  it('Redis not ready: leased units are not spent, each request goes to Redis (which refuses: the 503)', async () => {
    const s = setUp(1_000);
    const b = s.budget();
    expect((await b.take('token-a')).allowed).toBe(true); // 9 units left here
    s.state.ready = false;
    const failing = makeLeasedBudget({
      max: 1_000,
      lease: () => Promise.reject(new Error('down')),
      hit: () => Promise.reject(new Error('Stream isn’t writeable and enableOfflineQueue options is false')),
      reachable: () => false,
      now: () => s.clock.t,
    });
    await expect(failing.take('token-a')).rejects.toThrow();
    // the budget with units left does not spend them either: it asks Redis per request
    const hits = s.redis.calls.hit;
    await b.take('token-a');
    expect(s.redis.calls.hit).toBe(hits + 1);
  });

  it('a failed lease fails its callers (the 503), and the next request leases again', async () => {
    let fail = true;
    const b = makeLeasedBudget({
      max: 1_000,
      lease: async () => {
        await Promise.resolve();
        if (fail) throw new Error('timeout');
        return { granted: 10, count: 10, ttlMs: 60_000 };
      },
      hit: () => Promise.reject(new Error('unused')),
      reachable: () => true,
    });
    const r = await Promise.allSettled([b.take('k'), b.take('k')]);
    expect(r.map((x) => x.status)).toEqual(['rejected', 'rejected']);
    fail = false;
    expect((await b.take('k')).allowed).toBe(true);
  });

  it('keys beyond maxKeys (a flood of addresses) are counted per request, not kept', async () => {
    const clock = { t: 0 };
    const redis = fakeRedis(60_000, clock);
    const b = makeLeasedBudget({
      max: 1_000,
      lease: (key, want) => redis.lease(key, 1_000, want),
      hit: (key) => redis.hit(key),
      reachable: () => true,
      maxKeys: 3,
      now: () => clock.t,
    });
    for (let i = 0; i < 6; i += 1) await b.take(`ip-${i}`);
    expect(b.stats().keys).toBe(3);
    expect(redis.calls).toEqual({ lease: 3, hit: 3 });
  });
});
