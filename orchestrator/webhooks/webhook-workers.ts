import { DelayedError, Queue, UnrecoverableError, Worker, type ConnectionOptions, type Job } from 'bullmq';
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
 * Fairness (review R15 F6): the claim queues a delivery only while its endpoint and organisation
 * are under their caps of queued deliveries (counted in Postgres, so across worker processes), and
 * never while the endpoint's circuit breaker is open; a job whose endpoint's breaker opened after it
 * was queued waits (BullMQ delayed, no slot held, no attempt spent) until it closes. An attempt is
 * a POST: `attempts` in the row counts them, and the delivery fails after `attempts` of them.
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
  readonly concurrency: number;
  readonly caps: ClaimCaps;
  readonly breaker: BreakerPolicy;
}

const CLAIM_BATCH = 100;
/** A queued delivery whose job Redis lost is queued again after this long (the job id dedupes). */
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

  /** One pass: claim pending deliveries and queue them; returns how many. */
  const dispatch = async (): Promise<number> => {
    let total = 0;
    for (;;) {
      const ids = await deps.store.claim(CLAIM_BATCH, REQUEUE_AFTER_SECONDS, s.caps);
      for (const deliveryId of ids)
        await queue.add(
          'deliver',
          { deliveryId },
          {
            jobId: webhookJobId(deliveryId),
            attempts: s.attempts,
            backoff: { type: 'exponential', delay: s.backoffMs },
            removeOnComplete: true,
            removeOnFail: { age: 24 * 3600 },
          },
        );
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

  const deliver = async (job: Job, token?: string): Promise<{ outcome: string }> => {
    const parsed = parseWebhookJob(job.data);
    if (!parsed.ok) {
      await job.updateData({}).catch(() => undefined);
      throw new UnrecoverableError(parsed.problem);
    }
    const { deliveryId } = parsed.payload;
    const plan = await deps.store.begin(deliveryId);
    if (plan.action === 'skip') return { outcome: plan.state };
    if (plan.action === 'hold') {
      // the breaker opened after this job was queued: wait for it without a slot or an attempt
      // (the row stays queued, so its endpoint's cap stays taken and nothing else of it is queued)
      log.debug({ deliveryId, endpointId: plan.endpointId, until: plan.until }, 'webhook delivery held');
      await job.moveToDelayed(Math.max(plan.until.getTime(), Date.now() + 1), token);
      throw new DelayedError();
    }
    // the last POST (counted in the row: a held job made none), or BullMQ's last try
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
      metrics.jobs.inc({ queue: WEBHOOKS_QUEUE, outcome: failedJobOutcome(job, err) });
      kick();
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
