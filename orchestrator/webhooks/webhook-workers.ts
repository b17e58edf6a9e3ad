import { Queue, UnrecoverableError, Worker, type ConnectionOptions, type Job } from 'bullmq';
import type { Logger } from '../log';
import { failedJobOutcome, metrics } from '../metrics/metrics';
import { reasonOf } from '../steps/step-runner';
import { WEBHOOKS_QUEUE, parseWebhookJob, webhookJobId } from './webhook-payloads';
import { sendWebhook, type SendInput, type SendResult } from './webhook-sender';
import { camelKeys, type DeploymentEvent, type WebhookStore } from './webhook-store';

/**
 * The webhook side of a worker process. The dispatcher moves pending outbox rows (one per status
 * or health event and endpoint, written in the event's own transaction: by the status trigger, or
 * by deployment_events__append_health) to the `webhooks` queue, one job per delivery with a
 * deterministic id; the delivery worker reads the endpoint's signing secret through the audited
 * function, signs, POSTs, and records the outcome (metadata only). Retries: exponential backoff
 * over `attempts`; the last failed attempt records
 * the delivery `failed`. At least once: a worker that dies between the POST and its record sends
 * again with the same webhook-id (the event id), which receivers use to drop the duplicate.
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
}

const CLAIM_BATCH = 100;
/** A queued delivery whose job Redis lost is queued again after this long (the job id dedupes). */
const REQUEUE_AFTER_SECONDS = 900;

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
  let stopped = false;

  /** One pass: claim pending deliveries and queue them; returns how many. */
  const dispatch = async (): Promise<number> => {
    let total = 0;
    for (;;) {
      const ids = await deps.store.claim(CLAIM_BATCH, REQUEUE_AFTER_SECONDS);
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

  const loop = (): void => {
    if (stopped) return;
    timer = setTimeout(() => {
      dispatch()
        .catch((err: unknown) => log.warn({ reason: reasonOf(err) }, 'webhook dispatch failed; trying again'))
        .finally(loop);
    }, s.dispatchEveryMs);
  };

  const deliver = async (job: Job): Promise<{ outcome: string }> => {
    const parsed = parseWebhookJob(job.data);
    if (!parsed.ok) {
      await job.updateData({}).catch(() => undefined);
      throw new UnrecoverableError(parsed.problem);
    }
    const { deliveryId } = parsed.payload;
    const plan = await deps.store.begin(deliveryId);
    if (plan.action === 'skip') return { outcome: plan.state };
    const final = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
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
      await deps.store.record(deliveryId, 'delivered', result.status);
      dlog.info({ status: result.status }, 'webhook delivered');
      return { outcome: 'delivered' };
    }
    await deps.store.record(deliveryId, final ? 'failed' : 'retry', result.status, result.error);
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
    worker.on('failed', (job, err) =>
      metrics.jobs.inc({ queue: WEBHOOKS_QUEUE, outcome: failedJobOutcome(job, err) }),
    );
    worker.on('completed', () => metrics.jobs.inc({ queue: WEBHOOKS_QUEUE, outcome: 'completed' }));
    loop();
  };

  const close = async (): Promise<void> => {
    stopped = true;
    if (timer) clearTimeout(timer);
    if (worker) await worker.close();
    await queue.close();
  };

  return { start, close, dispatch, queue };
};
export type WebhookWorkers = ReturnType<typeof makeWebhookWorkers>;
