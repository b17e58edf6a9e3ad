import type { OrchestratorError } from '../../../orchestrator/errors';
import { Secret } from '../../../orchestrator/secret';
import {
  auditArgs,
  auditContext,
  checkPlatformSecretValue,
  checkSecretValue,
  envVarName,
  parseInput,
  platformSecretName,
  secretName,
  secretProvider,
  uuid,
} from '../../../orchestrator/secrets/secret-input';

/** The input rules at their exact boundaries, with their exact messages (mutation testing). */
const refusal = (fn: () => unknown): Pick<OrchestratorError, 'code' | 'field' | 'message'> => {
  try {
    fn();
  } catch (err) {
    const e = err as OrchestratorError;
    return { code: e.code, field: e.field, message: e.message };
  }
  throw new Error('expected a refusal');
};
const invalid = (field: string, message: string) => ({
  code: 'invalid_input',
  field,
  message: `${field}: ${message}`,
});
const KEY = 'k'.repeat(20);

describe('schemas', () => {
  it('env var names: 128 characters, the pattern, no reserved name or prefix', () => {
    expect(parseInput(envVarName, 'N'.repeat(128), 'env_var')).toBe('N'.repeat(128));
    expect(refusal(() => parseInput(envVarName, 'N'.repeat(129), 'env_var'))).toEqual(
      invalid('env_var', 'must be at most 128 characters'),
    );
    for (const bad of ['a', '1A', 'A-B', ''])
      expect(refusal(() => parseInput(envVarName, bad, 'env_var'))).toEqual(
        invalid('env_var', 'must match ^[A-Z_][A-Z0-9_]*$'),
      );
    for (const bad of ['PATH', 'LD_PRELOAD', 'LC_ALL'])
      expect(refusal(() => parseInput(envVarName, bad, 'env_var'))).toEqual(
        invalid('env_var', 'is reserved for the service manager or the loader; choose another name'),
      );
    for (const ok of ['OPENAI_API_KEY', 'MY_LD_', 'PATHX']) expect(parseInput(envVarName, ok)).toBe(ok);
  });

  it('secret names: trimmed, 1 to 200 characters', () => {
    expect(parseInput(secretName, '  a  ')).toBe('a');
    expect(parseInput(secretName, 'n'.repeat(200))).toBe('n'.repeat(200));
    expect(refusal(() => parseInput(secretName, 'n'.repeat(201), 'name'))).toEqual(
      invalid('name', 'must be at most 200 characters'),
    );
    for (const bad of ['', '   '])
      expect(refusal(() => parseInput(secretName, bad, 'name'))).toEqual(
        invalid('name', 'must not be empty'),
      );
  });

  it('platform secret names: lowercase, starting with a letter or digit, at most 63 characters', () => {
    const rule =
      'must be a platform secret name: lowercase letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters';
    for (const ok of ['a', '0', `a${'b'.repeat(62)}`, 'orchestrator-ssh-key', 'a.b_c-d'])
      expect(parseInput(platformSecretName, ok)).toBe(ok);
    for (const bad of [`a${'b'.repeat(63)}`, '', '-a', '.a', 'A', 'a b', 'a:b', 'xa\n', ' a'])
      expect(refusal(() => parseInput(platformSecretName, bad, 'name'))).toEqual(invalid('name', rule));
  });

  it('providers and UUIDs', () => {
    for (const p of ['anthropic', 'openai', 'other']) expect(parseInput(secretProvider, p)).toBe(p);
    for (const p of ['gemini', '', 'Openai'])
      expect(refusal(() => parseInput(secretProvider, p, 'provider'))).toEqual(
        invalid('provider', 'must be one of anthropic, openai, other'),
      );
    expect(refusal(() => parseInput(uuid, 'x', 'org_id'))).toEqual(invalid('org_id', 'must be a UUID'));
  });

  it('audit context: bounded strings, an IP address, nothing else', () => {
    const ok = {
      actor: 'a'.repeat(200),
      jobId: 'j'.repeat(200),
      requestIp: '::1',
      userAgent: 'u'.repeat(500),
    };
    expect(parseInput(auditContext, ok)).toEqual(ok);
    expect(parseInput(auditContext, { requestIp: '203.0.113.7' })).toEqual({ requestIp: '203.0.113.7' });
    expect(refusal(() => parseInput(auditContext, { actor: 'a'.repeat(201) }, 'audit')).field).toBe(
      'audit.actor',
    );
    expect(refusal(() => parseInput(auditContext, { jobId: 'j'.repeat(201) }, 'audit')).field).toBe(
      'audit.jobId',
    );
    expect(refusal(() => parseInput(auditContext, { userAgent: 'u'.repeat(501) }, 'audit')).field).toBe(
      'audit.userAgent',
    );
    expect(refusal(() => parseInput(auditContext, { requestIp: 'localhost' }, 'audit'))).toEqual(
      invalid('audit.requestIp', 'must be an IP address'),
    );
    expect(refusal(() => parseInput(auditContext, { secret: 'x' }, 'audit')).code).toBe('invalid_input');
  });
});

describe('parseInput', () => {
  it('names the field from the prefix and the issue path, or "input"', () => {
    expect(refusal(() => parseInput(uuid, 'x'))).toEqual(invalid('input', 'must be a UUID'));
    expect(refusal(() => parseInput(auditContext, { requestIp: 'x' }))).toMatchObject({
      field: 'requestIp',
    });
    expect(refusal(() => parseInput(auditContext, { requestIp: 'x' }, 'ctx'))).toMatchObject({
      field: 'ctx.requestIp',
    });
  });

  it('maps an audit context to the SQL functions’ arguments', () => {
    expect(auditArgs({ actor: 'a', jobId: 'j', requestIp: '10.0.0.1', userAgent: 'u' })).toEqual({
      p_actor: 'a',
      p_job_id: 'j',
      p_request_ip: '10.0.0.1',
      p_user_agent: 'u',
    });
    expect(auditArgs(undefined)).toEqual({
      p_actor: undefined,
      p_job_id: undefined,
      p_request_ip: undefined,
      p_user_agent: undefined,
    });
    expect(refusal(() => auditArgs({ requestIp: 'nope' }))).toEqual(
      invalid('audit.requestIp', 'must be an IP address'),
    );
  });
});

describe('checkSecretValue', () => {
  const check = (v: string) => checkSecretValue('value', new Secret(v));
  it('takes 20 to 4096 characters, and returns the value', () => {
    expect(check(KEY)).toBe(KEY);
    expect(check('k'.repeat(4096))).toBe('k'.repeat(4096));
    expect(refusal(() => check('k'.repeat(19)))).toEqual(
      invalid('value', 'must be at least 20 characters (no real key is shorter)'),
    );
    expect(refusal(() => check('k'.repeat(4097)))).toEqual(
      invalid('value', 'must be at most 4096 characters'),
    );
  });

  it('refuses a plain string, an empty, blank, controlled or broken value with its own message', () => {
    expect(refusal(() => checkSecretValue('value', KEY as unknown as Secret))).toEqual(
      invalid('value', 'must be passed as a Secret'),
    );
    expect(refusal(() => check(''))).toEqual(invalid('value', 'must not be empty'));
    expect(refusal(() => check(' '.repeat(25)))).toEqual(invalid('value', 'must not be blank'));
    expect(refusal(() => check(' '))).toEqual(invalid('value', 'must not be blank'));
    for (const c of ['\n', '\t', '\0', '\u007f', '\u0085'])
      expect(refusal(() => check(`${KEY}${c}`))).toEqual(
        invalid('value', 'must not contain control characters'),
      );
    expect(refusal(() => check(`${KEY}\uD800`))).toEqual(invalid('value', 'must be well-formed Unicode'));
    // blank means only spaces: a key with a space in it is a key
    expect(check(` ${KEY} `)).toBe(` ${KEY} `);
  });

  it('counts the env file limit in UTF-8 bytes', () => {
    expect(check('日'.repeat(1365) + 'x')).toHaveLength(1366); // 4096 bytes
    expect(refusal(() => check('日'.repeat(1365) + 'xy'))).toEqual(
      invalid('value', 'must be at most 4096 bytes in UTF-8'),
    );
  });
});

describe('checkPlatformSecretValue', () => {
  const check = (v: string) => checkPlatformSecretValue('value', new Secret(v));
  it('takes up to 16384 characters over many lines, and nothing longer', () => {
    const lines = `${KEY}\n`.repeat(16_384 / 21);
    expect(check(lines)).toBe(lines);
    expect(check('k'.repeat(16_384))).toHaveLength(16_384);
    expect(refusal(() => check('k'.repeat(16_385)))).toEqual(
      invalid('value', 'must be at most 16384 characters'),
    );
    expect(refusal(() => check('k'.repeat(19)))).toEqual(
      invalid('value', 'must be at least 20 characters (no real key is shorter)'),
    );
  });

  it('allows line feeds only, and refuses a value of blanks and line feeds', () => {
    for (const c of ['\r', '\t', '\0', '\u000b', '\u001f', '\u007f'])
      expect(refusal(() => check(`${KEY}${c}`))).toEqual(
        invalid('value', 'must not contain control characters other than line feeds'),
      );
    expect(refusal(() => check(' \n '.repeat(10)))).toEqual(invalid('value', 'must not be blank'));
    expect(refusal(() => check(''))).toEqual(invalid('value', 'must not be empty'));
    expect(refusal(() => checkPlatformSecretValue('value', KEY as unknown as Secret))).toEqual(
      invalid('value', 'must be passed as a Secret'),
    );
  });
});
