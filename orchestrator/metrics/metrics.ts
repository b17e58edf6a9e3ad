import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * The Prometheus metrics of one process (API or worker), incremented where the event happens with
 * a one-line call (`metrics.jobs.inc(...)`). The API and the workers are different processes, often
 * on different machines, so a scrape of the API alone would miss what workers count: each worker
 * publishes this registry to Redis every few seconds (`metrics-publisher.ts`), and the API's
 * `GET /metrics` serves, in one scrape, its own registry, every live worker's (labelled `process`),
 * and figures read at scrape time from the sources of truth: deployments by status from Postgres,
 * jobs by queue and state from BullMQ (`metrics-scrape.ts`). Labels carry names and outcomes only:
 * never an id, a subdomain, a value or a reason text (cardinality, and nothing to leak).
 */
export const processRegistry = new Registry();

/** Step-duration buckets in seconds: from a skipped check (ms) to a host created in the cloud (minutes). */
export const STEP_BUCKETS = [0.05, 0.25, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640];

export const metrics = {
  /** Job attempts by queue and outcome: completed, retried (an attempt failed, another follows), failed (for good). */
  jobs: new Counter({
    name: 'cortex_jobs_total',
    help: 'BullMQ job attempts by queue and outcome (completed, retried, failed)',
    labelNames: ['queue', 'outcome'] as const,
    registers: [processRegistry],
  }),
  /** How long each step took, by operation (provision/deprovision), step name and outcome. */
  stepDuration: new Histogram({
    name: 'cortex_step_duration_seconds',
    help: 'Duration of pipeline steps by operation, step and outcome (succeeded, skipped, failed)',
    labelNames: ['operation', 'step', 'outcome'] as const,
    buckets: STEP_BUCKETS,
    registers: [processRegistry],
  }),
  /**
   * Secret accesses through the audited SQL functions, by operation (create, read, platform_read)
   * and outcome (success, denied, error). A read counts each value returned; a denial counts once.
   */
  secretAccess: new Counter({
    name: 'cortex_secret_access_total',
    help: 'Secret accesses by operation and outcome (success, denied, error)',
    labelNames: ['operation', 'outcome'] as const,
    registers: [processRegistry],
  }),
  /** Requests the orchestrator itself makes to a provider's API (not Pulumi's own), by status. */
  providerCalls: new Counter({
    name: 'cortex_provider_api_requests_total',
    help: "Requests made to a cloud provider's API by the orchestrator itself, by provider, method and HTTP status (or 'error')",
    labelNames: ['provider', 'method', 'status'] as const,
    registers: [processRegistry],
  }),
  /** Webhook endpoints' circuit breakers opened (review R15 F6); GET /v1/webhooks shows which, until when. */
  webhookBreakerOpened: new Counter({
    name: 'cortex_webhook_breaker_opened_total',
    help: "Openings of a webhook endpoint's circuit breaker (its deliveries held for a cool-down)",
    registers: [processRegistry],
  }),
};

let defaultsStarted = false;
/** Node's process figures (RSS, heap, event-loop lag) in this process's registry; once per process. */
export const collectProcessDefaults = (): void => {
  if (defaultsStarted) return;
  defaultsStarted = true;
  collectDefaultMetrics({ register: processRegistry, prefix: 'cortex_' });
};

/** A job's outcome for `metrics.jobs` from BullMQ's `failed` event: will another attempt follow? */
export const failedJobOutcome = (
  job: { attemptsMade: number; opts: { attempts?: number } } | undefined,
  err: { name?: string } | undefined,
): 'failed' | 'retried' =>
  !job || err?.name === 'UnrecoverableError' || job.attemptsMade >= (job.opts.attempts ?? 1)
    ? 'failed'
    : 'retried';

/** Seconds since `t0` (a `Date.now()`), for `metrics.stepDuration.observe`. */
export const secondsSince = (t0: number): number => (Date.now() - t0) / 1000;
