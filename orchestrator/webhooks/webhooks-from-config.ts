import type { ConnectionOptions } from 'bullmq';
import type { Config } from '../config';
import type { Rpc } from '../db/rpc';
import { redisOptionsFromUrl } from '../deployments/pipeline-from-config';
import type { Logger } from '../log';
import { webhookLoopbackAllowed } from './webhook-address';
import { makeWebhookStore } from './webhook-store';
import { makeWebhookWorkers, type WebhookWorkers } from './webhook-workers';

/** How often a worker process looks for new deliveries (the outbox is indexed; one cheap query). */
export const WEBHOOK_DISPATCH_EVERY_MS = 500;

/** The webhook workers' options from the configuration (apart, so that a test can check them). */
export const webhookWorkerOptions = (config: Config): Parameters<typeof makeWebhookWorkers>[1] => ({
  connection: redisOptionsFromUrl(config.REDIS_URL) as ConnectionOptions,
  prefix: config.QUEUE_PREFIX,
  attempts: config.WEBHOOK_ATTEMPTS,
  backoffMs: config.WEBHOOK_BACKOFF_MS,
  timeoutMs: config.WEBHOOK_TIMEOUT_MS,
  // local mode: receivers on 127.0.0.1 (the tests', a developer's); never with hcloud or Supabase
  allowLoopback: webhookLoopbackAllowed(config),
  dispatchEveryMs: WEBHOOK_DISPATCH_EVERY_MS,
  concurrency: config.WEBHOOK_CONCURRENCY,
  caps: {
    perEndpoint: config.WEBHOOK_PER_ENDPOINT_CONCURRENCY,
    perOrg: config.WEBHOOK_PER_ORG_CONCURRENCY,
  },
  maxAgeSeconds: config.WEBHOOK_MAX_AGE_SECONDS,
  breaker: {
    failures: config.WEBHOOK_BREAKER_FAILURES,
    cooldownMs: config.WEBHOOK_BREAKER_COOLDOWN_MS,
    maxCooldownMs: config.WEBHOOK_BREAKER_MAX_COOLDOWN_MS,
  },
});

/** The webhook dispatcher and delivery worker of a worker process, from the configuration. */
export const makeWebhookWorkersFromConfig = (config: Config, rpc: Rpc, log: Logger): WebhookWorkers =>
  makeWebhookWorkers({ store: makeWebhookStore({ rpc }), log }, webhookWorkerOptions(config));
