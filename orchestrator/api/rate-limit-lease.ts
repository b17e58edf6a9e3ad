/**
 * The per-token (per-address on public routes) request budget, spent in the API process from
 * blocks leased atomically from Redis, so that a busy token costs Redis one round trip per block
 * instead of one per request (rate-limit.ts wires it in).
 *
 * - Never over the limit: a lease (Lua, one atomic step) grants at most what is left of the
 *   window's `max` in Redis, across every process. A unit is spent locally only before the window
 *   ends — an end computed from the moment the lease was SENT (send time + the TTL Redis answered),
 *   so never later than Redis's own — and units left over at the end are dropped, never carried.
 * - The price: units leased and not spent by one process are not available to the others until
 *   the window ends. At most one block per key and process, `leaseSize(max)` = 1 % of the limit
 *   (at most 100): with P processes a client may be refused up to (P - 1) blocks early, never
 *   served late. A single process (`cortexctl api`) is exact.
 * - Small limits stay exact, per request: under 200 per window there is no leasing (`leaseSize`
 *   is 1) and every request is one INCR in Redis, as before.
 * - A window used up in Redis is remembered until it ends: the refusals after it cost no Redis
 *   round trip (the counter never goes down within a window, so this is exact).
 * - Redis unreachable (its connection not ready): leased units are not spent; each request is
 *   counted on its own as before, which on the limiters' connection (no offline queue) fails at
 *   once: the 503 of rate-limit.ts. A Redis that is connected but does not answer is found by the
 *   next lease (the connection's command timeout), so at most one block is spent meanwhile.
 */
export interface LeaseAnswer {
  /** units granted (0: the window's budget is used up) */
  readonly granted: number;
  /** the window's count in Redis after this lease */
  readonly count: number;
  /** the window's remaining time in Redis, ms */
  readonly ttlMs: number;
}

export interface BudgetAnswer {
  readonly allowed: boolean;
  /** what this process knows is left in the window (exact with one process) */
  readonly remaining: number;
  /** ms until the window ends */
  readonly resetMs: number;
}

/** Units per lease for a limit of `max` per window: 1 % of it, at most 100; 1 (no leasing) below 200. */
export const leaseSize = (max: number): number => Math.min(100, Math.floor(max / 100));

interface Budget {
  units: number;
  count: number;
  /** local time the leased units stop being valid (conservative: send time + Redis's TTL) */
  readonly expires: number;
}

export const makeLeasedBudget = (opts: {
  max: number;
  /** one atomic lease in Redis of up to `want` units of `key`'s window */
  lease: (key: string, want: number) => Promise<LeaseAnswer>;
  /** one INCR in Redis (small limits, and keys beyond `maxKeys`): the window's count and TTL */
  hit: (key: string) => Promise<{ count: number; ttlMs: number }>;
  /** false when Redis is known to be unreachable (no round trip) */
  reachable: () => boolean;
  maxKeys?: number;
  now?: () => number;
}) => {
  const { max } = opts;
  // monotonic: a lease's end is `sent + Redis's TTL`; a wall clock stepped back would stretch it
  // past the real window (review R4)
  const now = opts.now ?? (() => performance.now());
  const maxKeys = opts.maxKeys ?? 10_000;
  const size = leaseSize(max);
  const budgets = new Map<string, Budget>();
  const leasing = new Map<string, Promise<void>>();
  let leases = 0;

  const perRequest = async (key: string): Promise<BudgetAnswer> => {
    const { count, ttlMs } = await opts.hit(key);
    return { allowed: count <= max, remaining: Math.max(0, max - count), resetMs: ttlMs };
  };

  const prune = (): void => {
    const t = now();
    for (const [k, b] of budgets) if (b.expires <= t) budgets.delete(k);
  };

  const startLease = (key: string): Promise<void> => {
    let p = leasing.get(key);
    if (p) return p;
    const sent = now();
    leases += 1;
    p = opts
      .lease(key, size)
      .then((a) => {
        budgets.set(key, { units: a.granted, count: a.count, expires: sent + Math.max(0, a.ttlMs) });
      })
      .finally(() => leasing.delete(key));
    leasing.set(key, p);
    return p;
  };

  return {
    size,
    /** Spend one unit of `key`'s budget (or find it used up). Throws when Redis cannot answer. */
    async take(key: string): Promise<BudgetAnswer> {
      if (size < 2 || !opts.reachable()) return perRequest(key);
      for (let attempt = 0; ; attempt += 1) {
        const t = now();
        const b = budgets.get(key);
        if (b && b.expires > t) {
          if (b.units > 0) {
            b.units -= 1;
            return { allowed: true, remaining: Math.max(0, max - b.count + b.units), resetMs: b.expires - t };
          }
          // used up in Redis: nobody gets a unit of this window any more
          if (b.count >= max) return { allowed: false, remaining: 0, resetMs: b.expires - t };
        }
        // served last after several blocks ran out under it: one request counted on its own
        if (attempt >= 4) return perRequest(key);
        if (!leasing.has(key) && !budgets.has(key) && budgets.size >= maxKeys) {
          prune();
          if (budgets.size >= maxKeys) return perRequest(key);
        }
        await startLease(key);
      }
    },
    stats: () => ({ leases, keys: budgets.size }),
  };
};
export type LeasedBudget = ReturnType<typeof makeLeasedBudget>;
