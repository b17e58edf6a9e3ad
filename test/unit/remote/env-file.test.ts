import { isOrchestratorError } from '../../../orchestrator/errors';
import {
  ENV_VALUE_MAX_BYTES,
  escapeEnvValue,
  renderEnvFile,
  validateEnvEntries,
  type EnvEntry,
} from '../../../orchestrator/remote/env-file';
import { Secret } from '../../../orchestrator/secret';
import { canary } from '../../support/canary';
import { HOSTILE_VALUES } from '../../support/hostile-values';

/**
 * systemd 252's EnvironmentFile= parser (src/basic/env-file.c, parse_env_file_internal) re-stated
 * for the states our renderer can produce plus the ones around them: the oracle for the unit
 * round trip. The integration test (remote-host) checks the same values against real systemd.
 */
const SHELL_NEED_ESCAPE = '"\\`$';
const WHITESPACE = ' \t\n\r';
const NEWLINE = '\n\r';
const COMMENTS = '#;';
const parseLikeSystemd = (text: string): Map<string, string> => {
  const out = new Map<string, string>();
  type State =
    | 'PRE_KEY'
    | 'KEY'
    | 'PRE_VALUE'
    | 'VALUE'
    | 'VALUE_ESCAPE'
    | 'SQ'
    | 'DQ'
    | 'DQ_ESCAPE'
    | 'COMMENT'
    | 'COMMENT_ESCAPE';
  let state: State = 'PRE_KEY';
  let key = '';
  let value = '';
  let lastWs = -1;
  const push = (): void => {
    if (lastWs >= 0) value = value.slice(0, lastWs);
    out.set(key.trim(), value);
    key = '';
    value = '';
    lastWs = -1;
  };
  for (const c of text) {
    switch (state) {
      case 'PRE_KEY':
        if (COMMENTS.includes(c)) state = 'COMMENT';
        else if (!WHITESPACE.includes(c)) {
          state = 'KEY';
          key = c;
        }
        break;
      case 'KEY':
        if (NEWLINE.includes(c)) {
          state = 'PRE_KEY';
          key = '';
        } else if (c === '=') {
          state = 'PRE_VALUE';
          lastWs = -1;
        } else key += c;
        break;
      case 'PRE_VALUE':
        if (NEWLINE.includes(c)) {
          state = 'PRE_KEY';
          push();
        } else if (c === "'") state = 'SQ';
        else if (c === '"') state = 'DQ';
        else if (c === '\\') state = 'VALUE_ESCAPE';
        else if (!WHITESPACE.includes(c)) {
          state = 'VALUE';
          value += c;
        }
        break;
      case 'VALUE':
        if (NEWLINE.includes(c)) {
          state = 'PRE_KEY';
          push();
        } else if (c === '\\') {
          state = 'VALUE_ESCAPE';
          lastWs = -1;
        } else {
          if (!WHITESPACE.includes(c)) lastWs = -1;
          else if (lastWs < 0) lastWs = value.length;
          value += c;
        }
        break;
      case 'VALUE_ESCAPE':
        state = 'VALUE';
        if (!NEWLINE.includes(c)) value += c;
        break;
      case 'SQ':
        if (c === "'") state = 'PRE_VALUE';
        else value += c;
        break;
      case 'DQ':
        if (c === '"') state = 'PRE_VALUE';
        else if (c === '\\') state = 'DQ_ESCAPE';
        else value += c;
        break;
      case 'DQ_ESCAPE':
        state = 'DQ';
        if (SHELL_NEED_ESCAPE.includes(c)) value += c;
        else if (c !== '\n') value += `\\${c}`;
        break;
      case 'COMMENT':
        if (c === '\\') state = 'COMMENT_ESCAPE';
        else if (NEWLINE.includes(c)) state = 'PRE_KEY';
        break;
      case 'COMMENT_ESCAPE':
        state = 'COMMENT';
        break;
    }
  }
  if (state !== 'PRE_KEY' && state !== 'COMMENT' && state !== 'COMMENT_ESCAPE' && key) push();
  return out;
};

const TRICKY_VALUES = HOSTILE_VALUES;

const entries = (): EnvEntry[] =>
  Object.entries(TRICKY_VALUES).map(([name, v]) => ({ name, value: new Secret(v) }));

const expectInvalid = (fn: () => unknown, field: string, notIn?: string): void => {
  try {
    fn();
  } catch (err) {
    expect(isOrchestratorError(err) && err.code).toBe('invalid_input');
    expect(isOrchestratorError(err) && err.field).toBe(field);
    if (notIn !== undefined) expect((err as Error).message).not.toContain(notIn);
    return;
  }
  throw new Error('expected invalid_input');
};

describe('env file rendering', () => {
  it('round-trips every tricky value through the systemd parser byte for byte', () => {
    const text = renderEnvFile(entries()).reveal();
    const parsed = parseLikeSystemd(text);
    expect([...parsed.keys()]).toEqual(Object.keys(TRICKY_VALUES));
    for (const [name, v] of Object.entries(TRICKY_VALUES)) expect(parsed.get(name)).toBe(v);
  });

  it('the oracle is sharp: an unescaped or unquoted rendering does not round-trip', () => {
    const naive = Object.entries(TRICKY_VALUES)
      .map(([n, v]) => `${n}=${v}`)
      .join('\n');
    const parsed = parseLikeSystemd(naive);
    expect(parsed.get('SPACES')).not.toBe(TRICKY_VALUES.SPACES);
    expect(parsed.get('BACKSLASHES')).not.toBe(TRICKY_VALUES.BACKSLASHES);
    const quotedOnly = parseLikeSystemd(`X="${TRICKY_VALUES.MIXED}"\n`);
    expect(quotedOnly.get('X')).not.toBe(TRICKY_VALUES.MIXED);
  });

  it('writes one double-quoted line per variable, escaping exactly " \\ ` $', () => {
    expect(escapeEnvValue('a"b\\c`d$e#f=g h\'i')).toBe('a\\"b\\\\c\\`d\\$e#f=g h\'i');
    const text = renderEnvFile([{ name: 'A', value: new Secret('x y') }]).reveal();
    expect(text.split('\n').filter((l) => !l.startsWith('#'))).toEqual(['A="x y"', '']);
    expect(text.endsWith('\n')).toBe(true);
  });

  it('returns a Secret: printing the rendered file shows nothing', () => {
    const key = canary();
    const file = renderEnvFile([{ name: 'ANTHROPIC_API_KEY', value: new Secret(key) }]);
    expect(`${String(file)} ${JSON.stringify({ file })}`).not.toContain(key);
    expect(file.reveal()).toContain(key);
  });

  it.each(['lower', '1ABC', 'A-B', 'A B', 'A=B', '', 'É', 'A\nB', 'X'.repeat(129)])(
    'rejects the name %j by position, not by echo',
    (name) => {
      expectInvalid(
        () =>
          renderEnvFile([
            { name: 'OK', value: 'v' },
            { name, value: 'v' },
          ]),
        'env[1].name',
        name || undefined,
      );
    },
  );

  it.each([
    'PATH',
    'HOME',
    'LD_PRELOAD',
    'LC_ALL',
    'SYSTEMD_EXEC_PID',
    'NOTIFY_SOCKET',
    'CREDENTIALS_DIRECTORY',
  ])('rejects the reserved name %s', (name) =>
    expectInvalid(() => renderEnvFile([{ name, value: 'v' }]), `env.${name}`),
  );

  it.each([
    ['a newline', 'a\nb'],
    ['a carriage return', 'a\rb'],
    ['a tab', 'a\tb'],
    ['NUL', 'a\0b'],
    ['ESC', 'a\u001bb'],
    ['DEL', 'a\u007fb'],
    ['a C1 control', 'a\u0085b'],
    ['a lone surrogate', 'a\uD800b'],
  ])('rejects a value with %s, naming the variable and not the value', (_, bad) => {
    const secretPart = canary();
    expectInvalid(
      () =>
        renderEnvFile([
          { name: 'GOOD', value: new Secret('fine') },
          { name: 'OPENAI_API_KEY', value: new Secret(`${secretPart}${bad}`) },
        ]),
      'env.OPENAI_API_KEY',
      secretPart,
    );
  });

  it('bounds values in UTF-8 bytes', () => {
    expect(() => validateEnvEntries([{ name: 'A', value: 'x'.repeat(ENV_VALUE_MAX_BYTES) }])).not.toThrow();
    expectInvalid(() => renderEnvFile([{ name: 'A', value: 'x'.repeat(ENV_VALUE_MAX_BYTES + 1) }]), 'env.A');
    // 1366 × 3 bytes = 4098 bytes in only 1366 characters.
    expectInvalid(() => renderEnvFile([{ name: 'A', value: '日'.repeat(1366) }]), 'env.A');
  });

  it('rejects duplicates, non-string values and too many variables', () => {
    expectInvalid(
      () =>
        renderEnvFile([
          { name: 'A', value: '1' },
          { name: 'A', value: '2' },
        ]),
      'env.A',
    );
    expectInvalid(() => renderEnvFile([{ name: 'A', value: 42 as unknown as string }]), 'env.A');
    const many = Array.from({ length: 101 }, (_, i) => ({ name: `V${i}`, value: 'x' }));
    expectInvalid(() => renderEnvFile(many), 'env');
  });

  it('an empty list renders a file with no variables', () => {
    expect(parseLikeSystemd(renderEnvFile([]).reveal()).size).toBe(0);
  });
});
