import { loadConfig } from '../../../orchestrator/config';
import { isOrchestratorError } from '../../../orchestrator/errors';
import { canary } from '../../support/canary';

const failure = (env: Record<string, string>): string => {
  try {
    loadConfig(env);
  } catch (err) {
    if (isOrchestratorError(err) && err.code === 'config_invalid') return err.message;
    throw err;
  }
  throw new Error('expected loadConfig to fail');
};

describe('config', () => {
  it('defaults to the embedded local services and freezes the result', () => {
    const c = loadConfig({});
    expect(c.DATABASE_URL).toBe('postgres://postgres@127.0.0.1:54329/cortex?sslmode=disable');
    expect(c.REDIS_URL).toBe('redis://127.0.0.1:63799');
    expect(c.HOST_PROVIDER).toBe('local');
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('names the bad variable and never prints its value', () => {
    const token = canary('other');
    const msg = failure({ HOST_PROVIDER: 'hcloud', HCLOUD_TOKEN: token, REDIS_URL: `http://${token}` });
    expect(msg).toContain('HCLOUD_TOKEN');
    expect(msg).toContain('REDIS_URL');
    expect(msg).not.toContain(token);
  });

  it('requires the Supabase URL and key for the supabase adapter', () => {
    const msg = failure({ RPC_ADAPTER: 'supabase' });
    expect(msg).toMatch(/SUPABASE_URL: is required/);
    expect(msg).toMatch(/SUPABASE_SERVICE_ROLE_KEY: is required/);
  });

  it('webhook caps and breaker: defaults, bounds, and their relations, by name (review R15 F6)', () => {
    const c = loadConfig({});
    expect([
      c.WEBHOOK_PER_ENDPOINT_CONCURRENCY,
      c.WEBHOOK_PER_ORG_CONCURRENCY,
      c.WEBHOOK_BREAKER_FAILURES,
      c.WEBHOOK_BREAKER_COOLDOWN_MS,
      c.WEBHOOK_BREAKER_MAX_COOLDOWN_MS,
    ]).toEqual([2, 5, 5, 30_000, 900_000]);
    expect(failure({ WEBHOOK_PER_ENDPOINT_CONCURRENCY: '0' })).toMatch(
      /^ {2}WEBHOOK_PER_ENDPOINT_CONCURRENCY: /m,
    );
    expect(failure({ WEBHOOK_PER_ENDPOINT_CONCURRENCY: 'two' })).toContain(
      'WEBHOOK_PER_ENDPOINT_CONCURRENCY',
    );
    expect(failure({ WEBHOOK_PER_ENDPOINT_CONCURRENCY: '8', WEBHOOK_PER_ORG_CONCURRENCY: '4' })).toContain(
      'WEBHOOK_PER_ORG_CONCURRENCY: must be at least WEBHOOK_PER_ENDPOINT_CONCURRENCY',
    );
    expect(failure({ WEBHOOK_BREAKER_FAILURES: '0' })).toContain('WEBHOOK_BREAKER_FAILURES');
    expect(
      failure({ WEBHOOK_BREAKER_COOLDOWN_MS: '60000', WEBHOOK_BREAKER_MAX_COOLDOWN_MS: '1000' }),
    ).toContain('WEBHOOK_BREAKER_MAX_COOLDOWN_MS: must be at least WEBHOOK_BREAKER_COOLDOWN_MS');
  });

  it('webhook maximum age and worker concurrency: defaults, bounds, per-org cap within it, by name (review R21)', () => {
    const c = loadConfig({});
    expect([c.WEBHOOK_MAX_AGE_SECONDS, c.WEBHOOK_CONCURRENCY]).toEqual([86_400, 10]);
    expect(loadConfig({ WEBHOOK_MAX_AGE_SECONDS: '3600' }).WEBHOOK_MAX_AGE_SECONDS).toBe(3_600);
    expect(failure({ WEBHOOK_MAX_AGE_SECONDS: '59' })).toMatch(/^ {2}WEBHOOK_MAX_AGE_SECONDS: /m);
    expect(failure({ WEBHOOK_MAX_AGE_SECONDS: '2592001' })).toContain('WEBHOOK_MAX_AGE_SECONDS');
    expect(failure({ WEBHOOK_CONCURRENCY: '0' })).toMatch(/^ {2}WEBHOOK_CONCURRENCY: /m);
    expect(failure({ WEBHOOK_CONCURRENCY: '4' })).toContain(
      'WEBHOOK_PER_ORG_CONCURRENCY: must be at most WEBHOOK_CONCURRENCY',
    );
    expect(loadConfig({ WEBHOOK_CONCURRENCY: '5' }).WEBHOOK_CONCURRENCY).toBe(5);
  });

  it('parses SSH CIDR lists and rejects a bad one by name', () => {
    expect(
      loadConfig({ ORCHESTRATOR_SSH_CIDRS: '10.0.0.0/8, 2001:db8::/32' }).ORCHESTRATOR_SSH_CIDRS,
    ).toEqual(['10.0.0.0/8', '2001:db8::/32']);
    expect(failure({ ORCHESTRATOR_SSH_CIDRS: '10.0.0.0/8,nope' })).toContain('ORCHESTRATOR_SSH_CIDRS');
    expect(failure({ LOG_LEVEL: 'loud' })).toMatch(/LOG_LEVEL: must be one of/);
    expect(failure({ CORTEX_STATE_DIR: '/srv/a,b:c' })).toMatch(/CORTEX_STATE_DIR: /);
    expect(loadConfig({ CORTEX_STATE_DIR: '/srv/cortex-state_1' }).CORTEX_STATE_DIR).toBe(
      '/srv/cortex-state_1',
    );
  });
});
