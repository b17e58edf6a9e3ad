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
