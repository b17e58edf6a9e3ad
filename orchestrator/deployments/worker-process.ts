import { makeApiRetention } from '../api/api-retention';
import { makeAuditCheckpointsFromConfig } from '../audit/audit-checkpoints-from-config';
import type { Config } from '../config';
import type { Logger } from '../log';
import { collectProcessDefaults, processRegistry } from '../metrics/metrics';
import { startMetricsPublisher } from '../metrics/metrics-publisher';
import { reasonOf } from '../steps/step-runner';
import { makeRotationFromPipeline } from '../rotation/rotation-from-config';
import { makePipelineFromConfig } from './pipeline-from-config';
import { makeWebhookWorkersFromConfig } from '../webhooks/webhooks-from-config';

/**
 * A worker process: the provision, deprovision and maintenance workers, the maintenance job
 * schedulers (reconcile, orphan sweep, signed audit checkpoints, retention of the API's records),
 * and a graceful stop on SIGTERM and SIGINT — running steps finish or hand their job back at a step
 * boundary within SHUTDOWN_GRACE_MS.
 * Used by `workers/worker.ts` and `cortexctl worker`.
 */
export const AUDIT_CHECKPOINT_EVERY_MS = 3_600_000;

export const runWorkerProcess = async (
  config: Config,
  log: Logger,
): Promise<{ stop: () => Promise<void> }> => {
  const pipeline = await makePipelineFromConfig(config, log);
  const checkpoints = makeAuditCheckpointsFromConfig(config, pipeline.db.rpc);
  const rotation = makeRotationFromPipeline(pipeline);
  const retention = makeApiRetention({
    rpc: pipeline.db.rpc,
    log: log.child({ task: 'retention' }),
    ages: config,
  });
  const workers = pipeline.makeWorkerSet(
    {
      'audit-checkpoint': () => checkpoints.checkpoint(),
      retention: () => retention.run(),
      ...rotation.maintenanceTasks,
    },
    rotation.processors,
  );
  workers.start();
  // webhooks: the outbox dispatcher and the delivery worker (orchestrator/webhooks)
  const webhooks = makeWebhookWorkersFromConfig(config, pipeline.db.rpc, log);
  webhooks.start();
  // This process's counters reach the API's one scrape through Redis (metrics-publisher.ts).
  if (config.METRICS_ENABLED) collectProcessDefaults();
  const publisher = config.METRICS_ENABLED
    ? startMetricsPublisher({
        redis: pipeline.redis,
        registry: processRegistry,
        prefix: config.QUEUE_PREFIX,
        holder: workers.holder,
        onError: (err) => log.warn({ reason: reasonOf(err) }, 'could not publish metrics'),
      })
    : undefined;
  const schedule = async (): Promise<void> => {
    await pipeline.scheduleMaintenance();
    await rotation.schedule();
    await pipeline.queues.queues.maintenance.upsertJobScheduler(
      'audit-checkpoint',
      { every: AUDIT_CHECKPOINT_EVERY_MS },
      { name: 'maintenance', data: { task: 'audit-checkpoint' } },
    );
    // idempotency keys, finished webhook deliveries, settled deployments' events (docs/api.md)
    await pipeline.queues.queues.maintenance.upsertJobScheduler(
      'retention',
      { every: config.RETENTION_EVERY_MS },
      { name: 'maintenance', data: { task: 'retention' } },
    );
  };
  await schedule();
  // Redis holds the schedulers too: upsert them again now and then, so a flushed or replaced Redis
  // gets its reconciler back without a worker restart (an upsert of an existing one changes nothing).
  const reschedule = setInterval(() => {
    schedule().catch((err: unknown) =>
      log.warn({ reason: reasonOf(err) }, 'could not upsert the maintenance schedulers'),
    );
  }, config.RECONCILE_EVERY_MS);
  reschedule.unref();
  log.info(
    { concurrency: config.WORKER_CONCURRENCY, provider: config.HOST_PROVIDER, holder: workers.holder },
    'workers started',
  );
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      clearInterval(reschedule);
      log.info({ graceMs: config.SHUTDOWN_GRACE_MS }, 'stopping workers');
      // Workers first, then the last metrics snapshot (it counts the jobs that ended in the grace), then the rest.
      await workers
        .close(config.SHUTDOWN_GRACE_MS)
        .catch((err: unknown) => log.error({ reason: reasonOf(err) }, 'close failed'));
      await webhooks.close().catch((err: unknown) => log.error({ reason: reasonOf(err) }, 'close failed'));
      await publisher?.stop();
      await pipeline
        .close(config.SHUTDOWN_GRACE_MS)
        .catch((err: unknown) => log.error({ reason: reasonOf(err) }, 'close failed'));
      log.info('workers stopped');
    })());
  return { stop };
};
