import { invalidInput } from '../errors';

/**
 * The one place an argv array becomes a command line for a remote POSIX shell (sshd hands the
 * command to the login shell with `-c`). Every argument is single-quoted, always: inside single
 * quotes a POSIX shell interprets nothing — no `$`, backticks, backslashes, globs, `~`, `#` or
 * newlines — and the only character that cannot appear is `'` itself, written as `'\''`
 * (close, escaped quote, reopen). Quoting even "safe" words avoids the cases where a bare word
 * changes meaning by position (`A=b` as the first word is an assignment, not a command).
 *
 * Rejected: NUL (no C string, hence no command line, can carry it) and lone UTF-16 surrogates
 * (they would be sent as U+FFFD, so the remote side would not receive the bytes we meant).
 */
/** A UTF-16 surrogate without its partner: not encodable as UTF-8 (env-file.ts rejects it too). */
export const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export const quoteArg = (arg: string, index = 0): string => {
  if (typeof arg !== 'string') throw invalidInput(`argv[${index}]`, 'must be a string');
  if (arg.includes('\0'))
    throw invalidInput(`argv[${index}]`, 'contains a NUL byte, which a command line cannot carry');
  if (LONE_SURROGATE.test(arg)) throw invalidInput(`argv[${index}]`, 'is not well-formed Unicode');
  return `'${arg.replace(/'/g, `'\\''`)}'`;
};

/** Quote a whole argv for `sh -c`; the first element is the program. */
export const quoteArgv = (argv: readonly string[]): string => {
  if (argv.length === 0) throw invalidInput('argv', 'must name a program');
  if (argv[0] === '') throw invalidInput('argv[0]', 'must name a program');
  return argv.map((a, i) => quoteArg(a, i)).join(' ');
};
