import { randomBytes, randomUUID } from 'node:crypto';
import { loadConfig, type Config } from '../../orchestrator/config';
import { makePipelineFromConfig, type Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import { makeLogger } from '../../orchestrator/log';
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

export const startTestPipeline = async (env: Record<string, string> = {}): Promise<Pipeline> => {
  const config = testPipelineConfig(env);
  return makePipelineFromConfig(config, makeLogger({ level: config.LOG_LEVEL, name: 'test-pipeline' }));
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
