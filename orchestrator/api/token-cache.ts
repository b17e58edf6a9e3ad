import { hashToken, TOKEN_FORMAT, type ApiPrincipal } from './api-tokens';
import type { RevocationFeed } from './token-revocations';

/**
 * The API process's token cache: the principal behind a token's SHA-256 (never the token itself),
 * so a busy token costs Postgres one api_tokens__authenticate call per `ttlMs` and process instead
 * of one per request. Revocation still takes effect at once:
 * - a revocation announced on the feed (token-revocations.ts) drops the token's entry when it
 *   arrives, and a hit is only answered after the feed's barrier (`sync`: a PING on the subscriber
 *   connection, answered after everything Redis published before it), so a revocation announced
 *   before a request arrived is applied before that request is answered — on every instance, one
 *   shared PING per batch of concurrent hits instead of one Postgres call per request;
 * - while the feed is not subscribed (Redis down, connection cut), nothing is served from the cache
 *   and every request is looked up in Postgres; losing or regaining the feed empties the cache;
 * - a lookup that raced with any feed event (the generation changed while it ran) is not stored;
 * - every entry expires after `ttlMs` whatever happens (a revocation made in plain SQL, whose
 *   announcement nobody sent, is honoured within that).
 * Only valid tokens are cached: an unknown token always reaches Postgres (the per-address failure
 * limit keeps that bounded). last_used_at follows from the lookups: api_tokens__authenticate writes
 * it at most once a minute per token, and a cached token is looked up again every `ttlMs`.
 *
 * `vouched(token)`: was this token valid in this process within `vouchMs` (an hour)? The auth hook
 * uses it to let a known token through while its address is over the failed-authentication limit;
 * it never authenticates anything by itself.
 */
export interface TokenCacheOptions {
  /** 0 turns the cache off (every request is looked up). */
  readonly ttlMs: number;
  readonly maxEntries?: number;
  readonly vouchMs?: number;
  readonly now?: () => number;
}

interface Entry {
  readonly principal: ApiPrincipal;
  readonly expires: number;
}

export const makeTokenCache = (
  deps: {
    lookup: (hash: string) => Promise<ApiPrincipal | undefined>;
    feed: RevocationFeed;
  },
  opts: TokenCacheOptions,
) => {
  // monotonic: a wall clock stepped back would keep an entry (or a vouch) past its time
  const now = opts.now ?? (() => performance.now());
  const maxEntries = opts.maxEntries ?? 10_000;
  const vouchMs = opts.vouchMs ?? 3_600_000;
  const entries = new Map<string, Entry>();
  /** hash → token id, for hashes seen valid (bounded; oldest first). */
  const seen = new Map<string, { tokenId: string; until: number }>();
  let hits = 0;
  let misses = 0;

  const forget = (tokenId: string): void => {
    for (const [hash, e] of entries) if (e.principal.tokenId === tokenId) entries.delete(hash);
    for (const [hash, s] of seen) if (s.tokenId === tokenId) seen.delete(hash);
  };
  const bounded = <V>(m: Map<string, V>, key: string, value: V): void => {
    m.delete(key);
    m.set(key, value);
    if (m.size > maxEntries) {
      const oldest = m.keys().next();
      if (!oldest.done) m.delete(oldest.value);
    }
  };
  const unsubscribe = deps.feed.onRevoked((e) => {
    if ('tokenId' in e) forget(e.tokenId);
    else entries.clear();
  });

  const cached = (hash: string): Entry | undefined => {
    if (opts.ttlMs <= 0 || !deps.feed.healthy()) return undefined;
    const e = entries.get(hash);
    if (e && e.expires > now()) return e;
    if (e) entries.delete(hash);
    return undefined;
  };

  return {
    /** The principal behind a presented token, or undefined (unknown, malformed or revoked alike). */
    async authenticate(token: string): Promise<ApiPrincipal | undefined> {
      if (!TOKEN_FORMAT.test(token)) return undefined;
      const hash = hashToken(token);
      if (cached(hash) && (await deps.feed.sync())) {
        const e = cached(hash);
        if (e) {
          hits += 1;
          return e.principal;
        }
      }
      misses += 1;
      const generation = deps.feed.generation;
      const principal = await deps.lookup(hash);
      if (!principal) {
        seen.delete(hash);
        return undefined;
      }
      bounded(seen, hash, { tokenId: principal.tokenId, until: now() + vouchMs });
      if (opts.ttlMs > 0 && deps.feed.healthy() && deps.feed.generation === generation)
        bounded(entries, hash, { principal, expires: now() + opts.ttlMs });
      return principal;
    },
    vouched(token: string): boolean {
      if (!TOKEN_FORMAT.test(token)) return false;
      const s = seen.get(hashToken(token));
      return s !== undefined && s.until > now();
    },
    stats: () => ({ entries: entries.size, hits, misses }),
    close: () => {
      unsubscribe();
      entries.clear();
      seen.clear();
    },
  };
};
export type TokenCache = ReturnType<typeof makeTokenCache>;
