import { mapDbError } from '../../../orchestrator/db/rpc';
import { classify, OrchestratorError } from '../../../orchestrator/errors';
import { checkSecretValue, parseInput, envVarName } from '../../../orchestrator/secrets/secret-input';
import { Secret } from '../../../orchestrator/secret';
import { canary } from '../../support/canary';

describe('error classification', () => {
  it('never retries bad input, denials or a host-key mismatch', () => {
    for (const code of ['invalid_input', 'secret_denied', 'ssh_host_key_mismatch'] as const)
      expect(classify(new OrchestratorError(code, 'x'))).toBe('permanent');
  });
  it('retries transient failures', () => {
    expect(classify(new OrchestratorError('stack_locked', 'x'))).toBe('retry');
    expect(classify(Object.assign(new Error('reset'), { code: 'ECONNRESET' }))).toBe('retry');
  });
  it('maps our SQL errors to codes and keeps the field, never the detail', () => {
    const key = canary();
    const e = mapDbError('deployment_secrets__bind', {
      code: '22023',
      message: 'env_var: must match ^[A-Z_][A-Z0-9_]*$',
      detail: key,
    } as never);
    expect(e.code).toBe('invalid_input');
    expect(e.field).toBe('env_var');
    expect(e.message).not.toContain(key);
    expect(mapDbError('f', { code: 'P0002', message: 'deployment x not found' }).code).toBe('not_found');
    // Postgres' own input errors quote the input: only the SQLSTATE survives, and no cause is kept.
    const quoted = mapDbError('secrets__create', {
      code: '22P02',
      message: `invalid input syntax for type uuid: "${key}"`,
    });
    expect(quoted).toMatchObject({ code: 'invalid_input', field: 'input' });
    expect(quoted.message).not.toContain(key);
    expect(quoted.cause).toBeUndefined();
    expect(mapDbError('f', { code: '08006', message: 'gone' }).code).toBe('db_unavailable');
  });
});

describe('secret input', () => {
  it('rejects bad env var names and values naming the field, never the value', () => {
    expect(() => parseInput(envVarName, 'lower', 'env_var')).toThrow(/^env_var: must match/);
    expect(() => parseInput(envVarName, '1ABC', 'env_var')).toThrow(/env_var/);
    expect(parseInput(envVarName, 'ANTHROPIC_API_KEY', 'env_var')).toBe('ANTHROPIC_API_KEY');
    // What the env-file renderer would refuse later is refused here, at the API.
    for (const reserved of ['PATH', 'LD_PRELOAD', 'LC_ALL', 'SYSTEMD_EXEC_PID', 'A'.repeat(129)])
      expect(() => parseInput(envVarName, reserved, 'env_var')).toThrow(/^env_var: /);
    const key = canary();
    for (const [bad, why] of [
      ['', /must not be empty/],
      ['x'.repeat(4097), /at most 4096/],
      [`${key}\n`, /control characters/],
      [`${key}\u0000`, /control characters/],
      [`${key}\u0085`, /control characters/],
      [`${key}\ud800`, /well-formed Unicode/],
      ['é'.repeat(2049), /4096 bytes/],
    ] as const) {
      let err: unknown;
      try {
        checkSecretValue('value', new Secret(bad));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(OrchestratorError);
      expect((err as OrchestratorError).field).toBe('value');
      expect((err as Error).message).toMatch(why);
      expect((err as Error).message).not.toContain(key);
    }
    expect(checkSecretValue('value', new Secret(key))).toBe(key);
  });
});
