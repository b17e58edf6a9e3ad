import type { Redis } from 'ioredis';
import type { Logger } from '../log';

/**
 * Token revocations announced through Redis pub/sub, so that every API process forgets a revoked
 * token at once (its token cache entry, its open event streams). The message is the token's id (a
 * UUID): never the token, never its hash. Postgres stays the truth: a revocation is committed
 * there first (api_tokens__revoke) and announced after; a process that misses an announcement
 * still stops trusting its cache within API_TOKEN_CACHE_MS, and while its subscription is down it
 * does not serve from the cache at all.
 *
 * One channel for the whole Redis, not under QUEUE_PREFIX: a token id is a UUID, so an
 * announcement means the same to every API process that hears it (nothing, to one that never saw
 * the token), and a CLI run with another QUEUE_PREFIX than the API's still reaches it.
 */
export const REVOCATION_CHANNEL = 'cortex:api-tokens:revoked';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Announce a committed revocation; resolves to the number of API processes that received it. */
export type RevocationAnnouncer = (tokenId: string) => Promise<number>;

export const makeRevocationAnnouncer =
  (redis: Pick<Redis, 'publish'>): RevocationAnnouncer =>
  (tokenId) =>
    redis.publish(REVOCATION_CHANNEL, tokenId);

/** What a listener hears: one token revoked, or `all` (the feed was down or got a malformed message). */
export type RevocationEvent = { readonly tokenId: string } | { readonly all: true };

/**
 * The subscribing side. `healthy()` is true only while the subscription is confirmed on a live
 * connection; `generation` changes on every event and on every loss or recovery of the
 * subscription, so a cache can refuse to store a lookup that raced with one.
 */
export interface RevocationFeed {
  healthy(): boolean;
  /**
   * A barrier: resolves true once a PING sent on the subscriber connection after this call has
   * been answered. Redis answers in order on one connection, so every announcement published
   * before this call (the revocation a client was told about before its next request) has been
   * delivered to the listeners by then. False when the feed is down or the PING took longer than
   * `syncTimeoutMs` (then the connection is dropped and made again, and the feed is down until it
   * has subscribed again). Concurrent callers share PINGs: one in flight, one queued behind it.
   */
  sync(): Promise<boolean>;
  readonly generation: number;
  /** Called synchronously on each event; returns the unsubscribe function. */
  onRevoked(listener: (e: RevocationEvent) => void): () => void;
  close(): Promise<void>;
}

/**
 * `subscriber` is a connection of its own (subscriber mode takes a connection whole), made with
 * `autoResubscribe: false`: this feed subscribes again itself on every `ready`, and counts as
 * healthy only once Redis has confirmed it.
 */
export const makeRevocationFeed = (deps: {
  subscriber: Redis;
  log: Logger;
  syncTimeoutMs?: number;
}): RevocationFeed => {
  const { subscriber, log } = deps;
  const syncTimeoutMs = deps.syncTimeoutMs ?? 2_000;
  const channel = REVOCATION_CHANNEL;
  const listeners = new Set<(e: RevocationEvent) => void>();
  let healthy = false;
  let generation = 0;
  let closed = false;

  const emit = (e: RevocationEvent): void => {
    generation += 1;
    for (const l of [...listeners]) {
      try {
        l(e);
      } catch (err) {
        log.error({ reason: (err as Error).message }, 'revocation listener failed');
      }
    }
  };
  // messages may have been missed while down: everything cached is suspect
  const down = (why: string): void => {
    if (healthy) log.warn({ why }, 'token revocation feed down: token cache bypassed');
    healthy = false;
    emit({ all: true });
  };
  const subscribe = (): void => {
    const at = generation;
    subscriber.subscribe(channel).then(
      () => {
        if (closed || subscriber.status !== 'ready') return;
        emit({ all: true });
        healthy = true;
        log.info({ lost: at !== generation }, 'token revocation feed subscribed');
      },
      (err: unknown) => down(`subscribe failed: ${(err as Error).message}`),
    );
  };

  subscriber.on('message', (ch: string, message: string) => {
    if (ch !== channel) return;
    if (UUID.test(message)) emit({ tokenId: message.toLowerCase() });
    else emit({ all: true });
  });
  subscriber.on('close', () => down('connection closed'));
  subscriber.on('end', () => down('connection ended'));
  subscriber.on('error', (err: Error) => log.warn({ reason: err.message }, 'revocation feed redis error'));
  subscriber.on('ready', subscribe);
  if (subscriber.status === 'ready') subscribe();

  const isHealthy = (): boolean => healthy && !closed && subscriber.status === 'ready';

  const ping = async (): Promise<boolean> => {
    if (!isHealthy()) return false;
    let timer: NodeJS.Timeout | undefined;
    const answered = await Promise.race([
      subscriber.ping().then(
        () => true,
        () => false,
      ),
      new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), syncTimeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
    if (!answered && isHealthy()) {
      down('no answer to PING');
      // a half-open connection would never say it is closed: make a new one
      subscriber.disconnect(true);
    }
    return answered && isHealthy();
  };
  let inflight: Promise<boolean> | undefined;
  let queued: Promise<boolean> | undefined;
  const start = (): Promise<boolean> => {
    const p = ping().finally(() => {
      if (inflight === p) inflight = undefined;
    });
    inflight = p;
    return p;
  };
  const sync = (): Promise<boolean> => {
    if (!isHealthy()) return Promise.resolve(false);
    if (!inflight) return start();
    // the PING in flight may have been sent before this call: wait for the next one
    queued ??= inflight.then(() => {
      queued = undefined;
      return inflight ?? start();
    });
    return queued;
  };

  return {
    healthy: isHealthy,
    sync,
    get generation() {
      return generation;
    },
    onRevoked(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async close() {
      closed = true;
      healthy = false;
      listeners.clear();
      subscriber.disconnect();
      await Promise.resolve();
    },
  };
};
