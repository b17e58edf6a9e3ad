import { z } from 'zod';
import { OrchestratorError } from './errors';
import { DNS_ZONE, POLL_INTERVAL, canonicalCidr, hcloudLocation, hcloudServerType } from './infra/validation';

/**
 * Every environment variable the orchestrator reads, in one schema, parsed once at start by a
 * composition root (`loadConfig(process.env)`). Nothing else reads `process.env`.
 * Defaults point at the embedded local services that `npm run services:up` starts.
 */
const port = z.coerce.number().int().min(1).max(65535);
const bool = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');

export const configSchema = z
  .object({
    NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
    LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),

    /** Where the project keeps its local state (services' data, host image, hosts). Git-ignored. */
    CORTEX_STATE_DIR: z
      .string()
      // It ends up in overlayfs mount options (`,` and `:` separate them) and server command lines.
      .regex(/^[^\s,:'"]+$/, 'must be a path without spaces, quotes, "," or ":"')
      .default('.local'),
    /** `npm run demo`'s own folder (its state, API log, token header file); unset: `<CORTEX_STATE_DIR>/demo`. */
    CORTEX_DEMO_DIR: z.string().min(1).optional(),

    /** `postgres`: direct connection (local mode, throughput). `supabase`: supabase-js `.rpc()`. */
    RPC_ADAPTER: z.enum(['postgres', 'supabase']).default('postgres'),
    DATABASE_URL: z
      .url({ protocol: /^postgres(ql)?$/ })
      .default('postgres://postgres@127.0.0.1:54329/cortex?sslmode=disable'),
    /**
     * The role the direct adapter's sessions assume; the login user must be a member of it. The
     * orchestrator's own role (migrations create it): EXECUTE on the contract, nothing else.
     */
    DATABASE_ROLE: z
      .string()
      .regex(/^[a-z_][a-z0-9_]*$/, 'must be a plain role name')
      .default('cortex_orchestrator'),
    DATABASE_POOL_SIZE: z.coerce.number().int().min(1).max(200).default(10),
    /** The direct adapter's bounds (orchestrator/db/pg-rpc.ts): the server's, per statement. */
    DATABASE_STATEMENT_TIMEOUT_MS: z.coerce.number().int().min(100).max(3_600_000).default(30_000),
    /**
     * This side's bound of one query (direct adapter) or one PostgREST call (supabase adapter), for
     * a connection that died silently (the server's timeout never answers); unset:
     * DATABASE_STATEMENT_TIMEOUT_MS + 5000. Must exceed the statement timeout.
     */
    DATABASE_QUERY_TIMEOUT_MS: z.coerce.number().int().min(200).max(3_660_000).optional(),
    /** Opening a connection, or waiting for a free one, gives up after this long. */
    DATABASE_CONNECT_TIMEOUT_MS: z.coerce.number().int().min(100).max(600_000).default(10_000),
    /** Idle time before a connection's first TCP keepalive probe (then 10 probes a second apart). */
    DATABASE_KEEPALIVE_IDLE_MS: z.coerce.number().int().min(1_000).max(7_200_000).default(10_000),
    SUPABASE_URL: z.url({ protocol: /^https?$/ }).optional(),
    /** A JWT whose `role` claim is `cortex_orchestrator` (README: data contract). Secret: never logged. */
    SUPABASE_SERVICE_ROLE_KEY: z.string().min(20).optional(),

    REDIS_URL: z.url({ protocol: /^rediss?$/ }).default('redis://127.0.0.1:63799'),

    /** `local`: systemd-nspawn hosts on this machine. `hcloud`: Hetzner Cloud through Pulumi. */
    HOST_PROVIDER: z.enum(['local', 'hcloud']).default('local'),
    /** Where the orchestrator's SSH private key comes from: a 0600 file, or a platform-scoped vault secret. */
    SSH_KEY_SOURCE: z.enum(['file', 'vault']).default('file'),
    SSH_PRIVATE_KEY_FILE: z.string().min(1).default('.local/keys/orchestrator_ed25519'),
    SSH_PRIVATE_KEY_SECRET: z.string().min(1).default('orchestrator-ssh-key'),
    SSH_CONNECT_TIMEOUT_MS: z.coerce.number().int().min(100).max(600_000).default(10_000),
    SSH_COMMAND_TIMEOUT_MS: z.coerce.number().int().min(100).max(3_600_000).default(120_000),

    /** Where signed audit checkpoints go; unset: `file://<CORTEX_STATE_DIR>/audit-checkpoints`. */
    AUDIT_CHECKPOINT_STORE: z
      .string()
      // The object-store adapter (s3://…) plugs in at orchestrator/audit/checkpoint-store.ts.
      .regex(/^file:\/\/[^\0]+$/, 'must be file://<directory> (the only adapter so far)')
      .optional(),
    /** The ed25519 key that signs them (0600, created on first use); unset: `<CORTEX_STATE_DIR>/keys/audit_checkpoint_ed25519`. */
    AUDIT_CHECKPOINT_KEY_FILE: z.string().min(1).optional(),
    /**
     * The HMAC key of the secret fingerprints org members see (32+ random bytes as hex, 0600, kept
     * with the orchestrator, never with the database); unset (local only): `<CORTEX_STATE_DIR>/keys/fingerprint_key`,
     * created on first use. Required with HOST_PROVIDER=hcloud or RPC_ADAPTER=supabase (checked
     * where the key is made: orchestrator/secrets/fingerprint.ts).
     */
    FINGERPRINT_KEY_FILE: z.string().min(1).optional(),

    DNS_ZONE: z
      .string()
      .regex(DNS_ZONE, 'must be a DNS zone like agents.example.com')
      .default('agents.localhost.test'),
    /**
     * The DNS server the orchestrator asks for the zone's answers (`host:port`, `[v6]:port`). Unset:
     * the local Knot server of services:up (127.0.0.1:53530) in local mode, the zone's NS on hcloud.
     */
    DNS_SERVER: z
      .string()
      .regex(
        /^((25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}|\[[0-9a-fA-F:]+\]):\d{1,5}$/,
        'must be an address and port like 127.0.0.1:53530',
      )
      .optional(),
    ACME_EMAIL: z.email().optional(),

    HCLOUD_TOKEN: z.string().length(64, 'must be a 64-character Hetzner API token').optional(),
    HCLOUD_LOCATION: hcloudLocation.default('fsn1'),
    HCLOUD_SERVER_TYPE: hcloudServerType.default('cx23'),
    /**
     * Image of new servers. Like the location and server type, it is fixed per deployment when its
     * host is first created (stored in its stack): changing it never touches an existing server.
     */
    HCLOUD_IMAGE: z
      .string()
      .regex(/^[a-z0-9][a-z0-9.-]{0,62}$/, 'must be a Hetzner image name like ubuntu-24.04')
      .default('ubuntu-24.04'),
    HCLOUD_POLL_INTERVAL: z.string().regex(POLL_INTERVAL, 'must be a duration like 5s').default('5s'),
    /** CIDRs allowed to reach SSH on agent servers: the orchestrator's egress addresses. */
    ORCHESTRATOR_SSH_CIDRS: z
      .string()
      .default('127.0.0.1/32')
      .transform((s) =>
        s
          .split(',')
          .map((c) => c.trim())
          .filter(Boolean),
      )
      .pipe(z.array(canonicalCidr).min(1)),
    PULUMI_BACKEND_URL: z
      .string()
      .regex(/^(file|s3|https?|gs|azblob):\/\//)
      .optional(),
    PULUMI_CONFIG_PASSPHRASE: z.string().min(1).optional(),
    PULUMI_SECRETS_PROVIDER: z.string().min(1).optional(),
    PULUMI_STALE_LOCK_MS: z.coerce
      .number()
      .int()
      .min(60_000)
      .default(30 * 60_000),

    API_HOST: z.string().default('127.0.0.1'),
    API_PORT: port.default(18080),
    SHUTDOWN_GRACE_MS: z.coerce.number().int().min(0).default(30_000),
    METRICS_ENABLED: bool.default(true),
    /** Requests per token (per address for public routes) and window, counted in Redis: `600/min`, `20/s`, `10000/h`. */
    API_RATE_LIMIT: z
      .string()
      .regex(
        /^[1-9][0-9]{0,6}\/(s|sec|second|min|minute|h|hour)$/,
        'must look like 600/min (a count per s, min or h)',
      )
      .default('600/min'),
    /** Failed authentications per client address and window (Redis); past it 429 before any token lookup. */
    API_AUTH_FAILURE_LIMIT: z
      .string()
      .regex(
        /^[1-9][0-9]{0,6}\/(s|sec|second|min|minute|h|hour)$/,
        'must look like 30/min (a count per s, min or h)',
      )
      .default('30/min'),
    /**
     * How long an API process trusts a token it looked up, without asking Postgres again; 0 turns
     * the cache off. Revocations announced through Redis apply at once; this bounds the rest.
     */
    API_TOKEN_CACHE_MS: z.coerce.number().int().min(0).max(60_000).default(5_000),
    /** The API's rate limiters give up on a Redis command after this long and answer 503. */
    API_REDIS_TIMEOUT_MS: z.coerce.number().int().min(50).max(30_000).default(1_000),
    /** Open event streams (SSE) per token and API process; past it 429 with Retry-After. */
    API_STREAMS_PER_TOKEN: z.coerce.number().int().min(1).max(5_000).default(20),
    /** An event stream ends after this long; EventSource reconnects with Last-Event-ID and authenticates again. */
    API_STREAM_MAX_MS: z.coerce.number().int().min(1_000).max(86_400_000).default(600_000),
    /**
     * How long an API process shares an audit chain found intact (per organisation) before it
     * verifies again; concurrent requests share one run either way (review R15 F2). 0: no sharing
     * after a run ends.
     */
    API_AUDIT_VERIFY_MEMO_MS: z.coerce.number().int().min(0).max(300_000).default(30_000),
    /**
     * A request must have ARRIVED (headers and body) within this long, or the API answers 408 and
     * closes the connection (review R15 F4). Responses are not bounded by it: an event stream
     * stays open.
     */
    API_REQUEST_TIMEOUT_MS: z.coerce.number().int().min(1_000).max(600_000).default(30_000),
    /** Webhook deliveries: attempts (exponential backoff from WEBHOOK_BACKOFF_MS) and the timeout of one POST. */
    WEBHOOK_ATTEMPTS: z.coerce.number().int().min(1).max(30).default(8),
    WEBHOOK_BACKOFF_MS: z.coerce.number().int().min(100).max(3_600_000).default(5_000),
    WEBHOOK_TIMEOUT_MS: z.coerce.number().int().min(500).max(60_000).default(10_000),
    /**
     * Deliveries of one endpoint, and of one organisation, queued at once (waiting, running or
     * between attempts), cluster-wide: what the dispatcher holds back stays pending (review R15 F6).
     */
    WEBHOOK_PER_ENDPOINT_CONCURRENCY: z.coerce.number().int().min(1).max(100).default(2),
    WEBHOOK_PER_ORG_CONCURRENCY: z.coerce.number().int().min(1).max(1_000).default(5),
    /**
     * An endpoint's circuit breaker: after this many failures in a row (timeout, connection, TLS or
     * DNS failure, 5xx, 408; not 429, review R21 F6) its deliveries are held for WEBHOOK_BREAKER_COOLDOWN_MS, doubling
     * with each opening in a row up to WEBHOOK_BREAKER_MAX_COOLDOWN_MS; a 2xx closes it.
     */
    WEBHOOK_BREAKER_FAILURES: z.coerce.number().int().min(1).max(1_000).default(5),
    WEBHOOK_BREAKER_COOLDOWN_MS: z.coerce.number().int().min(100).max(86_400_000).default(30_000),
    WEBHOOK_BREAKER_MAX_COOLDOWN_MS: z.coerce.number().int().min(100).max(86_400_000).default(900_000),
    /**
     * A delivery not sent this long after its event ends `failed`, error `expired`, instead of being
     * sent (review R21 F1: a dead endpoint's backlog drains; SQL bounds: 60 s to 30 days).
     */
    WEBHOOK_MAX_AGE_SECONDS: z.coerce.number().int().min(60).max(2_592_000).default(86_400),
    /** Deliveries one worker process runs at once (at least WEBHOOK_PER_ORG_CONCURRENCY). */
    WEBHOOK_CONCURRENCY: z.coerce.number().int().min(1).max(1_000).default(10),

    // ---- the provisioning pipeline (queues, workers) ----
    /** Redis key prefix of the BullMQ queues and leases. */
    QUEUE_PREFIX: z
      .string()
      .regex(/^[a-z][a-z0-9-]{0,40}$/, 'must be a short name like cortex')
      .default('cortex'),
    /** Provision/deprovision jobs one worker process runs at once. */
    WORKER_CONCURRENCY: z.coerce.number().int().min(1).max(200).default(10),
    JOB_ATTEMPTS: z.coerce.number().int().min(1).max(50).default(5),
    /** First retry delay; doubles with each attempt. */
    JOB_BACKOFF_MS: z.coerce.number().int().min(100).max(600_000).default(2_000),
    /** A job whose worker stops renewing its lock for this long is taken over by another worker. */
    JOB_LOCK_MS: z.coerce.number().int().min(2_000).max(600_000).default(30_000),
    /** The per-deployment lease (one operation per deployment at a time) expires this long after its holder died. */
    LEASE_TTL_MS: z.coerce.number().int().min(1_000).max(600_000).default(30_000),
    RECONCILE_EVERY_MS: z.coerce.number().int().min(1_000).default(60_000),
    /** A deployment outside a final state with no progress for this long is re-enqueued. */
    RECONCILE_IDLE_SECONDS: z.coerce.number().int().min(1).max(86_400).default(1_200),
    ORPHAN_SWEEP_EVERY_MS: z.coerce.number().int().min(1_000).default(600_000),
    /** A host no live deployment owns is removed once it has been seen unowned this long. */
    ORPHAN_GRACE_SECONDS: z.coerce.number().int().min(0).max(604_800).default(900),
    /**
     * Provision jobs, and separately deprovision jobs, started per hour on hcloud, spaced evenly.
     * Hetzner allows 3,600 requests an hour per project; a provisioning costs at most about 39 and a
     * deprovisioning about 14 (docs/infrastructure.md), so 60 of each is at most about 3,200.
     */
    HCLOUD_JOBS_PER_HOUR: z.coerce.number().int().min(1).max(3_600).default(60),
    // ---- key rotation (orchestrator/rotation) ----
    /** Deployments one rotation switches at once. */
    ROTATE_CONCURRENCY: z.coerce.number().int().min(1).max(100).default(8),
    /** How long a rotated-out version stays in the vault (for rollback) before it is deleted. */
    ROTATION_GRACE_SECONDS: z.coerce.number().int().min(0).max(2_592_000).default(86_400),
    /**
     * How long a switched agent must stay healthy (its old instance, or its previous env file, still
     * there to go back to) before a rotation or revocation counts it switched.
     */
    ROTATION_SOAK_SECONDS: z.coerce.number().int().min(0).max(600).default(5),
    /** How often the maintenance job retires versions past their grace and resumes stalled rotations. */
    ROTATION_SWEEP_EVERY_MS: z.coerce.number().int().min(1_000).default(60_000),
    /** A running rotation with no progress this long is re-enqueued (its job was lost). */
    ROTATION_STALLED_SECONDS: z.coerce.number().int().min(1).max(86_400).default(600),
    /** How often keys older than their max age are flagged. */
    KEY_AGE_CHECK_EVERY_MS: z.coerce.number().int().min(1_000).default(3_600_000),
    /** Check a new key against its provider before fanning out: `off` or `http` (unset: `http` with hcloud, `off` in local mode). */
    KEY_VALIDATION: z.enum(['off', 'http']).optional(),
    /** Base URL of every provider's key check (a local stub provider); unset: the providers' own. */
    KEY_VALIDATION_BASE_URL: z.url({ protocol: /^https?$/ }).optional(),
    // ---- retention of the API's bookkeeping (orchestrator/api/api-retention.ts; floors in SQL too) ----
    /** Idempotency keys of deployment requests are remembered at least this long (floor 1 day). */
    IDEMPOTENCY_KEEP_SECONDS: z.coerce.number().int().min(86_400).max(315_360_000).default(604_800),
    /** Events of settled deployments older than this are removed (floor 7 days; a moving deployment keeps all). */
    EVENTS_KEEP_SECONDS: z.coerce.number().int().min(604_800).max(315_360_000).default(2_592_000),
    /** Finished webhook deliveries older than this are removed (floor 7 days; pending ones stay). */
    DELIVERIES_KEEP_SECONDS: z.coerce.number().int().min(604_800).max(315_360_000).default(2_592_000),
    /** How often the maintenance job applies that retention. */
    RETENTION_EVERY_MS: z.coerce.number().int().min(60_000).default(3_600_000),

    /**
     * Debugging aid: a worker holds every job when it reaches this step (after recording its start),
     * until killed. Used by the crash tests; never set in production.
     */
    PIPELINE_PAUSE_AT_STEP: z
      .string()
      .regex(
        /^(host|dns|ssh|configure|secrets|start|health|ready)(:applied)?$/,
        'must be a provisioning step name, optionally with :applied (after its effect, before its record)',
      )
      .optional(),
  })
  .superRefine((c, ctx) => {
    if (c.RPC_ADAPTER === 'supabase') {
      if (!c.SUPABASE_URL)
        ctx.addIssue({
          code: 'custom',
          path: ['SUPABASE_URL'],
          message: 'is required when RPC_ADAPTER=supabase',
        });
      if (!c.SUPABASE_SERVICE_ROLE_KEY)
        ctx.addIssue({
          code: 'custom',
          path: ['SUPABASE_SERVICE_ROLE_KEY'],
          message: 'is required when RPC_ADAPTER=supabase',
        });
    }
    if (
      c.DATABASE_QUERY_TIMEOUT_MS !== undefined &&
      c.DATABASE_QUERY_TIMEOUT_MS <= c.DATABASE_STATEMENT_TIMEOUT_MS
    )
      ctx.addIssue({
        code: 'custom',
        path: ['DATABASE_QUERY_TIMEOUT_MS'],
        message: 'must be greater than DATABASE_STATEMENT_TIMEOUT_MS (the server should answer first)',
      });
    if (c.WEBHOOK_PER_ORG_CONCURRENCY < c.WEBHOOK_PER_ENDPOINT_CONCURRENCY)
      ctx.addIssue({
        code: 'custom',
        path: ['WEBHOOK_PER_ORG_CONCURRENCY'],
        message:
          'must be at least WEBHOOK_PER_ENDPOINT_CONCURRENCY (an endpoint is part of its organisation)',
      });
    if (c.WEBHOOK_PER_ORG_CONCURRENCY > c.WEBHOOK_CONCURRENCY)
      ctx.addIssue({
        code: 'custom',
        path: ['WEBHOOK_PER_ORG_CONCURRENCY'],
        message:
          'must be at most WEBHOOK_CONCURRENCY (one organisation may not take every slot of a worker process)',
      });
    if (c.WEBHOOK_BREAKER_MAX_COOLDOWN_MS < c.WEBHOOK_BREAKER_COOLDOWN_MS)
      ctx.addIssue({
        code: 'custom',
        path: ['WEBHOOK_BREAKER_MAX_COOLDOWN_MS'],
        message: 'must be at least WEBHOOK_BREAKER_COOLDOWN_MS (the cool-down grows up to it)',
      });
    if (c.NODE_ENV === 'production' && c.PIPELINE_PAUSE_AT_STEP)
      ctx.addIssue({
        code: 'custom',
        path: ['PIPELINE_PAUSE_AT_STEP'],
        message: 'holds every job forever: a debugging aid, refused with NODE_ENV=production',
      });
    if (c.HOST_PROVIDER === 'hcloud' && !c.HCLOUD_TOKEN)
      ctx.addIssue({
        code: 'custom',
        path: ['HCLOUD_TOKEN'],
        message: 'is required when HOST_PROVIDER=hcloud',
      });
  });

export type Config = Readonly<z.output<typeof configSchema>>;

/** Settings whose default is meant for local hosts only: with HOST_PROVIDER=hcloud they must be set. */
export const HCLOUD_EXPLICIT = ['DNS_ZONE', 'ORCHESTRATOR_SSH_CIDRS'] as const;

/**
 * Parse the environment. On failure the error lists each variable and what is wrong with it —
 * never the value, which may be a secret.
 */
export const loadConfig = (env: Record<string, string | undefined>): Config => {
  // Empty strings mean "unset": a blank line in an env file should not defeat a default.
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const result = configSchema.safeParse(cleaned);
  // On Hetzner the local defaults (a .test zone, SSH from 127.0.0.1) would create servers nobody
  // can reach under a name nobody serves: both must be set explicitly.
  const explicit =
    cleaned['HOST_PROVIDER'] === 'hcloud'
      ? HCLOUD_EXPLICIT.filter((k) => cleaned[k] === undefined).map(
          (k) => `  ${k}: is required when HOST_PROVIDER=hcloud (no local default applies)`,
        )
      : [];
  if (!result.success || explicit.length > 0) {
    const lines = (result.success ? [] : result.error.issues).map(
      (i) => `  ${i.path.join('.') || '(root)'}: ${describeIssue(i)}`,
    );
    throw new OrchestratorError(
      'config_invalid',
      `invalid configuration:\n${[...lines, ...explicit].join('\n')}`,
    );
  }
  return Object.freeze(result.data);
};

// zod's default messages can quote the received value ("Invalid option: expected one of …" is safe,
// but some include the input); keep only messages that cannot echo input.
const describeIssue = (i: z.core.$ZodIssue): string => {
  switch (i.code) {
    case 'invalid_value':
      return `must be one of ${i.values.map(String).join(', ')}`;
    case 'invalid_type':
      return `must be a ${i.expected}`;
    case 'too_small':
      return `is too small (minimum ${String(i.minimum)})`;
    case 'too_big':
      return `is too big (maximum ${String(i.maximum)})`;
    case 'invalid_format':
      return `has an invalid format (expected ${i.format})`;
    default:
      return i.message;
  }
};
