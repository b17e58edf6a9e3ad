import { quoteArg, quoteArgv } from '../../../orchestrator/remote/shell-quote';
import type { OrchestratorError } from '../../../orchestrator/errors';

/** The exact refusal: code, field and message (mutation testing found these unchecked). */
const refusal = (fn: () => unknown): Pick<OrchestratorError, 'code' | 'field' | 'message'> => {
  try {
    fn();
  } catch (err) {
    const e = err as OrchestratorError;
    return { code: e.code, field: e.field, message: e.message };
  }
  throw new Error('expected a refusal');
};

describe('shell quoting refusals, exactly', () => {
  it('a non-string argument is refused with its position', () => {
    expect(refusal(() => quoteArgv(['echo', 42 as unknown as string]))).toEqual({
      code: 'invalid_input',
      field: 'argv[1]',
      message: 'argv[1]: must be a string',
    });
    expect(refusal(() => quoteArg(undefined as unknown as string))).toMatchObject({ field: 'argv[0]' });
  });

  it('NUL and lone surrogates are refused with their position', () => {
    expect(refusal(() => quoteArgv(['echo', 'a', 'b\0']))).toEqual({
      code: 'invalid_input',
      field: 'argv[2]',
      message: 'argv[2]: contains a NUL byte, which a command line cannot carry',
    });
    expect(refusal(() => quoteArgv(['echo', 'x\uDC00']))).toEqual({
      code: 'invalid_input',
      field: 'argv[1]',
      message: 'argv[1]: is not well-formed Unicode',
    });
    // both halves of the surrogate test: a high one alone, a low one alone, a pair is fine
    expect(refusal(() => quoteArg('\uD83D'))).toMatchObject({ field: 'argv[0]' });
    expect(refusal(() => quoteArg('\uDE00x'))).toMatchObject({ field: 'argv[0]' });
    expect(quoteArg('\uD83D\uDE00')).toBe("'\uD83D\uDE00'");
  });

  it('an empty argv and an empty program name are refused, naming which', () => {
    expect(refusal(() => quoteArgv([]))).toEqual({
      code: 'invalid_input',
      field: 'argv',
      message: 'argv: must name a program',
    });
    expect(refusal(() => quoteArgv(['', 'x']))).toEqual({
      code: 'invalid_input',
      field: 'argv[0]',
      message: 'argv[0]: must name a program',
    });
    // an empty argument after the program is a real argument
    expect(quoteArgv(['printf', ''])).toBe("'printf' ''");
  });

  it('quotes every quote in an argument, not only the first', () => {
    expect(quoteArg("a'b'c")).toBe("'a'\\''b'\\''c'");
  });
});
