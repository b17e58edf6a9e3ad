import type { Redis } from 'ioredis';

/**
 * The workers' heartbeat: each worker process refreshes one key per process, with a TTL, while its
 * workers run; the API's /readyz is ready only while at least one exists. The value is the time of
 * the last beat (ms), so nothing but presence and age is ever in it.
 */
export const HEARTBEAT_EVERY_MS = 5_000;
export const HEARTBEAT_TTL_MS = 20_000;

export const heartbeatPattern = (prefix: string): string => `${prefix}:workers:heartbeat:*`;
const heartbeatKey = (prefix: string, holder: string): string =>
  `${prefix}:workers:heartbeat:${holder.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 100)}`;

/** Starts beating at once; the returned function stops and removes this process's key. */
export const startHeartbeat = (
  redis: Pick<Redis, 'set' | 'del'>,
  prefix: string,
  holder: string,
): (() => Promise<void>) => {
  const key = heartbeatKey(prefix, holder);
  const beat = (): void => {
    redis.set(key, String(Date.now()), 'PX', HEARTBEAT_TTL_MS).catch(() => undefined);
  };
  beat();
  const timer = setInterval(beat, HEARTBEAT_EVERY_MS);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await redis.del(key).catch(() => undefined);
  };
};

/**
 * Is any worker process alive under this prefix? (SCAN, not KEYS: never blocks Redis.) The scan
 * walks the whole keyspace when no worker is alive; `signal` stops it between pages once the
 * caller has given up (/readyz's timeout), so an answer already sent does not keep it scanning
 * (review R15 F3). Aborted: rejects with the signal's reason.
 */
export const workersAlive = async (
  redis: Pick<Redis, 'scan'>,
  prefix: string,
  signal?: AbortSignal,
): Promise<boolean> => {
  let cursor = '0';
  do {
    signal?.throwIfAborted();
    const [next, keys] = await redis.scan(cursor, 'MATCH', heartbeatPattern(prefix), 'COUNT', 100);
    if (keys.length > 0) return true;
    cursor = next;
  } while (cursor !== '0');
  return false;
};
