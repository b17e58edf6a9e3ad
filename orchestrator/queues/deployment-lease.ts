import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';

/**
 * At most one operation per deployment at a time, across workers and processes (BullMQ's open
 * source edition has no group concurrency). A lease is a Redis key holding a random token, with a
 * TTL that the holder keeps renewing; a worker that dies stops renewing and its lease expires.
 * Release and renewal compare the token, so a holder whose lease expired can never release or
 * extend a lease another worker took since.
 */
export interface Lease {
  readonly deploymentId: string;
  /** True while renewals keep succeeding; false once the lease was lost (expired and taken). */
  held(): boolean;
  release(): Promise<void>;
}

const RELEASE = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;
const RENEW = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end`;

export const makeLeases = (deps: { redis: Redis; prefix: string; ttlMs: number }) => {
  const { redis, prefix, ttlMs } = deps;
  const key = (id: string): string => `${prefix}:lease:deployment:${id}`;

  /** Take the lease, or return undefined when another holder has it. */
  const acquire = async (deploymentId: string, holder: string): Promise<Lease | undefined> => {
    const token = `${holder}/${randomBytes(8).toString('hex')}`;
    // When the key's current TTL began, at the latest: once a whole TTL has passed without a
    // successful renewal, the key may have expired (and been taken) while Redis was unreachable.
    let renewedAt = Date.now();
    const ok = await redis.set(key(deploymentId), token, 'PX', ttlMs, 'NX');
    if (ok !== 'OK') return undefined;
    let held = true;
    const timer = setInterval(
      () => {
        const sentAt = Date.now();
        redis
          .eval(RENEW, 1, key(deploymentId), token, String(ttlMs))
          .then((r) => {
            if (r !== 1) held = false;
            else renewedAt = sentAt;
          })
          .catch(() => undefined); // a blip: the next renewal tries again before the TTL runs out
      },
      Math.max(50, Math.floor(ttlMs / 3)),
    );
    timer.unref();
    return {
      deploymentId,
      held: () => held && Date.now() - renewedAt < ttlMs,
      release: async () => {
        clearInterval(timer);
        held = false;
        await redis.eval(RELEASE, 1, key(deploymentId), token);
      },
    };
  };

  /** Who holds a deployment's lease (for status output), or undefined. */
  const holder = async (deploymentId: string): Promise<string | undefined> =>
    (await redis.get(key(deploymentId)))?.split('/')[0];

  return { acquire, holder, key };
};
export type Leases = ReturnType<typeof makeLeases>;
