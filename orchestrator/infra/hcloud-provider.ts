import type { OutputMap } from '@pulumi/pulumi/automation';
import type { Config } from '../config';
import { OrchestratorError, invalidInput } from '../errors';
import { isSecret } from '../secret';
import type { Logger } from '../log';
import type { HostDescription, HostProvider, HostSpec } from './host-provider';
import { agentSettingsSchema, agentStackConfig, parseAgentSettings } from './agent-inputs';
import { agentProgram } from './agent-program';
import { parseStackSettings, uuidId } from './infra-validation';
import type { StackRunner } from './stack-runner';
import { agentStackName, deploymentIdOfStack } from './stack-names';

/**
 * `HostProvider` on Hetzner Cloud: one Pulumi stack per deployment (`agent-<id>`) holding its
 * server, firewall and DNS records. Reads (`describe`, `list`) come from the Pulumi backend and
 * cost no Hetzner API request.
 */
export interface HcloudProviderDeps {
  readonly runner: StackRunner;
  readonly settings: Pick<
    Config,
    'DNS_ZONE' | 'HCLOUD_LOCATION' | 'HCLOUD_SERVER_TYPE' | 'HCLOUD_POLL_INTERVAL' | 'ORCHESTRATOR_SSH_CIDRS'
  >;
  /** Id of the orchestrator's SSH key (`platformSshKeyId(runner)`). */
  readonly sshKeyId: () => Promise<string>;
  readonly log: Logger;
}

export const makeHcloudHostProvider = (deps: HcloudProviderDeps): HostProvider => {
  const stackOf = (deploymentId: string): string => {
    if (!uuidId.safeParse(deploymentId).success)
      throw invalidInput('deploymentId', 'must be a lowercase uuid');
    return agentStackName(deploymentId);
  };

  const describe = async (
    deploymentId: string,
    signal?: AbortSignal,
  ): Promise<HostDescription | undefined> => {
    const outputs = await deps.runner.outputs(stackOf(deploymentId), agentProgram(), {
      signal,
      log: deps.log,
    });
    return outputs && toDescription(deploymentId, outputs);
  };

  return {
    name: 'hcloud',

    async ensure(spec: HostSpec, opts) {
      const log = deps.log.child({ deploymentId: spec.deploymentId, provider: 'hcloud' });
      if (!isSecret(spec.userData))
        throw invalidInput('userData', 'must be a Secret (it carries the host private key)');
      if (spec.userData.reveal().trim() === '') throw invalidInput('userData', 'must not be empty');
      // Trimmed as the local provider does: both pin the same key line.
      const hostPublicKey = spec.hostPublicKey.trim();
      // Validated before the SSH key id is read: bad input must not cost a stack operation.
      const checked = parseStackSettings(agentSettingsSchema.omit({ sshKeyId: true }), {
        deploymentId: spec.deploymentId,
        orgId: spec.orgId,
        subdomain: spec.subdomain,
        zone: deps.settings.DNS_ZONE,
        location: spec.location ?? deps.settings.HCLOUD_LOCATION,
        serverType: spec.serverType ?? deps.settings.HCLOUD_SERVER_TYPE,
        sshCidrs: deps.settings.ORCHESTRATOR_SSH_CIDRS,
        hostPublicKey,
        pollInterval: deps.settings.HCLOUD_POLL_INTERVAL,
      });
      const settings = parseAgentSettings({ ...checked, sshKeyId: await deps.sshKeyId() });
      // The server ignores later user-data changes, so an `up` with another host key would leave
      // the old key on the server and pin the new one: refuse rather than mis-pin.
      const existing = await describe(spec.deploymentId, opts?.signal);
      if (existing && existing.hostPublicKey !== hostPublicKey)
        throw invalidInput(
          'hostPublicKey',
          'the host exists with another pinned key; pass the stored key, or destroy the host first',
        );
      const outputs = await deps.runner.up(
        stackOf(spec.deploymentId),
        agentProgram(spec.userData),
        agentStackConfig(settings),
        {
          signal: opts?.signal,
          log,
          redact: [spec.userData.reveal()],
        },
      );
      const host = toDescription(spec.deploymentId, outputs);
      if (!host)
        throw new OrchestratorError(
          'stack_failed',
          `stack ${stackOf(spec.deploymentId)} is up but has no server outputs`,
        );
      log.info({ serverId: host.serverId, ipv4: host.ipv4, dnsName: host.dnsName }, 'host ensured');
      return host;
    },

    describe: (deploymentId) => describe(deploymentId),

    async destroy(deploymentId, opts) {
      const result = await deps.runner.destroy(stackOf(deploymentId), agentProgram(), {
        signal: opts?.signal,
        log: deps.log,
      });
      deps.log.info({ deploymentId, result }, 'host destroyed');
    },

    async list() {
      const names = await deps.runner.list({ log: deps.log });
      return names.map(deploymentIdOfStack).filter((id): id is string => id !== undefined);
    },
  };
};

const text = (outputs: OutputMap, key: string): string | undefined => {
  const v = outputs[key]?.value;
  return typeof v === 'string' && v !== '' ? v : typeof v === 'number' ? String(v) : undefined;
};

/** A stack without server outputs (never up, or destroyed) has no host. */
export const toDescription = (deploymentId: string, outputs: OutputMap): HostDescription | undefined => {
  const serverId = text(outputs, 'serverId');
  const ipv4 = text(outputs, 'ipv4');
  const hostPublicKey = text(outputs, 'hostPublicKey');
  if (!serverId || !ipv4 || !hostPublicKey) return undefined;
  const ipv6 = text(outputs, 'ipv6');
  const dnsName = text(outputs, 'dnsName');
  return {
    deploymentId,
    serverId,
    ipv4,
    ...(ipv6 ? { ipv6 } : {}),
    ...(dnsName ? { dnsName } : {}),
    hostPublicKey,
    // The state of the last successful `up`; asking Hetzner for the live status would spend the
    // rate limit on every describe.
    state: 'running',
  };
};
