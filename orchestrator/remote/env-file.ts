import { invalidInput } from '../errors';
import { Secret, isSecret } from '../secret';
import { FIRST_SLOT, slotEnvFilePath } from '../../templates/agent-slots';
import reserved from '../../templates/runtimes/reserved-env-names.json';
import { LONE_SURROGATE } from './shell-quote';

/**
 * The agent's environment file, `/etc/cortex/agent-<slot>.env` (one per blue/green slot,
 * templates/agent-slots.ts), loaded by the unit's `EnvironmentFile=` (invariant 8). Everything is
 * validated before anything is rendered, so bad input can never
 * produce a partial file; the rendered file is itself a Secret.
 *
 * systemd 252's parser (src/basic/env-file.c, `parse_env_file_internal`) does not expand `$` or
 * specifiers in EnvironmentFile= values. In a double-quoted value it unescapes a backslash before
 * one of `"`, `\`, `` ` ``, `$` (its SHELL_NEED_ESCAPE set) and keeps any other backslash as is; an
 * unquoted value loses its trailing whitespace and its backslashes, and a `#` only starts a comment
 * at the start of a line. So every value is written double-quoted with exactly those four
 * characters escaped, which round-trips byte for byte (checked against a real unit in
 * test/integration/remote-host.test.ts) and is also what a POSIX shell would read from the file.
 */
/** The env file of the slot a new server starts on (`/etc/cortex/agent-blue.env`). */
export const ENV_FILE_PATH = slotEnvFilePath(FIRST_SLOT);
export const ENV_NAME_PATTERN = /^[A-Z_][A-Z0-9_]*$/;
export const ENV_NAME_MAX = 128;
/** Bytes of UTF-8 per value: far above any API key, far below ARG_MAX. */
export const ENV_VALUE_MAX_BYTES = 4096;
export const ENV_MAX_ENTRIES = 100;

/**
 * Names the service manager or a loader give meaning to; an agent variable must not shadow them.
 * One list, `templates/runtimes/reserved-env-names.json`: the echo runtime is shipped the same file
 * and hides exactly these from its report.
 */
export const RESERVED_ENV_NAMES: ReadonlySet<string> = new Set(reserved.names);
export const RESERVED_PREFIXES: readonly string[] = reserved.prefixes;

export interface EnvEntry {
  readonly name: string;
  /** Customer keys arrive as Secret; plain strings are for non-secret settings. */
  readonly value: Secret | string;
}

// Cc: C0 controls, DEL and C1 controls. Lone surrogates are not UTF-8 and systemd drops such lines.
const CONTROL = /\p{Cc}/u;

/** Throws invalid_input naming the variable (or its position), never echoing a value. */
export const validateEnvEntries = (entries: readonly EnvEntry[]): void => {
  if (!Array.isArray(entries)) throw invalidInput('env', 'must be a list of { name, value }');
  if (entries.length > ENV_MAX_ENTRIES)
    throw invalidInput('env', `has more than ${ENV_MAX_ENTRIES} variables`);
  const seen = new Set<string>();
  entries.forEach((e, i) => {
    const name: unknown = e?.name;
    // A malformed name is not echoed either: a pasted key in the wrong field must not reach a log.
    if (
      typeof name !== 'string' ||
      // Stryker disable next-line ConditionalExpression: equivalent, ENV_NAME_PATTERN refuses '' too (kept: the rule reads whole)
      name.length === 0 ||
      name.length > ENV_NAME_MAX ||
      !ENV_NAME_PATTERN.test(name)
    )
      throw invalidInput(
        `env[${i}].name`,
        `must match ${ENV_NAME_PATTERN.source} (at most ${ENV_NAME_MAX} characters)`,
      );
    const field = `env.${name}`;
    if (RESERVED_ENV_NAMES.has(name) || RESERVED_PREFIXES.some((p) => name.startsWith(p)))
      throw invalidInput(field, 'is reserved for the service manager or the loader; choose another name');
    if (seen.has(name)) throw invalidInput(field, 'appears more than once');
    seen.add(name);
    const raw: unknown = e.value;
    if (!isSecret(raw) && typeof raw !== 'string') throw invalidInput(field, 'value must be a string');
    const value = isSecret(raw) ? raw.reveal() : raw;
    if (LONE_SURROGATE.test(value)) throw invalidInput(field, 'value is not well-formed Unicode');
    // Stryker disable next-line StringLiteral: equivalent, Buffer.byteLength counts UTF-8 for an empty encoding name too
    if (Buffer.byteLength(value, 'utf8') > ENV_VALUE_MAX_BYTES)
      throw invalidInput(field, `value is longer than ${ENV_VALUE_MAX_BYTES} bytes`);
    if (CONTROL.test(value))
      throw invalidInput(field, 'value contains a control character (newline, tab, NUL, …)');
  });
};

/** Escape for a double-quoted systemd EnvironmentFile= value (see the file comment). */
export const escapeEnvValue = (value: string): string => value.replace(/[\\"$`]/g, (c) => `\\${c}`);

/**
 * Render the whole file, or throw before producing any of it. Entries keep their order; the
 * file ends with a newline.
 */
export const renderEnvFile = (entries: readonly EnvEntry[]): Secret => {
  validateEnvEntries(entries);
  const lines = ['# Written by the cortex orchestrator; replaced whole on every change.'];
  for (const e of entries) {
    const value = isSecret(e.value) ? e.value.reveal() : e.value;
    lines.push(`${e.name}="${escapeEnvValue(value)}"`);
  }
  return new Secret(`${lines.join('\n')}\n`);
};
