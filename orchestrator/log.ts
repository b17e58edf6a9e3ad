import pino, { type Logger as PinoLogger, type DestinationStream } from 'pino';

export type Logger = PinoLogger;

/**
 * Paths pino censors whatever their value. The Secret wrapper is the first layer (it prints
 * `[REDACTED]` on its own); these catch plain strings that slipped past it.
 */
export const REDACT_PATHS = [
  'secret',
  '*.secret',
  'value',
  '*.value',
  '*.*.value',
  'password',
  '*.password',
  'token',
  '*.token',
  'apiKey',
  '*.apiKey',
  'privateKey',
  '*.privateKey',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'req.headers.authorization',
  'req.headers.apikey',
  'env',
  '*.env',
  'p_value',
  '*.p_value',
  'decrypted_secret',
  '*.decrypted_secret',
  '*.*.decrypted_secret',
  // Cloud-init user data carries the host's private SSH key: a HostSpec (`spec.userData`), a job
  // or step context holding one (`job.data.spec.userData`), or the parsed document's `ssh_keys`.
  'userData',
  '*.userData',
  '*.*.userData',
  '*.*.*.userData',
  'ed25519_private',
  '*.ed25519_private',
  '*.*.ed25519_private',
  '*.*.*.ed25519_private',
  'SUPABASE_SERVICE_ROLE_KEY',
  'HCLOUD_TOKEN',
  'PULUMI_CONFIG_PASSPHRASE',
  '*.SUPABASE_SERVICE_ROLE_KEY',
  '*.HCLOUD_TOKEN',
  '*.PULUMI_CONFIG_PASSPHRASE',
];

export const makeLogger = (opts: { level: string; name?: string }, destination?: DestinationStream): Logger =>
  pino(
    {
      level: opts.level,
      name: opts.name ?? 'cortex',
      redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
      serializers: { err: pino.stdSerializers.err },
    },
    destination ?? pino.destination(2),
  );
