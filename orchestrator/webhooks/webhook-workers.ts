import { Queue, UnrecoverableError, Worker, type ConnectionOptions, type Job } from 'bullmq';
import type { Logger } from '../log';
import { failedJobOutcome, metrics } from '../metrics/metrics';
import { reasonOf } from '../steps/step-runner';
import { WEBHOOKS_QUEUE, parseWebhookJob, webhookJobId } from './webhook-payloads';
import { sendWebhook, type SendInput, type SendResult } from './webhook-sender';
import {
  camelKeys,
  type BreakerPolicy,
  type ClaimCaps,
  type DeploymentEvent,
  type WebhookStore,
} from './webhook-store';

/**
 * The webhook side of a worker process. The dispatcher moves pending outbox rows (one per status
 * or health event and endpoint, written in the event's own transaction: by the status trigger, or
 * by deployment_events__append_health) to the `webhooks` queue, one job per delivery with a
 * deterministic id; the delivery worker reads the endpoint's signing secret through the audited
 * function, signs, POSTs, and records the outcome (metadata only). Retries: exponential backoff
 * over `attempts`; the last failed attempt records
 * the delivery `failed`. At least once: a worker that dies between the POST and its record sends
 * again with the same webhook-id (the event id), which receivers use to drop the duplicate.
 *
 * Fairness (review R15 F6, R21): the claim queues a delivery only while its endpoint and
 * organisation are under their caps of queued deliveries (counted in Postgres, so across worker
 * processes), and never while the endpoint's circuit breaker is open; a job whose endpoint's breaker
 * opened after it was queued ends at once and its row goes back to pending (begin does it: no slot
 * held, no attempt spent), to be queued again once the breaker closes. An attempt is a POST:
 * `attempts` in the row counts them, and the delivery fails after `attempts` of them, or `expired`
 * once older than `maxAgeSeconds`. A row the dispatcher could not give a job goes back to pending
 * (release); one whose job failed for good without recording it ends `failed` (`job_failed`); a
 * stale queued row whose job ended in Redis gets a new job (BullMQ ignores an add under an existing
 * id).
 */
export interface WebhookSettings {
  readonly connection: ConnectionOptions;
  readonly prefix: string;
  readonly attempts: number;
  readonly backoffMs: number;
  readonly timeoutMs: number;
  readonly allowLoopback: boolean;
  /** How often the dispatcher looks for new deliveries. */
  readonly dispatchEveryMs: number;
  /** Deliveries this process runs at once (WEBHOOK_CONCURRENCY). */
  readonly concurrency: number;
  readonly caps: ClaimCaps;
  /** An undelivered delivery older than this ends failed/expired (WEBHOOK_MAX_AGE_SECONDS). */
  readonly maxAgeSeconds: number;
  readonly breaker: BreakerPolicy;
}

const CLAIM_BATCH = 100;
/**
 * A queued delivery whose job Redis lost (or whose job ended without recording it) is claimed again
 * after this long; a job that still runs or waits is left alone, one that ended is replaced.
 */
const REQUEUE_AFTER_SECONDS = 900;
/** A finished job frees a slot: the next pass runs this soon instead of at the next tick. */
const KICK_AFTER_MS = 50;

/** The JSON body receivers get (the Standard Webhooks envelope: type, timestamp, data). */
export const webhookBody = (event: DeploymentEvent, orgId: string): string =>
  JSON.stringify({
    type: `deployment.${event.kind}`,
    timestamp: new Date(event.at).toISOString(),
    data: { eventId: Number(event.id), deploymentId: event.deploymentId, orgId, ...camelKeys(event.payload) },
  });

export const makeWebhookWorkers = (
  deps: { store: WebhookStore; log: Logger; send?: (i: SendInput) => Promise<SendResult> },
  s: WebhookSettings,
) => {
  const log = deps.log.child({ component: 'webhooks' });
  const send = deps.send ?? sendWebhook;
  const queue = new Queue(WEBHOOKS_QUEUE, { connection: s.connection, prefix: s.prefix });
  let worker: Worker | undefined;
  let timer: NodeJS.Timeout | undefined;
  let kickTimer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let again = false;
  let stopped = false;

  /**
   * A job for a claimed delivery. BullMQ ignores an add under an id it still holds, so a job that
   * ended (failed for good, kept 24 h; or completed) is removed first: the row is queued again
   * because that job no longer delivers it. A job still waiting, delayed or running is left alone.
   */
  const enqueue = async (deliveryId: string): Promise<void> => {
    const jobId = webhookJobId(deliveryId);
    const existing = await queue.getJob(jobId);
    if (existing) {
      const state = await existing.getState();
      if (state !== 'completed' && state !== 'failed' && state !== 'unknown') return;
      await existing.remove();
    }
    await queue.add(
      'deliver',
      { deliveryId },
      {
        jobId,
        attempts: s.attempts,
        backoff: { type: 'exponential', delay: s.backoffMs },
        removeOnComplete: true,
        removeOnFail: { age: 24 * 3600 },
      },
    );
  };

  /** One pass: claim pending deliveries and queue them; returns how many. */
  const dispatch = async (): Promise<number> => {
    let total = 0;
    for (;;) {
      const ids = await deps.store.claim(CLAIM_BATCH, REQUEUE_AFTER_SECONDS, s.caps, s.maxAgeSeconds);
      for (const [i, deliveryId] of ids.entries()) {
        try {
          await enqueue(deliveryId);
        } catch (err) {
          // no job for this one and the rest (Redis refused or is down): back to pending, so they
          // hold no slot of their endpoint and organisation until a later pass queues them (review
          // R21 F2). This one too, though its add may have reached Redis (a lost reply): left queued
          // it held its slots for 15 minutes, one more each failing pass (review R25 finding 1),
          // while a live job whose row is pending still delivers once (begin takes `pending`; the
          // next claim's add sees the job and adds none)
          const rest = ids.slice(i);
          await deps.store
            .release(rest)
            .catch((e: unknown) =>
              log.warn({ reason: reasonOf(e), count: rest.length }, 'webhook release failed; requeued later'),
            );
          throw err;
        }
      }
      total += ids.length;
      if (ids.length < CLAIM_BATCH || stopped) return total;
    }
  };

  /** One pass at a time in this process; a pass asked for meanwhile runs right after it. */
  const pass = (): Promise<void> => {
    if (running) {
      again = true;
      return running;
    }
    running = dispatch()
      .then(() => undefined)
      .catch((err: unknown) => log.warn({ reason: reasonOf(err) }, 'webhook dispatch failed; trying again'))
      .finally(() => {
        running = undefined;
        if (again && !stopped) {
          again = false;
          void pass();
        }
      });
    return running;
  };

  const loop = (): void => {
    if (stopped) return;
    timer = setTimeout(() => void pass().finally(loop), s.dispatchEveryMs);
  };

  // the caps hold deliveries back until a slot frees: fill it now rather than at the next tick
  const kick = (): void => {
    if (stopped || kickTimer) return;
    kickTimer = setTimeout(() => {
      kickTimer = undefined;
      void pass();
    }, KICK_AFTER_MS);
  };

  const deliver = async (job: Job): Promise<{ outcome: string }> => {
    const parsed = parseWebhookJob(job.data);
    if (!parsed.ok) {
      await job.updateData({}).catch(() => undefined);
      throw new UnrecoverableError(parsed.problem);
    }
    const { deliveryId } = parsed.payload;
    const plan = await deps.store.begin(deliveryId, s.maxAgeSeconds);
    if (plan.action === 'skip') {
      // the breaker opened after this job was queued: the row is pending again (no slot, no attempt)
      if (plan.heldUntil) log.debug({ deliveryId, until: plan.heldUntil }, 'webhook delivery held');
      return { outcome: plan.state };
    }
    // the last POST (counted in the row: a held delivery made none), or BullMQ's last try
    const final = plan.attempt >= s.attempts || job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
    const secret = await deps.store.readSecret(plan.endpointId, {
      actor: 'webhooks',
      jobId: job.id ?? 'unknown',
    });
    const result = await send({
      url: plan.url,
      msgId: plan.event.id,
      timestamp: new Date(),
      body: webhookBody(plan.event, plan.orgId),
      secret,
      timeoutMs: s.timeoutMs,
      allowLoopback: s.allowLoopback,
    });
    const dlog = log.child({
      deliveryId,
      endpointId: plan.endpointId,
      eventId: plan.event.id,
      attempt: plan.attempt,
    });
    if (result.ok) {
      await deps.store.record(deliveryId, 'delivered', result.status, undefined, s.breaker);
      dlog.info({ status: result.status }, 'webhook delivered');
      return { outcome: 'delivered' };
    }
    const recorded = await deps.store.record(
      deliveryId,
      final ? 'failed' : 'retry',
      result.status,
      result.error,
      s.breaker,
    );
    if (recorded.breakerOpened) {
      metrics.webhookBreakerOpened.inc();
      dlog.warn(
        { consecutiveFailures: recorded.consecutiveFailures, until: recorded.breakerOpenUntil },
        "webhook endpoint's circuit breaker opened: its deliveries are held until then",
      );
    }
    if (final) {
      dlog.warn({ status: result.status, error: result.error }, 'webhook delivery failed for good');
      return { outcome: 'failed' };
    }
    // the job's failure text is ours: a code and a status, never the receiver's words
    throw new Error(`webhook delivery: ${result.error}${result.status ? ` ${result.status}` : ''}`);
  };

  const start = (): void => {
    stopped = false;
    worker = new Worker(WEBHOOKS_QUEUE, deliver, {
      connection: s.connection,
      prefix: s.prefix,
      concurrency: s.concurrency,
    });
    worker.on('error', (err) => log.error({ reason: reasonOf(err) }, 'webhook worker error'));
    worker.on('failed', (job, err) => {
      const outcome = failedJobOutcome(job, err);
      metrics.jobs.inc({ queue: WEBHOOKS_QUEUE, outcome });
      // failed for good without recording the row (an error before or around the POST): the row
      // would stay queued with no job, holding its slots (review R21 F2). It ends `failed`
      // (`job_failed`), not back to pending: a release gave it a new job with all its tries again,
      // for as long as the cause lasted — every try a POST when the record was what failed
      // (review R24 finding 1). A final row is left as it is by the record.
      const parsed = job && outcome === 'failed' ? parseWebhookJob(job.data) : undefined;
      if (parsed?.ok)
        void deps.store
          .record(parsed.payload.deliveryId, 'failed', undefined, 'job_failed', s.breaker)
          .catch((e: unknown) =>
            log.warn(
              { reason: reasonOf(e), deliveryId: parsed.payload.deliveryId },
              'could not record the failed job: its row is requeued later',
            ),
          )
          .finally(kick);
      else kick();
    });
    worker.on('completed', () => {
      metrics.jobs.inc({ queue: WEBHOOKS_QUEUE, outcome: 'completed' });
      kick();
    });
    loop();
  };

  const close = async (): Promise<void> => {
    stopped = true;
    if (timer) clearTimeout(timer);
    if (kickTimer) clearTimeout(kickTimer);
    if (worker) await worker.close();
    await running;
    await queue.close();
  };

  return { start, close, dispatch, queue };
};
export type WebhookWorkers = ReturnType<typeof makeWebhookWorkers>;
