import path from 'node:path';
import type { Config } from '../../config';
import type { Logger } from '../../log';
import { makeHcloudApi } from './api';
import type { HostProvider } from '../host-provider';
import { makeHcloudHostProvider } from './provider';
import { platformSshKeyId } from './platform-stack';
import { defaultBackendUrl, makeLocalWorkspaceFactory } from './workspace';
import { makeStackRunner, operationTimeoutMs, type StackRunner } from './stack-runner';

/**
 * The `hcloud` provider assembled from the configuration, for a composition root (worker, CLI).
 * Stack config files live under `<CORTEX_STATE_DIR>/pulumi/work`; state in PULUMI_BACKEND_URL
 * (default `file://<CORTEX_STATE_DIR>/pulumi/backend`). Only the token and the passphrase are
 * handed to the Pulumi CLI's environment, which the CLI and the hcloud plugin read.
 */
export const makeHcloudFromConfig = async (
  config: Config,
  log: Logger,
): Promise<{ readonly hosts: HostProvider; readonly runner: StackRunner }> => {
  // Without a token every request fails as config_invalid (loadConfig requires one for hcloud).
  const api = makeHcloudApi({ token: config.HCLOUD_TOKEN ?? '' });
  const workspace = await makeLocalWorkspaceFactory({
    backendUrl: config.PULUMI_BACKEND_URL ?? defaultBackendUrl(config.CORTEX_STATE_DIR),
    workDir: path.resolve(config.CORTEX_STATE_DIR, 'pulumi', 'work'),
    ...(config.PULUMI_SECRETS_PROVIDER === undefined
      ? {}
      : { secretsProvider: config.PULUMI_SECRETS_PROVIDER }),
    env: { HCLOUD_TOKEN: config.HCLOUD_TOKEN, PULUMI_CONFIG_PASSPHRASE: config.PULUMI_CONFIG_PASSPHRASE },
  });
  const runner = makeStackRunner({
    workspace,
    log: log.child({ component: 'pulumi' }),
    staleLockMs: config.PULUMI_STALE_LOCK_MS,
    timeoutMs: operationTimeoutMs(config.PULUMI_STALE_LOCK_MS),
  });
  return {
    runner,
    hosts: makeHcloudHostProvider({
      runner,
      settings: config,
      sshKeyId: platformSshKeyId(runner),
      api,
      log,
    }),
  };
};
