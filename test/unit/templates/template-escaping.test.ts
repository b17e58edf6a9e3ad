import type { OrchestratorError } from '../../../orchestrator/errors';
import { renderCaddyfile, type CaddyfileInput } from '../../../templates/caddyfile';
import { fillTemplate } from '../../../templates/render';

/**
 * What keeps text templates from being injected into: strict placeholder filling and the Caddyfile's
 * input checks, at their exact boundaries and with their exact messages, with no external tool (the
 * caddy/systemd-analyze validations are in caddyfile.test.ts and systemd-unit.test.ts). Written for
 * mutation testing, which runs these on every mutant.
 */
describe('fillTemplate', () => {
  it('fills every placeholder, as often as it appears, and nothing else', () => {
    expect(fillTemplate('a {{x}} b {{x}} {{y2}}', { x: '1', y2: '$&' })).toBe('a 1 b 1 $&');
    expect(fillTemplate('no placeholders', {})).toBe('no placeholders');
    // a value is inserted as is, never re-read as a template
    expect(() => fillTemplate('{{a}}', { a: '{{b}}' })).toThrow(
      new Error('template left an unfilled or malformed placeholder'),
    );
  });

  it('refuses a placeholder without a value and a value without a placeholder, by name', () => {
    expect(() => fillTemplate('{{a}} {{b}}', { a: '1' })).toThrow(
      new Error('template placeholder {{b}} has no value'),
    );
    expect(() => fillTemplate('{{a}}', { a: '1', b: '2', c: '3' })).toThrow(
      new Error('template has no placeholder for b, c'),
    );
  });

  it('refuses braces that are not a well-formed placeholder', () => {
    for (const t of ['{{ a }}', '{{1a}}', '{{a-b}}', '{{', '}}', 'x}}'])
      expect(() => fillTemplate(t, {})).toThrow(
        new Error('template left an unfilled or malformed placeholder'),
      );
    // a triple brace fills the inner placeholder and leaves single braces, which are plain text
    expect(fillTemplate('{{{a}}}', { a: 'v' })).toBe('{v}');
    expect(fillTemplate('{a} {{aZ9}}', { aZ9: 'v' })).toBe('{a} v');
  });
});

const refusal = (input: CaddyfileInput): Pick<OrchestratorError, 'code' | 'field' | 'message'> => {
  try {
    renderCaddyfile(input);
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
const base: CaddyfileInput = {
  siteName: 'a1.agents.example.com',
  agentPort: 18789,
  tls: { mode: 'internal' },
};

describe('renderCaddyfile input checks', () => {
  it('ports: 1 and 65535 taken, 0, 65536 and fractions refused, for the agent and for HTTPS', () => {
    for (const p of [1, 65535]) {
      expect(renderCaddyfile({ ...base, agentPort: p })).toContain(`127.0.0.1:${p}`);
      expect(renderCaddyfile({ ...base, httpsPort: p })).toContain(`https_port ${p}`);
    }
    for (const p of [0, 65536, 1.5, Number.NaN]) {
      expect(refusal({ ...base, agentPort: p })).toEqual(
        invalid('agentPort', 'must be a port number 1-65535'),
      );
      expect(refusal({ ...base, httpsPort: p })).toEqual(
        invalid('httpsPort', 'must be a port number 1-65535'),
      );
    }
  });

  it('the site name is a lower-case DNS name and nothing the Caddyfile lexer would read', () => {
    const bad = [
      'A1.agents.example.com',
      'a1',
      'a1.example.com {',
      'a1.example.com\nimport x',
      '-a.example.com',
      'a_.example.com',
      '',
    ];
    for (const siteName of bad)
      expect(refusal({ ...base, siteName })).toEqual(
        invalid('siteName', 'must be a lower-case DNS name like a1.agents.example.com'),
      );
    expect(renderCaddyfile({ ...base, siteName: 'x.io' })).toContain('x.io');
  });

  it('paths and the e-mail address admit no space, quote or brace', () => {
    for (const adminSocket of ['relative.sock', '/a b', '/a"b', '/a{b', `/${'a'.repeat(201)}`])
      expect(refusal({ ...base, adminSocket })).toEqual(invalid('adminSocket', 'must be an absolute path'));
    expect(renderCaddyfile({ ...base, adminSocket: `/${'a'.repeat(200)}` })).toContain(`/${'a'.repeat(200)}`);
    for (const storageDir of ['x', '/a b', '/a}'])
      expect(refusal({ ...base, tls: { mode: 'internal', storageDir } })).toEqual(
        invalid('tls.storageDir', 'must be an absolute path'),
      );
    for (const email of [
      'ops@example',
      'a b@example.com',
      'ops@example.com}',
      '"x"@example.com',
      `${'a'.repeat(65)}@example.com`,
    ])
      expect(refusal({ ...base, tls: { mode: 'acme', email } })).toEqual(
        invalid('tls.email', 'must be a plain email address'),
      );
    expect(
      renderCaddyfile({ ...base, tls: { mode: 'acme', email: `${'a'.repeat(64)}@example.com` } }),
    ).toContain(`email ${'a'.repeat(64)}@example.com`);
    expect(refusal({ ...base, tls: { mode: 'self' } as unknown as CaddyfileInput['tls'] })).toEqual(
      invalid('tls.mode', 'must be acme or internal'),
    );
  });

  it('the retry window is 1 to 120 whole seconds', () => {
    for (const s of [1, 120])
      expect(renderCaddyfile({ ...base, tryDurationSeconds: s })).toContain(`try_duration ${s}s`);
    for (const s of [0, 121, 2.5])
      expect(refusal({ ...base, tryDurationSeconds: s })).toEqual(
        invalid('tryDurationSeconds', 'must be a whole number of seconds, 1-120'),
      );
    expect(renderCaddyfile(base)).toContain('try_duration 15s');
  });
});
