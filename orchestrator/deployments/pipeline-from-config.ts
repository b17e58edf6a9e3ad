import { mkdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ConnectionOptions } from 'bullmq';
import { Redis, type RedisOptions } from 'ioredis';
import type { Config } from '../config';
import { makeRpcFromConfig } from '../db/rpc-from-config';
import { makeDnsFromConfig } from '../dns/dns-wiring';
import { OrchestratorError } from '../errors';
import type { HostProvider } from '../infra/host-provider';
import { makeLocalHostProvider } from '../infra/local';
import type { Logger } from '../log';
import { makeLeases } from '../queues/deployment-lease';
import { makeQueues } from '../queues/queues';
import { makeWorkers, type WorkerDeps, type Workers } from '../queues/workers';
import { generateHostKeyPair, publicKeyOfPrivate } from '../remote/host-keys';
import { makeSshKeySourceFromConfig } from '../remote/ssh-key-from-config';
import type { Secret } from '../secret';
import { makeFingerprintKeyFromConfig } from '../secrets/fingerprint';
import { makeSecretsService } from '../secrets/secrets-service';
import { deprovisionSteps } from '../steps/deprovision-steps';
import { makeHostAccess } from '../steps/host-access';
import { provisionSteps } from '../steps/provision-steps';
import { makeStepRunner, type RunnerHooks } from '../steps/step-runner';
import { makeDeploymentStore } from './deployment-store';
import { makeDeploymentsService } from './deployments-service';

/**
 * The pipeline assembled from the configuration, for the composition roots (the worker process,
 * the CLI, the demo, later the API). Everything that opens a connection is made here, and `close`
 * releases all of it.
 */
export const redisOptionsFromUrl = (url: string): RedisOptions => {
  const u = new URL(url);
  return {
    host: u.hostname,
    port: Number(u.port || 6379),
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(u.pathname.length > 1 ? { db: Number(u.pathname.slice(1)) } : {}),
    ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
    // BullMQ's blocking connections require it.
    maxRetriesPerRequest: null,
  };
};

/**
 * Local mode only: the orchestrator's SSH key is created on first use (0600, under the state
 * directory). Elsewhere a missing key is a configuration error, never silently replaced.
 */
export const ensureLocalSshKey = async (config: Config): Promise<void> => {
  if (config.HOST_PROVIDER !== 'local' || config.SSH_KEY_SOURCE !== 'file') return;
  const file = path.resolve(config.SSH_PRIVATE_KEY_FILE);
  const exists = await stat(file).then(
    () => true,
    () => false,
  );
  if (exists) return;
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const pair = generateHostKeyPair();
  await writeFile(file, pair.privateKey.reveal(), { mode: 0o600, flag: 'wx' }).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  });
};

export const makePipelineFromConfig = async (
  config: Config,
  log: Logger,
  opts: { hooks?: RunnerHooks; hosts?: HostProvider } = {},
) => {
  const db = makeRpcFromConfig(config);
  const store = makeDeploymentStore({ rpc: db.rpc });
  const secrets = makeSecretsService({ rpc: db.rpc, fingerprintKey: makeFingerprintKeyFromConfig(config) });
  let hosts = opts.hosts;
  if (!hosts) {
    if (config.HOST_PROVIDER === 'local') {
      hosts = makeLocalHostProvider({ stateDir: config.CORTEX_STATE_DIR, log });
    } else {
      // Loaded only on hcloud: the Pulumi SDK costs tens of MB that a local worker never needs.
      const { makeHcloudFromConfig } = await import('../infra/hcloud');
      hosts = (await makeHcloudFromConfig(config, log)).hosts;
    }
  }
  const dns = makeDnsFromConfig(config);
  await ensureLocalSshKey(config);
  const keySource = makeSshKeySourceFromConfig(config, {
    readPlatformSecret: secrets.readPlatformSecret,
    actor: 'orchestrator',
  });
  let key: Promise<Secret> | undefined;
  const privateKey = (): Promise<Secret> =>
    (key ??= keySource.load().catch((err: unknown) => {
      key = undefined;
      throw err;
    }));
  const access = makeHostAccess({
    privateKey,
    connectTimeoutMs: config.SSH_CONNECT_TIMEOUT_MS,
    commandTimeoutMs: config.SSH_COMMAND_TIMEOUT_MS,
    log,
  });
  if (config.HOST_PROVIDER === 'hcloud' && !config.ACME_EMAIL)
    throw new OrchestratorError('config_invalid', 'ACME_EMAIL: is required when HOST_PROVIDER=hcloud');

  const connection = redisOptionsFromUrl(config.REDIS_URL);
  const redis = new Redis(connection);
  redis.on('error', (err) => log.warn({ reason: err.message }, 'redis connection error'));
  const queues = makeQueues({
    connection: connection as ConnectionOptions,
    prefix: config.QUEUE_PREFIX,
    attempts: config.JOB_ATTEMPTS,
    backoffMs: config.JOB_BACKOFF_MS,
  });
  const leases = makeLeases({ redis, prefix: config.QUEUE_PREFIX, ttlMs: config.LEASE_TTL_MS });

  const [pauseStep, pauseWhen] = (config.PIPELINE_PAUSE_AT_STEP ?? '').split(':');
  const hold =
    (when: string | undefined) =>
    async (step: string, deploymentId: string): Promise<void> => {
      if (!pauseStep || step !== pauseStep || when !== pauseWhen) return;
      log.warn(
        { step, when: when ?? 'started', deploymentId },
        'PIPELINE_PAUSE_AT_STEP: holding this job until the process is killed',
      );
      await new Promise<never>(() => undefined);
    };
  const hooks: RunnerHooks =
    opts.hooks ?? (pauseStep ? { onStepStarted: hold(undefined), onStepApplied: hold('applied') } : {});
  const runner = makeStepRunner({ store, log, hooks });
  const zone = config.DNS_ZONE;
  const steps = provisionSteps({
    store,
    secrets,
    hosts,
    dns,
    access,
    orchestratorPublicKey: async () => publicKeyOfPrivate(await privateKey()),
    zone,
    tls:
      config.HOST_PROVIDER === 'local'
        ? { mode: 'internal' }
        : { mode: 'acme', email: config.ACME_EMAIL ?? '' },
    installPackages: config.HOST_PROVIDER === 'hcloud',
  });
  const teardown = deprovisionSteps({
    store,
    secrets,
    hosts,
    dns,
    zone,
    forgetJobs: async (id) => {
      await queues.forgetDeployment(id);
    },
  });
  const service = makeDeploymentsService({
    store,
    queues,
    provider: config.HOST_PROVIDER,
    defaults: { region: config.HCLOUD_LOCATION, serverType: config.HCLOUD_SERVER_TYPE },
  });

  let workers: Workers | undefined;
  const makeWorkerSet = (
    extra?: Partial<Record<string, () => Promise<unknown>>>,
    processors?: WorkerDeps['processors'],
  ): Workers =>
    (workers = makeWorkers(
      {
        store,
        runner,
        provisionSteps: steps,
        deprovisionSteps: teardown,
        hosts: hosts as HostProvider,
        queues,
        leases,
        redis,
        log,
        ...(extra ? { maintenance: extra } : {}),
        ...(processors ? { processors } : {}),
      },
      {
        connection: connection as ConnectionOptions,
        prefix: config.QUEUE_PREFIX,
        concurrency: config.WORKER_CONCURRENCY,
        lockDurationMs: config.JOB_LOCK_MS,
        ...(config.HOST_PROVIDER === 'hcloud' ? { cloudJobsPerHour: config.HCLOUD_JOBS_PER_HOUR } : {}),
        reconcileIdleSeconds: config.RECONCILE_IDLE_SECONDS,
        orphanGraceSeconds: config.ORPHAN_GRACE_SECONDS,
      },
    ));

  /** The maintenance job schedulers (idempotent: every worker process may upsert them). */
  const scheduleMaintenance = async (): Promise<void> => {
    const q = queues.queues.maintenance;
    await q.upsertJobScheduler(
      'reconcile',
      { every: config.RECONCILE_EVERY_MS },
      { name: 'maintenance', data: { task: 'reconcile' } },
    );
    await q.upsertJobScheduler(
      'orphan-sweep',
      { every: config.ORPHAN_SWEEP_EVERY_MS },
      { name: 'maintenance', data: { task: 'orphan-sweep' } },
    );
  };

  const close = async (graceMs = config.SHUTDOWN_GRACE_MS): Promise<void> => {
    if (workers) await workers.close(graceMs);
    await queues.close();
    redis.disconnect();
    await db.close();
  };

  return {
    config,
    log,
    db,
    store,
    secrets,
    hosts,
    dns,
    access,
    queues,
    leases,
    redis,
    service,
    steps,
    teardown,
    makeWorkerSet,
    scheduleMaintenance,
    close,
  };
};
export type Pipeline = Awaited<ReturnType<typeof makePipelineFromConfig>>;
