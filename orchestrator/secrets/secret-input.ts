import { z } from 'zod';
import { invalidInput } from '../errors';
import { ENV_NAME_MAX, ENV_VALUE_MAX_BYTES, RESERVED_ENV_NAMES, RESERVED_PREFIXES } from '../remote/env-file';
import { Secret } from '../secret';

/**
 * Input rules shared by the API, the CLI and the secrets service, mirrored by the SQL functions
 * (which stay the last line of defence). Messages name the field and never echo a value.
 */
export const ENV_VAR_NAME = /^[A-Z_][A-Z0-9_]*$/;
export const MAX_SECRET_LENGTH = 4096;
/** No real API key (or private key) is shorter; the SQL functions refuse shorter values too. */
export const MIN_SECRET_LENGTH = 20;
// Cc: C0 controls, DEL and the C1 controls; systemd's env-file parser rejects or mangles them.
const CONTROL_CHARS = /\p{Cc}/u;
const LONE_SURROGATE = /\p{Cs}/u;
/** Platform secrets (an SSH private key) may span lines: U+000A is allowed, and only it. */
export const MAX_PLATFORM_SECRET_LENGTH = 16_384;
const CONTROL_CHARS_BUT_LF = /[\u0000-\u0009\u000b-\u001f\u007f]/;
export const PLATFORM_SECRET_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export const uuid = z.uuid({ error: 'must be a UUID' });
// A customer key is bound to an env var and ends up in the agent's env file: accept here only
// what the env-file renderer will accept there, so a bad key or name fails at the API with a 4xx,
// not later in every provisioning and rotation.
export const envVarName = z
  .string()
  .max(ENV_NAME_MAX, `must be at most ${ENV_NAME_MAX} characters`)
  .regex(ENV_VAR_NAME, 'must match ^[A-Z_][A-Z0-9_]*$')
  .refine((n) => !RESERVED_ENV_NAMES.has(n) && !RESERVED_PREFIXES.some((p) => n.startsWith(p)), {
    error: 'is reserved for the service manager or the loader; choose another name',
  });
export const secretName = z
  .string()
  .trim()
  .min(1, 'must not be empty')
  .max(200, 'must be at most 200 characters');
export const platformSecretName = z
  .string()
  .regex(
    PLATFORM_SECRET_NAME,
    'must be a platform secret name: lowercase letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters',
  );
export const secretProvider = z.enum(['anthropic', 'openai', 'other'], {
  error: 'must be one of anthropic, openai, other',
});

export interface AuditContext {
  readonly actor?: string;
  readonly jobId?: string;
  readonly requestIp?: string;
  readonly userAgent?: string;
}
export const auditContext = z
  .object({
    actor: z.string().max(200).optional(),
    jobId: z.string().max(200).optional(),
    requestIp: z.union([z.ipv4(), z.ipv6()], { error: 'must be an IP address' }).optional(),
    userAgent: z.string().max(500).optional(),
  })
  .strict();

/** Parse with a schema; on failure throw `invalid_input` naming the first offending field. */
export const parseInput = <S extends z.ZodType>(schema: S, input: unknown, prefix = ''): z.output<S> => {
  const r = schema.safeParse(input);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  // Stryker disable next-line OptionalChaining,ArrayDeclaration: unreachable, a failed zod parse has at least one issue
  const path = issue?.path ?? [];
  const field = [prefix, ...path.map(String)].filter(Boolean).join('.') || 'input';
  // Stryker disable next-line OptionalChaining,StringLiteral: unreachable, as above
  throw invalidInput(field, issue?.message ?? 'is invalid');
};

// The same rules as the SQL functions' checks (input__check_text, platform_secrets__check_value).
const checkValue = (
  field: string,
  value: Secret,
  rules: { max: number; control: RegExp; controlMessage: string; blank: RegExp },
): string => {
  if (!(value instanceof Secret)) throw invalidInput(field, 'must be passed as a Secret');
  const v = value.reveal();
  if (v.length === 0) throw invalidInput(field, 'must not be empty');
  if (v.length > rules.max) throw invalidInput(field, `must be at most ${rules.max} characters`);
  if (rules.control.test(v)) throw invalidInput(field, rules.controlMessage);
  if (rules.blank.test(v)) throw invalidInput(field, 'must not be blank');
  if (v.length < MIN_SECRET_LENGTH)
    throw invalidInput(field, `must be at least ${MIN_SECRET_LENGTH} characters (no real key is shorter)`);
  return v;
};

/** Check a secret value's shape without ever putting it in an error. */
export const checkSecretValue = (field: string, value: Secret): string => {
  const v = checkValue(field, value, {
    max: MAX_SECRET_LENGTH,
    control: CONTROL_CHARS,
    controlMessage: 'must not contain control characters',
    blank: /^ *$/,
  });
  if (LONE_SURROGATE.test(v)) throw invalidInput(field, 'must be well-formed Unicode');
  // Stryker disable next-line StringLiteral: equivalent, Buffer.byteLength counts UTF-8 for an empty encoding name too
  if (Buffer.byteLength(v, 'utf8') > ENV_VALUE_MAX_BYTES)
    throw invalidInput(field, `must be at most ${ENV_VALUE_MAX_BYTES} bytes in UTF-8`);
  return v;
};

/** Like checkSecretValue, for a platform secret: up to 16 KiB, and line feeds (only) allowed. */
export const checkPlatformSecretValue = (field: string, value: Secret): string =>
  checkValue(field, value, {
    max: MAX_PLATFORM_SECRET_LENGTH,
    control: CONTROL_CHARS_BUT_LF,
    controlMessage: 'must not contain control characters other than line feeds',
    blank: /^[ \n]*$/,
  });

export const auditArgs = (ctx: AuditContext | undefined): Record<string, string | undefined> => {
  const c = parseInput(auditContext, ctx ?? {}, 'audit');
  return { p_actor: c.actor, p_job_id: c.jobId, p_request_ip: c.requestIp, p_user_agent: c.userAgent };
};
