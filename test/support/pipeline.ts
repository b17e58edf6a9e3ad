import { randomBytes, randomUUID } from 'node:crypto';
import { loadConfig, type Config } from '../../orchestrator/config';
import { makePipelineFromConfig, type Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import type { Redis } from 'ioredis';
import type { HostProvider } from '../../orchestrator/infra/host-provider';
import { makeLogger, type Logger } from '../../orchestrator/log';
import type { RunnerHooks } from '../../orchestrator/steps/step-runner';
import { Secret } from '../../orchestrator/secret';
import { canary } from './canary';
import { testDatabaseUrl } from './db';

/**
 * A pipeline for one test file: real Postgres, real Redis under a queue prefix of its own, real
 * local hosts and DNS. `env` overrides the configuration (e.g. shorter leases for crash tests).
 */
export const testPipelineConfig = (env: Record<string, string> = {}): Config =>
  loadConfig({
    ...process.env,
    DATABASE_URL: testDatabaseUrl(),
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    QUEUE_PREFIX: `t${randomBytes(5).toString('hex')}`,
    JOB_BACKOFF_MS: '500',
    ...env,
  });

export const startTestPipeline = async (
  env: Record<string, string> = {},
  opts: { hooks?: RunnerHooks; log?: Logger; hosts?: HostProvider } = {},
): Promise<Pipeline> => {
  const config = testPipelineConfig(env);
  return makePipelineFromConfig(
    config,
    opts.log ?? makeLogger({ level: config.LOG_LEVEL, name: 'test-pipeline' }),
    {
      ...(opts.hooks ? { hooks: opts.hooks } : {}),
      ...(opts.hosts ? { hosts: opts.hosts } : {}),
    },
  );
};

/** Every key under a prefix with its contents, as text (strings, hashes, lists, sets, zsets, streams). */
export const dumpRedis = async (redis: Redis, pattern: string): Promise<Map<string, string>> => {
  const out = new Map<string, string>();
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 500);
    cursor = next;
    for (const k of keys) {
      const type = await redis.type(k);
      const v =
        type === 'string'
          ? await redis.get(k)
          : type === 'hash'
            ? JSON.stringify(await redis.hgetall(k))
            : type === 'list'
              ? JSON.stringify(await redis.lrange(k, 0, -1))
              : type === 'set'
                ? JSON.stringify(await redis.smembers(k))
                : type === 'zset'
                  ? JSON.stringify(await redis.zrange(k, '0', '-1'))
                  : type === 'stream'
                    ? JSON.stringify(await redis.xrange(k, '-', '+'))
                    : '';
      out.set(k, v ?? '');
    }
  } while (cursor !== '0');
  return out;
};

/** An organisation with one org-wide canary key; returns the key's plaintext for the oracles. */
export const orgWithKey = async (
  p: Pipeline,
  provider: 'anthropic' | 'openai' = 'anthropic',
): Promise<{ orgId: string; secretId: string; value: string; fingerprint: string }> => {
  const org = await p.db.rpc<{ id: string }>('organizations__create', {
    p_name: `test-org-${randomUUID().slice(0, 8)}`,
  });
  const value = canary(provider);
  const meta = await p.secrets.create({
    orgId: org.id,
    name: `${provider} key`,
    provider,
    value: new Secret(value),
  });
  return { orgId: org.id, secretId: meta.secretId, value, fingerprint: meta.fingerprint };
};

export const uniqueSubdomain = (tag = 'p'): string => `${tag}-${randomBytes(4).toString('hex')}`;
