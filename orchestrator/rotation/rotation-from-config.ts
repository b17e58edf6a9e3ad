import { hostname } from 'node:os';
import type { Config } from '../config';
import type { Pipeline } from '../deployments/pipeline-from-config';
import { swapAgentEnvironment } from '../steps/agent-swap';
import { makeHttpKeyValidator, noKeyValidation, type KeyValidator } from './key-validator';
import { makeRevokeJob } from './revoke-job';
import { makeRotationJob } from './rotation-job';
import { makeRotationService } from './rotation-service';
import { makeRotationStore } from './rotation-store';
import type { OverdueKey } from './secret-binding-store';
import { makeRotationMaintenance, makeRotationProcessors } from './rotation-workers';

/** Key validation from the configuration: the providers over HTTP (hcloud's default) or off (local mode's). */
export const keyValidatorFromConfig = (config: Config): KeyValidator =>
  (config.KEY_VALIDATION ?? (config.HOST_PROVIDER === 'hcloud' ? 'http' : 'off')) === 'http'
    ? makeHttpKeyValidator(
        config.KEY_VALIDATION_BASE_URL ? { baseUrls: { '*': config.KEY_VALIDATION_BASE_URL } } : {},
      )
    : noKeyValidation;

/** Just the service (the API process: no workers). */
export const makeRotationServiceFromPipeline = (
  pipeline: Pick<Pipeline, 'config' | 'db' | 'queues' | 'secrets'>,
) =>
  makeRotationService({
    rotations: makeRotationStore({ rpc: pipeline.db.rpc, fingerprint: pipeline.secrets.fingerprint }),
    queues: pipeline.queues,
    validator: keyValidatorFromConfig(pipeline.config),
    graceSeconds: pipeline.config.ROTATION_GRACE_SECONDS,
  });

/**
 * Rotation assembled on top of a pipeline, for the composition roots: the service (API, CLI), and
 * for a worker process the `rotate`/`revoke` processors, the maintenance tasks and their schedulers.
 */
export const makeRotationFromPipeline = (
  pipeline: Pick<Pipeline, 'config' | 'db' | 'store' | 'secrets' | 'queues' | 'leases' | 'access' | 'log'>,
  opts: {
    validator?: KeyValidator;
    swap?: typeof swapAgentEnvironment;
    onOverdue?: (k: readonly OverdueKey[]) => void;
  } = {},
) => {
  const { config, log } = pipeline;
  const rotations = makeRotationStore({ rpc: pipeline.db.rpc, fingerprint: pipeline.secrets.fingerprint });
  const service = makeRotationService({
    rotations,
    queues: pipeline.queues,
    validator: opts.validator ?? keyValidatorFromConfig(config),
    graceSeconds: config.ROTATION_GRACE_SECONDS,
  });
  const holder = `${hostname()}-${process.pid}`;
  const common = {
    rotations,
    store: pipeline.store,
    leases: pipeline.leases,
    access: pipeline.access,
    swap: opts.swap ?? swapAgentEnvironment,
    concurrency: config.ROTATE_CONCURRENCY,
    soakSeconds: config.ROTATION_SOAK_SECONDS,
    holder,
  };
  const processors = makeRotationProcessors({
    rotationJob: makeRotationJob({ ...common, log: log.child({ job: 'rotate' }) }),
    revokeJob: makeRevokeJob({ ...common, secrets: pipeline.secrets, log: log.child({ job: 'revoke' }) }),
  });
  const maintenance = makeRotationMaintenance({
    rotations,
    queues: pipeline.queues,
    log: log.child({ task: 'rotation' }),
    stalledSeconds: config.ROTATION_STALLED_SECONDS,
    ...(opts.onOverdue ? { onOverdue: opts.onOverdue } : {}),
  });

  const schedule = async (): Promise<void> => {
    const q = pipeline.queues.queues.maintenance;
    await q.upsertJobScheduler(
      'rotation-sweep',
      { every: config.ROTATION_SWEEP_EVERY_MS },
      { name: 'maintenance', data: { task: 'rotation-sweep' } },
    );
    await q.upsertJobScheduler(
      'key-age',
      { every: config.KEY_AGE_CHECK_EVERY_MS },
      { name: 'maintenance', data: { task: 'key-age' } },
    );
  };

  return {
    rotations,
    service,
    processors,
    maintenanceTasks: { 'rotation-sweep': maintenance.sweep, 'key-age': maintenance.keyAge },
    maintenance,
    schedule,
  };
};
export type RotationWiring = ReturnType<typeof makeRotationFromPipeline>;
