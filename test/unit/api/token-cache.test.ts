import type { ApiPrincipal } from '../../../orchestrator/api/api-tokens';
import { generateToken, hashToken } from '../../../orchestrator/api/api-tokens';
import { makeTokenCache } from '../../../orchestrator/api/token-cache';
import type { RevocationEvent, RevocationFeed } from '../../../orchestrator/api/token-revocations';

/**
 * The token cache with a fake revocation feed and a counted lookup: what is served from memory,
 * what reaches Postgres, and what an announcement, an outage or a race does to it.
 */
const fakeFeed = () => {
  const listeners = new Set<(e: RevocationEvent) => void>();
  const feed = {
    up: true,
    generation: 0,
    syncs: 0,
    /** set to delay the barrier: what arrives "on the wire" before the PING's answer */
    beforeSyncAnswer: undefined as (() => void) | undefined,
    healthy() {
      return feed.up;
    },
    async sync() {
      feed.syncs += 1;
      await Promise.resolve();
      feed.beforeSyncAnswer?.();
      return feed.up;
    },
    onRevoked(l: (e: RevocationEvent) => void) {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    async close() {},
    /** as the real feed: losing or regaining the subscription is an { all } event */
    set(up: boolean) {
      feed.up = up;
      feed.emit({ all: true });
    },
    emit(e: RevocationEvent) {
      feed.generation += 1;
      for (const l of listeners) l(e);
    },
  };
  return feed satisfies RevocationFeed;
};

const setup = (ttlMs = 5_000) => {
  let clock = 1_000_000;
  const feed = fakeFeed();
  const valid = new Map<string, ApiPrincipal>();
  const lookups: string[] = [];
  let gate: Promise<void> | undefined;
  const cache = makeTokenCache(
    {
      feed,
      lookup: async (hash) => {
        lookups.push(hash);
        if (gate) await gate;
        return valid.get(hash);
      },
    },
    { ttlMs, now: () => clock },
  );
  const token = (id: string) => {
    const t = generateToken();
    valid.set(hashToken(t), { tokenId: id, orgId: null, scopes: ['deployments:read'] });
    return t;
  };
  return {
    cache,
    feed,
    valid,
    lookups,
    token,
    tick: (ms: number) => (clock += ms),
    hold: () => {
      let release!: () => void;
      gate = new Promise((r) => (release = r));
      return () => {
        gate = undefined;
        release();
      };
    },
  };
};

const ID = '00000000-0000-4000-8000-000000000001';

describe('token cache', () => {
  it('a hit costs no lookup and is keyed by the hash, never the token', async () => {
    const s = setup();
    const t = s.token(ID);
    for (let i = 0; i < 5; i++) expect((await s.cache.authenticate(t))?.tokenId).toBe(ID);
    expect(s.lookups).toEqual([hashToken(t)]);
    expect(s.cache.stats()).toMatchObject({ entries: 1, hits: 4, misses: 1 });
    expect(s.feed.syncs).toBe(4);
  });

  it('an entry expires after the TTL: the next request is looked up again (and last_used_at with it)', async () => {
    const s = setup(5_000);
    const t = s.token(ID);
    await s.cache.authenticate(t);
    s.tick(4_999);
    await s.cache.authenticate(t);
    expect(s.lookups).toHaveLength(1);
    s.tick(2);
    await s.cache.authenticate(t);
    expect(s.lookups).toHaveLength(2);
  });

  it('an announced revocation drops the entry; a revocation arriving before the barrier answers is applied first', async () => {
    const s = setup();
    const t = s.token(ID);
    await s.cache.authenticate(t);
    s.valid.clear();
    s.feed.emit({ tokenId: ID });
    expect(await s.cache.authenticate(t)).toBeUndefined();

    const u = s.token(ID);
    await s.cache.authenticate(u);
    s.valid.clear();
    // the announcement is read from the subscriber connection before the PING's answer
    s.feed.beforeSyncAnswer = () => s.feed.emit({ tokenId: ID });
    expect(await s.cache.authenticate(u)).toBeUndefined();
  });

  it('while the feed is down nothing is served from the cache, and nothing is stored', async () => {
    const s = setup();
    const t = s.token(ID);
    await s.cache.authenticate(t);
    s.feed.set(false);
    await s.cache.authenticate(t);
    await s.cache.authenticate(t);
    expect(s.lookups).toHaveLength(3);
    s.feed.set(true);
    // stored during the outage? then this would be a hit
    await s.cache.authenticate(t);
    expect(s.lookups).toHaveLength(4);
  });

  it('a failed barrier (PING unanswered) falls back to the lookup', async () => {
    const s = setup();
    const t = s.token(ID);
    await s.cache.authenticate(t);
    s.feed.beforeSyncAnswer = () => {
      s.feed.up = false;
    };
    s.valid.clear();
    expect(await s.cache.authenticate(t)).toBeUndefined();
    expect(s.lookups).toHaveLength(2);
  });

  it('a lookup that raced with a feed event is not stored', async () => {
    const s = setup();
    const t = s.token(ID);
    const release = s.hold();
    const pending = s.cache.authenticate(t);
    s.feed.emit({ tokenId: '00000000-0000-4000-8000-000000000002' });
    release();
    expect((await pending)?.tokenId).toBe(ID);
    await s.cache.authenticate(t);
    expect(s.lookups).toHaveLength(2);
  });

  it('a feed outage ({ all }) empties the cache', async () => {
    const s = setup();
    const t = s.token(ID);
    await s.cache.authenticate(t);
    s.feed.emit({ all: true });
    await s.cache.authenticate(t);
    expect(s.lookups).toHaveLength(2);
  });

  it('unknown and malformed tokens are never cached; malformed ones are not even looked up', async () => {
    const s = setup();
    const unknown = generateToken();
    expect(await s.cache.authenticate(unknown)).toBeUndefined();
    expect(await s.cache.authenticate(unknown)).toBeUndefined();
    expect(await s.cache.authenticate('ctx_short')).toBeUndefined();
    expect(s.lookups).toEqual([hashToken(unknown), hashToken(unknown)]);
  });

  it('TTL 0 turns the cache off', async () => {
    const s = setup(0);
    const t = s.token(ID);
    await s.cache.authenticate(t);
    await s.cache.authenticate(t);
    expect(s.lookups).toHaveLength(2);
  });

  it('vouched: only a token found valid in this process, within the hour, and not since revoked', async () => {
    const s = setup();
    const t = s.token(ID);
    expect(s.cache.vouched(t)).toBe(false);
    await s.cache.authenticate(t);
    expect(s.cache.vouched(t)).toBe(true);
    expect(s.cache.vouched(generateToken())).toBe(false);
    s.tick(3_600_001);
    expect(s.cache.vouched(t)).toBe(false);
    await s.cache.authenticate(t);
    expect(s.cache.vouched(t)).toBe(true);
    s.feed.emit({ tokenId: ID });
    expect(s.cache.vouched(t)).toBe(false);
  });
});
