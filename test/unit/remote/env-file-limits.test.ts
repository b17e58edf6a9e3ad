import type { OrchestratorError } from '../../../orchestrator/errors';
import {
  ENV_MAX_ENTRIES,
  ENV_NAME_MAX,
  ENV_VALUE_MAX_BYTES,
  escapeEnvValue,
  renderEnvFile,
  validateEnvEntries,
  type EnvEntry,
} from '../../../orchestrator/remote/env-file';
import { Secret } from '../../../orchestrator/secret';

/**
 * Every limit at its exact boundary and every refusal's exact message (mutation testing found `>`
 * vs `>=` and the messages unchecked). The systemd round trip is in env-file.test.ts.
 */
const refusal = (entries: unknown): Pick<OrchestratorError, 'code' | 'field' | 'message'> => {
  try {
    validateEnvEntries(entries as EnvEntry[]);
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
const NAME_RULE = 'must match ^[A-Z_][A-Z0-9_]*$ (at most 128 characters)';

describe('env file limits, at the boundary', () => {
  it('the limits are the documented ones', () => {
    expect([ENV_MAX_ENTRIES, ENV_NAME_MAX, ENV_VALUE_MAX_BYTES]).toEqual([100, 128, 4096]);
  });

  it('takes exactly 100 variables and refuses 101', () => {
    const list = (n: number) => Array.from({ length: n }, (_, i) => ({ name: `V${i}`, value: 'x' }));
    expect(() => validateEnvEntries(list(100))).not.toThrow();
    expect(refusal(list(101))).toEqual(invalid('env', 'has more than 100 variables'));
  });

  it('refuses anything but a list', () => {
    for (const bad of ['A=1', { name: 'A', value: '1' }, null, undefined])
      expect(refusal(bad)).toEqual(invalid('env', 'must be a list of { name, value }'));
  });

  it('takes a 128-character name and refuses 129, by position', () => {
    expect(() => validateEnvEntries([{ name: 'N'.repeat(128), value: 'v' }])).not.toThrow();
    expect(refusal([{ name: 'N'.repeat(129), value: 'v' }])).toEqual(invalid('env[0].name', NAME_RULE));
  });

  it('refuses a missing, empty, non-string or malformed name, by position', () => {
    const bad = [null, {}, { name: '', value: 'v' }, { name: 7, value: 'v' }, { name: 'a', value: 'v' }];
    for (const e of bad)
      expect(refusal([{ name: 'OK', value: 'v' }, e])).toEqual(invalid('env[1].name', NAME_RULE));
    // anchored both ends
    for (const name of ['xA', 'Ax', 'A-', '-A', ' A', 'A '])
      expect(refusal([{ name, value: 'v' }])).toEqual(invalid('env[0].name', NAME_RULE));
    for (const name of ['A', '_', 'A1', '_9', 'ABC_DEF'])
      expect(() => validateEnvEntries([{ name, value: 'v' }])).not.toThrow();
  });

  it('refuses reserved names and reserved prefixes, and only them', () => {
    const reserved = 'is reserved for the service manager or the loader; choose another name';
    expect(refusal([{ name: 'PATH', value: 'v' }])).toEqual(invalid('env.PATH', reserved));
    for (const name of ['LD_LIBRARY_PATH', 'LC_CTYPE', 'SYSTEMD_ANYTHING'])
      expect(refusal([{ name, value: 'v' }])).toEqual(invalid(`env.${name}`, reserved));
    // a prefix only counts at the start; a longer name that merely contains one is fine
    for (const name of ['XLD_', 'MY_LC_X', 'PATHS', 'A_SYSTEMD_'])
      expect(() => validateEnvEntries([{ name, value: 'v' }])).not.toThrow();
  });

  it('refuses a repeated name with its own message', () => {
    expect(
      refusal([
        { name: 'A', value: '1' },
        { name: 'B', value: '2' },
        { name: 'A', value: '3' },
      ]),
    ).toEqual(invalid('env.A', 'appears more than once'));
  });

  it('takes a string or a Secret value and nothing else', () => {
    for (const value of [42, null, undefined, { reveal: () => 'x' }, ['x']])
      expect(refusal([{ name: 'A', value }])).toEqual(invalid('env.A', 'value must be a string'));
    expect(() =>
      validateEnvEntries([
        { name: 'A', value: new Secret('s') },
        { name: 'B', value: '' },
      ]),
    ).not.toThrow();
  });

  it('takes exactly 4096 UTF-8 bytes and refuses 4097, counted in bytes', () => {
    const over = invalid('env.A', 'value is longer than 4096 bytes');
    expect(() => validateEnvEntries([{ name: 'A', value: 'x'.repeat(4096) }])).not.toThrow();
    expect(refusal([{ name: 'A', value: 'x'.repeat(4097) }])).toEqual(over);
    expect(refusal([{ name: 'A', value: new Secret('x'.repeat(4097)) }])).toEqual(over);
    // 1365 × 3 + 1 = 4096 bytes: taken; one more byte is not
    expect(() => validateEnvEntries([{ name: 'A', value: `${'日'.repeat(1365)}x` }])).not.toThrow();
    expect(refusal([{ name: 'A', value: `${'日'.repeat(1365)}xy` }])).toEqual(over);
  });

  it('names the exact reason for a control character and for broken Unicode', () => {
    const control = invalid('env.A', 'value contains a control character (newline, tab, NUL, …)');
    for (const c of ['\n', '\0', '\u007f', '\u009f'])
      expect(refusal([{ name: 'A', value: new Secret(`ab${c}cd`) }])).toEqual(control);
    const broken = invalid('env.A', 'value is not well-formed Unicode');
    expect(refusal([{ name: 'A', value: new Secret('a\uDC00') }])).toEqual(broken);
    expect(refusal([{ name: 'A', value: 'a\uD800' }])).toEqual(broken);
    // printable non-ASCII, a surrogate pair and a space are values like any other
    expect(() => validateEnvEntries([{ name: 'A', value: 'é 𝄞 \u00a0' }])).not.toThrow();
  });
});

describe('env file text', () => {
  it('escapes each of " \\ ` $ everywhere in the value, and nothing else', () => {
    expect(escapeEnvValue('"\\`$')).toBe('\\"\\\\\\`\\$');
    expect(escapeEnvValue('$a$b')).toBe('\\$a\\$b');
    expect(escapeEnvValue("x 'y' %z #")).toBe("x 'y' %z #");
  });

  it('is the header, then one line per variable in order, then a final newline', () => {
    const file = renderEnvFile([
      { name: 'B', value: new Secret('s"1') },
      { name: 'A', value: 'plain' },
    ]);
    expect(file.reveal()).toBe(
      '# Written by the cortex orchestrator; replaced whole on every change.\nB="s\\"1"\nA="plain"\n',
    );
    expect(renderEnvFile([]).reveal()).toBe(
      '# Written by the cortex orchestrator; replaced whole on every change.\n',
    );
  });

  it('renders nothing when any entry is bad', () => {
    expect(() =>
      renderEnvFile([
        { name: 'A', value: 'ok' },
        { name: 'B', value: 'x\n' },
      ]),
    ).toThrow('env.B: value contains a control character');
  });
});
