/**
 * Concurrent reads of one key share one database read — but never a read that STARTED BEFORE
 * they arrived. GET /v1/deployments/:id goes through this (routes/deployments.ts): under load,
 * the onboarding app's pollers and the benchmark's 32 connections ask for the same deployment many
 * times a millisecond, and each read is a Postgres round trip (the API's costliest write syscall,
 * and the database's CPU).
 *
 * Freshness, the rule that makes this safe (it is not a cache): a caller is answered only by a
 * read whose `fetch` was called after the caller arrived. The database takes the read's snapshot
 * after `fetch` is called, so anything committed before the request arrived (a status change, a
 * step, the event an SSE client was just sent) is in the answer, exactly as with a read of its own.
 * Per key, one read is in flight at a time: a caller that arrives while it runs does not join it
 * (it may have been sent before the caller arrived) but waits for the next one, started as soon as
 * the one in flight settles, which every caller that arrived meanwhile shares. Nothing is kept
 * once a read has answered its callers; a failed read fails exactly the callers it was started for.
 */
export const makeReadCoalescer = <T>(
  fetch: (key: string) => Promise<T>,
  opts: {
    /**
     * A read in flight longer than this (a dead connection that TCP has not noticed yet) is not
     * waited for by later callers: each reads on its own, as without coalescing (review R4).
     */
    readonly staleMs?: number;
    readonly now?: () => number;
  } = {},
) => {
  const staleMs = opts.staleMs ?? 5_000;
  const now = opts.now ?? (() => performance.now());
  /** per key: the read in flight (and when it started), and the one queued behind it (not started yet) */
  const keys = new Map<string, { inflight: Promise<T>; startedAt: number; queued?: Promise<T> }>();
  let reads = 0;
  let calls = 0;

  /** `fetch`, with a synchronous throw turned into a rejection (the slot must still settle) */
  const fetchOnce = (key: string): Promise<T> => {
    reads += 1;
    try {
      return fetch(key);
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  };

  const start = (key: string): Promise<T> => {
    const inflight = fetchOnce(key);
    const slot: { inflight: Promise<T>; startedAt: number; queued?: Promise<T> } = {
      inflight,
      startedAt: now(),
    };
    keys.set(key, slot);
    const settled = (): void => {
      // the queued read (if any) takes the slot, or the key is done
      if (keys.get(key) === slot && !slot.queued) keys.delete(key);
    };
    inflight.then(settled, settled);
    return inflight;
  };

  return {
    /** The value of `key` as read by a fetch started after this call. */
    read(key: string): Promise<T> {
      calls += 1;
      const slot = keys.get(key);
      if (!slot) return start(key);
      if (now() - slot.startedAt > staleMs) return fetchOnce(key);
      if (!slot.queued) {
        const next = (): Promise<T> => start(key);
        // started when the read in flight settles (either way), for every caller that arrived
        // before that
        slot.queued = slot.inflight.then(next, next);
      }
      return slot.queued;
    },
    /** reads started and calls answered: calls / reads is the sharing */
    stats: () => ({ reads, calls, keys: keys.size }),
  };
};
export type ReadCoalescer<T> = ReturnType<typeof makeReadCoalescer<T>>;
