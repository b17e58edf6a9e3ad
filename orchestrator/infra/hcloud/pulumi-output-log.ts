import type { Logger } from '../../log';

/**
 * Streams the Pulumi CLI's output to the structured log, one record per line. Pulumi already
 * prints secret values as `[secret]`; as a second layer, any line (or any line of a multi-line
 * value) of the values given here is replaced before it reaches the log.
 */
export interface OutputLog {
  readonly stdout: (chunk: string) => void;
  readonly stderr: (chunk: string) => void;
  /** Log what is left of an unterminated last line. */
  readonly flush: () => void;
}

const MIN_SCRUB_LENGTH = 8;
const REDACTED = '[REDACTED]';

/**
 * Replaces every value given, and every line of a multi-line value (8 characters or longer), with
 * `[REDACTED]`. Shared by the streamed output and the error messages built from the same output.
 */
export const makeScrubber = (secrets: readonly string[] = []): ((text: string) => string) => {
  const fragments = [...new Set(secrets.flatMap((s) => [s, ...s.split(/\r?\n/)]).map((s) => s.trim()))]
    .filter((s) => s.length >= MIN_SCRUB_LENGTH)
    // Longest first, so a whole value is replaced before its parts.
    .sort((a, b) => b.length - a.length);
  return (text) => fragments.reduce((t, f) => t.split(f).join(REDACTED), text);
};

export const makeOutputLog = (log: Logger, secrets: readonly string[] = []): OutputLog => {
  const scrub = makeScrubber(secrets);

  const stream = (level: 'info' | 'warn', fd: 'stdout' | 'stderr') => {
    let pending = '';
    const emit = (line: string): void => {
      const text = scrub(line.replace(/\s+$/, ''));
      if (text.trim() !== '') log[level]({ pulumi: fd, line: text }, 'pulumi output');
    };
    return {
      write: (chunk: string): void => {
        const lines = (pending + chunk).split('\n');
        pending = lines.pop() ?? '';
        lines.forEach(emit);
      },
      flush: (): void => {
        if (pending !== '') emit(pending);
        pending = '';
      },
    };
  };
  const out = stream('info', 'stdout');
  const err = stream('warn', 'stderr');
  return {
    stdout: out.write,
    stderr: err.write,
    flush: () => {
      out.flush();
      err.flush();
    },
  };
};
