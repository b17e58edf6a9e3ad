/**
 * One run per key at a time, and its result kept a short while: for checks whose cost a caller
 * does not control and whose answer may be a few seconds old (review R15 F2, F3). An audit
 * endpoint's chain verification walks every row of the organisation's chain, whatever `limit` the
 * request asks; /readyz scans Redis. Without this, each request ran its own, and a flood of cheap
 * requests held one Postgres connection (or one SCAN loop) each.
 *
 * Unlike `read-coalescer.ts` (which never answers with a read started before the caller arrived),
 * this one does: the result says when its run started (`at`), and the caller shows that.
 *
 * - Callers that arrive while a key's run is in flight share it.
 * - A run that resolves with a value `keep` accepts is kept for `ttlMs` after it settles (so runs
 *   of one key are at least `ttlMs` apart: however long one takes, it cannot be restarted back to
 *   back). A rejected run, or a value `keep` refuses, answers the callers it was started for and
 *   nothing else: the next caller starts a new run.
 * - Per process and bounded: at most `maxKeys` results are kept; past that the one kept longest
 *   goes first (with one ttl for all, the one that would expire first). Runs in flight are not
 *   counted: each has a request waiting on it.
 */
export interface Memoised<T> {
  readonly value: T;
  /** when the run that produced `value` started (ms since the epoch, from `now`) */
  readonly at: number;
}

export const makeSingleFlightMemo = <T>(
  run: (key: string) => Promise<T>,
  opts: {
    readonly ttlMs: number;
    readonly maxKeys: number;
    /** keep this value for later callers? (default: every value) */
    readonly keep?: (value: T) => boolean;
    readonly now?: () => number;
  },
) => {
  const now = opts.now ?? Date.now;
  const keep = opts.keep ?? (() => true);
  const inflight = new Map<string, Promise<Memoised<T>>>();
  const kept = new Map<string, { result: Memoised<T>; until: number }>();
  let runs = 0;

  const start = (key: string): Promise<Memoised<T>> => {
    runs += 1;
    const at = now();
    let p: Promise<T>;
    try {
      p = run(key);
    } catch (err) {
      p = Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    const shared = p.then(
      (value) => {
        inflight.delete(key);
        const result = { value, at };
        if (opts.ttlMs > 0 && opts.maxKeys > 0 && keep(value)) {
          // delete first: a re-kept key moves to the end of the insertion order
          kept.delete(key);
          kept.set(key, { result, until: now() + opts.ttlMs });
          for (const oldest of kept.keys()) {
            if (kept.size <= opts.maxKeys) break;
            kept.delete(oldest);
          }
        }
        return result;
      },
      (err: unknown) => {
        inflight.delete(key);
        throw err;
      },
    );
    inflight.set(key, shared);
    return shared;
  };

  return {
    /** `key`'s kept result, the run in flight, or a new run. */
    get(key: string): Promise<Memoised<T>> {
      const hit = kept.get(key);
      if (hit) {
        if (now() < hit.until) return Promise.resolve(hit.result);
        kept.delete(key);
      }
      return inflight.get(key) ?? start(key);
    },
    /** runs started, results kept, runs in flight */
    stats: () => ({ runs, kept: kept.size, inflight: inflight.size }),
  };
};
export type SingleFlightMemo<T> = ReturnType<typeof makeSingleFlightMemo<T>>;
