import type { Config } from '../../config';
import type { Logger } from '../../log';
import type { HostProvider } from '../host-provider';
import type { StackRunner } from './stack-runner';

/**
 * The Hetzner Cloud adapter's public surface: the provider assembled from the configuration (for
 * a composition root), and the Hetzner API client, DNS zone check and backend default that
 * `cortexctl doctor` uses. Nothing outside `orchestrator/infra/hcloud/` imports the modules behind
 * it (test/unit/infra/layout.test.ts holds the rule; the adapter's own tests are the exception it
 * names).
 *
 * The provider is loaded on first call: the Pulumi programs pull in @pulumi/hcloud and the Pulumi
 * SDK (tens of MB) that a local worker or a CLI command never needs.
 */
export { makeHcloudApi, type FetchLike, type HcloudApi } from './api';
export { checkZone } from './dns-preflight';
export { defaultBackendUrl, type StackHandle, type WorkspaceFactory } from './workspace';
export type { StackRunner } from './stack-runner';

export const makeHcloudFromConfig = async (
  config: Config,
  log: Logger,
): Promise<{ readonly hosts: HostProvider; readonly runner: StackRunner }> =>
  (await import('./wiring')).makeHcloudFromConfig(config, log);
