import { spawnSync } from 'node:child_process';
import { isOrchestratorError } from '../../../orchestrator/errors';
import { quoteArg, quoteArgv } from '../../../orchestrator/remote/shell-quote';

const HOSTILE = [
  '',
  ' ',
  "it's",
  "'",
  "''",
  "'\\''",
  '"double" quotes',
  '$(touch /tmp/pwned)',
  '`touch /tmp/pwned`',
  '${HOME}',
  '$HOME',
  'a;b && c || d | e & f',
  '> /tmp/x < /etc/passwd',
  'line1\nline2',
  '\r\t\v\f',
  '#not a comment',
  '~root',
  '*',
  '?[a-z]',
  'back\\slash\\',
  '-n',
  '--',
  'A=b',
  'ünïcødé ✓ 𝄞 日本',
  '\u001b[31mred',
  '!$\'"`\\{}()[]',
];

const viaSh = (argv: string[]): Buffer => {
  // printf '%s\0' prints each argument exactly, NUL-terminated: the real shell's view of the line.
  const line = quoteArgv(['printf', '%s\\0', ...argv]);
  const r = spawnSync('/bin/sh', ['-c', line]);
  if (r.status !== 0) throw new Error(`sh failed: ${r.stderr.toString()}`);
  return r.stdout;
};

describe('quoteArg', () => {
  it('single-quotes every argument, even plain words', () => {
    expect(quoteArg('systemctl')).toBe("'systemctl'");
    expect(quoteArg('')).toBe("''");
  });

  it("writes ' as '\\'' and nothing else is transformed", () => {
    expect(quoteArg("it's")).toBe("'it'\\''s'");
    expect(quoteArg('$(x) `y` "z" \\')).toBe('\'$(x) `y` "z" \\\'');
  });

  it('rejects NUL, naming the argument position but not the value', () => {
    try {
      quoteArgv(['echo', 'ok', 'sec\0ret']);
      throw new Error('expected a rejection');
    } catch (err) {
      expect(isOrchestratorError(err) && err.code).toBe('invalid_input');
      expect((err as Error).message).toContain('argv[2]');
      expect((err as Error).message).not.toContain('sec');
    }
  });

  it('rejects lone surrogates (they could not be sent as the intended bytes)', () => {
    expect(() => quoteArg('a\uD800b')).toThrow(/well-formed/);
    expect(quoteArg('𝄞')).toBe("'𝄞'");
  });

  it('rejects an empty argv and an empty program', () => {
    expect(() => quoteArgv([])).toThrow(/program/);
    expect(() => quoteArgv(['', 'x'])).toThrow(/program/);
  });

  it.each(HOSTILE.map((s) => [JSON.stringify(s), s]))(
    'round-trips %s through /bin/sh -c byte for byte',
    (_, s) => {
      expect(viaSh([s, 'tail'])).toEqual(Buffer.from(`${s}\0tail\0`, 'utf8'));
    },
  );

  it('round-trips all hostile strings in one command line', () => {
    const expected = Buffer.from(HOSTILE.map((s) => `${s}\0`).join(''), 'utf8');
    expect(viaSh(HOSTILE)).toEqual(expected);
  });
});
